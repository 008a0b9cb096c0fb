"""Tests for supersub_jax.inference.unpack: one specialist unpacked from the bank, whole or layer by layer, bit for bit
what exported.materialize_compressed gives on the host.

Tiny shapes throughout (resnet_tiny on 8x8 images); the state is built once per module.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from delta_trees import assert_trees_bit_equal as _assert_trees_bit_equal
from delta_trees import bits_equal as _bits_equal
from specialist_worlds import padded_head as _padded_head
from specialist_worlds import routed_world
from supersub_jax import bank as bank_lib
from supersub_jax import exported as exported_lib
from supersub_jax.inference import unpack

SIZES = (2, 3, 4)  # N = 3 superclasses, S = 4


@pytest.fixture(scope='module')
def world():
  return routed_world(SIZES)


def test_specialist_variables_bit_equal_to_materialize_compressed(world):
  state, base = world['state'], world['base']
  fn = jax.jit(functools.partial(unpack.specialist_variables, max_subclasses=max(SIZES)))
  for k, ex in enumerate(world['exported']):
    got = fn(state.bank, base, jnp.int32(k))
    want = {**exported_lib.materialize_compressed(base, ex['delta']), 'head': _padded_head(ex, max(SIZES))}
    _assert_trees_bit_equal(got['params'], want)
    _assert_trees_bit_equal(got['batch_stats'], ex['batch_stats'])
    if k != 1:  # only specialist 1 has norm deltas: base + 0.0 elsewhere is the base itself
      assert _bits_equal(got['params']['stage3_block1']['BatchNorm_0']['bias'],
                         base['stage3_block1']['BatchNorm_0']['bias'])
  # Without the unquantized specialist, kernels stay packed int4 and int8 codes with per-channel scales,
  # unpacked and dequantized on device.
  bank = bank_lib.make_bank(world['exported'][:2], base)
  assert bank.deltas['conv_init/kernel']['codes'].dtype == jnp.uint8
  np.testing.assert_array_equal(bank.deltas['conv_init/kernel']['bits'], [4, 8])
  assert bank.deltas['conv_init/kernel']['scale'].shape == (2, 8)
  for k, ex in enumerate(world['exported'][:2]):
    want = {**exported_lib.materialize_compressed(base, ex['delta']), 'head': _padded_head(ex, max(SIZES))}
    _assert_trees_bit_equal(fn(bank, base, jnp.int32(k))['params'], want)
  # The fixture's signed zeros were exercised: some became +0.0 (base + 0.0), as in materialize_compressed.
  zeros = np.asarray(base['stage2_block1']['Conv_0']['kernel']).reshape(-1)[:64]
  got = np.asarray(fn(state.bank, base, jnp.int32(0))['params']['stage2_block1']['Conv_0']['kernel']).reshape(-1)
  assert np.signbit(zeros).all() and (got[:64] == 0).any() and not np.signbit(got[:64][got[:64] == 0]).all()


def test_a_dustbin_bank_adds_its_column_after_the_real_ones_with_the_even_odds_correction(world):
  hierarchy, gen, base = world['hierarchy'], world['gen'], world['base']
  rng = np.random.default_rng(5)
  exported = []
  for k, ex in enumerate(world['exported']):
    n = ex['head']['kernel'].shape[1]
    extra = {'kernel': rng.normal(size=(ex['head']['kernel'].shape[0], 1)).astype(np.float32),
             'bias': np.float32([0.25 * k])}
    head = {name: np.concatenate([ex['head'][name], extra[name]], axis=-1) for name in ('kernel', 'bias')}
    # Each its own training mix; the stored (older, prior-based) correction is not what inference adds.
    spec = {**ex['spec'], 'dustbin': {'fraction': 0.2 + 0.1 * k, 'others': 'all', 'logit_correction': 9.0}}
    exported.append({**ex, 'head': head, 'spec': spec})
    assert n == SIZES[k]
  state = bank_lib.build_supersub(gen, exported, hierarchy)
  assert state.bank.dustbin == 1 and state.num_outputs == max(SIZES) + 1
  np.testing.assert_array_equal(state.bank.num_subclasses, SIZES)
  # Compiled, as inference calls it: eagerly, every op of every leaf would compile on its own.
  fn = jax.jit(functools.partial(unpack.specialist_variables, max_subclasses=max(SIZES)))
  for k, ex in enumerate(exported):
    got = fn(state.bank, base, jnp.int32(k))['params']['head']
    n = SIZES[k]
    np.testing.assert_array_equal(got['kernel'][:, :n], ex['head']['kernel'][:, :n])
    assert not np.asarray(got['kernel'][:, n:max(SIZES)]).any()  # padding
    np.testing.assert_array_equal(got['kernel'][:, -1], ex['head']['kernel'][:, -1])
    f = 0.2 + 0.1 * k
    np.testing.assert_allclose(got['bias'][-1], 0.25 * k + np.log((1 - f) / f), rtol=1e-6)  # trained + even odds
  with pytest.raises(ValueError, match='all or none'):
    bank_lib.build_supersub(gen, exported[:2] + world['exported'][2:], hierarchy)


def test_layer_by_layer_leaves_equal_materialize_compressed_bit_for_bit(world):
  state, base = world['state'], world['base']
  s = max(SIZES)

  @jax.jit
  def unboxed(k):  # each LazyLeaf materialized as its layer would read it
    from flax.core import meta  # pylint: disable=g-import-not-at-top
    return meta.unbox(unpack.lazy_specialist_variables(state.bank, base, k, s))

  for k, ex in enumerate(world['exported']):
    lazy = unpack.lazy_specialist_variables(state.bank, base, k, s)
    assert any(isinstance(x, unpack.LazyLeaf) for x in jax.tree.leaves(
        lazy['params'], is_leaf=lambda x: isinstance(x, unpack.LazyLeaf)))  # nothing dense before the forward
    got = unboxed(jnp.int32(k))
    want = {**exported_lib.materialize_compressed(base, ex['delta']), 'head': _padded_head(ex, s)}
    _assert_trees_bit_equal(got['params'], want)
    _assert_trees_bit_equal(got['batch_stats'], ex['batch_stats'])


def test_a_forward_through_lazy_leaves_is_the_dense_specialists_forward(world):
  state, base, images = world['state'], world['base'], world['images']
  apply = jax.jit(functools.partial(world['sm'].apply, train=False))
  lazy = jax.jit(lambda k, x: world['sm'].apply(unpack.lazy_specialist_variables(state.bank, base, k, max(SIZES)),
                                                x, train=False))
  for k in range(len(SIZES)):
    dense = unpack.specialist_variables(state.bank, base, k, max(SIZES))
    np.testing.assert_array_equal(lazy(jnp.int32(k), images), apply(dense, images))


def test_make_specialists_rejects_an_unknown_materialization(world):
  with pytest.raises(ValueError, match='materialize'):
    unpack.make_specialists(world['state'], world['sm'], 'whole')
