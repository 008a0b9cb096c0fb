"""Tests for supersub_jax.delta: selection, materialize, byte counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supersub_jax import delta as dl
from supersub_jax import sparsity

from delta_trees import assert_trees_bit_equal as _assert_trees_bit_equal
from delta_trees import bits_equal as _bits_equal
from delta_trees import get as _get
from delta_trees import params as _params
from delta_trees import rand as _rand
from delta_trees import trained_delta as _trained_delta


# ----------------------------------------------------------------------------- selection


def test_select_kernels_excludes_head():
  sel = dl.select_delta_leaves(_params())
  assert sel['conv_init']['kernel'] and sel['ResNetBlock_0']['Conv_1']['kernel']
  assert not sel['bn_init']['scale'] and not sel['ResNetBlock_0']['BatchNorm_0']['bias']
  assert not sel['head']['kernel'] and not sel['head']['bias']


def test_select_kernels_and_norm():
  sel = dl.select_delta_leaves(_params(), dl.KERNELS_AND_NORM)
  assert sel['bn_init']['scale'] and sel['ResNetBlock_0']['BatchNorm_0']['bias'] and sel['conv_init']['kernel']
  assert not sel['head']['kernel'] and not sel['head']['bias']
  assert dl.select_delta_leaves(_params(), dl.KERNELS, exclude=None)['head']['kernel']


def test_init_delta_structure():
  base = _params()
  d = dl.init_delta(base)
  assert d['head'] == {'kernel': None, 'bias': None}
  assert d['bn_init'] == {'scale': None, 'bias': None}
  k = d['ResNetBlock_0']['Conv_0']['kernel']
  assert k.dtype == jnp.float32 and k.shape == (3, 3, 8, 8) and not np.any(np.asarray(k))
  assert len(jax.tree.leaves(d)) == 3  # None is not a leaf: optax/grad only see the kernels
  with pytest.raises(ValueError, match='selects no parameter'):
    dl.init_delta(base, r'nothing_matches$')


def test_delta_config_validation():
  with pytest.raises(ValueError, match='bits'):
    dl.DeltaConfig(bits=3)
  with pytest.raises(ValueError, match='granularity'):
    dl.DeltaConfig(granularity='per_row')
  with pytest.raises(ValueError, match='regex'):
    dl.DeltaConfig(pattern='(')
  assert dl.DeltaConfig(bits=None).bits is None


# ----------------------------------------------------------------------------- materialize


@pytest.mark.parametrize('bits', [8, 2, None])
def test_zero_delta_materializes_to_base(bits):
  base = _params()
  cfg = dl.DeltaConfig(bits=bits, pattern=dl.KERNELS_AND_NORM)
  d = dl.init_delta(base, cfg.pattern, cfg.exclude)
  for out in (dl.materialize(base, d, None, cfg),
              jax.jit(lambda b, d: dl.materialize(b, d, sparsity.dense_masks(d), cfg))(base, d)):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), out, base)


def test_materialize_changes_only_selected_leaves():
  base = _params()
  cfg = dl.DeltaConfig(bits=8)
  out = dl.materialize(base, _trained_delta(base, 1), None, cfg)
  assert _bits_equal(out['head']['kernel'], base['head']['kernel'])
  assert _bits_equal(out['bn_init']['scale'], base['bn_init']['scale'])
  assert not np.array_equal(out['conv_init']['kernel'], base['conv_init']['kernel'])


def test_materialize_shape_mismatch_error():
  base = _params()
  d = dl.init_delta(base)
  d['conv_init']['kernel'] = jnp.zeros((3, 3, 3, 9))
  with pytest.raises(ValueError, match='conv_init/kernel'):
    dl.materialize(base, d, None, dl.DeltaConfig())


@pytest.mark.parametrize('bits', [8, None])
def test_gradient_zero_at_masked_entries(bits):
  base = _params()
  cfg = dl.DeltaConfig(bits=bits, pattern=dl.KERNELS_AND_NORM)
  d = _trained_delta(base, 2, cfg.pattern)
  masks = sparsity.masks_for(d, 0.3)
  r = np.random.RandomState(3)
  w = jax.tree.map(lambda x: _rand(r, x.shape), base)

  def loss(d):
    p = dl.materialize(base, d, masks, cfg)
    return sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(w)))

  g = jax.jit(jax.grad(loss))(d)
  assert jax.tree.structure(g) == jax.tree.structure(d)
  for path, gx in jax.tree_util.tree_flatten_with_path(g)[0]:
    m, wx, gx = np.asarray(_get(masks, path)), np.asarray(_get(w, path)), np.asarray(gx)
    assert 0 < m.sum() < m.size
    np.testing.assert_array_equal(gx[~m], 0.0)
    np.testing.assert_array_equal(gx[m], wx[m])  # STE: identity inside the (absmax) clip range


def test_materialize_vmap_over_three_specialists():
  base = _params()
  cfg = dl.DeltaConfig(bits=4)
  deltas = [_trained_delta(base, s) for s in (10, 11, 12)]
  masks = [sparsity.masks_for(d, dens) for d, dens in zip(deltas, (1.0, 0.5, 0.1))]
  stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)
  out = jax.jit(jax.vmap(lambda d, m: dl.materialize(base, d, m, cfg)))(stack(deltas), stack(masks))
  for i in range(3):
    one = dl.materialize(base, deltas[i], masks[i], cfg)
    _assert_trees_bit_equal(jax.tree.map(lambda x: x[i], out), one)

def test_tree_nbytes():
  assert dl.tree_nbytes({'a': np.zeros((2, 3), np.float32), 'b': None, 'c': jnp.zeros(4, jnp.int8)}) == 28
