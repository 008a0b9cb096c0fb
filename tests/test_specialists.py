"""supersub_jax.specialists.pruned_masks: which delta leaves the mask schedule prunes."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from supersub_jax import delta as delta_lib
from supersub_jax import sparsity, specialists


def _delta(seed=0):
  rng = np.random.default_rng(seed)
  return {'Conv_0': {'kernel': rng.normal(size=(3, 3, 4, 8)).astype(np.float32)},
          'BatchNorm_0': {'scale': rng.normal(size=8).astype(np.float32) * 100,  # larger than every kernel entry
                          'bias': rng.normal(size=8).astype(np.float32)},
          'Dense_0': {'kernel': rng.normal(size=(8, 5)).astype(np.float32), 'bias': None}}


def _cfg(dense_leaves, scope):
  return ml_collections.ConfigDict(dict(dense_leaves=dense_leaves, sparsity_scope=scope))


@pytest.mark.parametrize('scope', sparsity.SCOPES)
def test_dense_leaves_keep_every_entry_and_take_no_share_of_the_budget(scope):
  delta = _delta()
  masks = sparsity.dense_masks(delta)
  new = specialists.pruned_masks(delta, masks, 0.25, _cfg(delta_lib.NORM, scope))
  assert new['Dense_0']['bias'] is None
  assert np.all(new['BatchNorm_0']['scale']) and np.all(new['BatchNorm_0']['bias'])
  kernels = [np.asarray(new['Conv_0']['kernel']), np.asarray(new['Dense_0']['kernel'])]
  if scope == 'per_leaf':
    assert [int(m.sum()) for m in kernels] == [round(0.25 * 288), round(0.25 * 40)]
  else:  # one threshold over the kernels alone: the large BatchNorm scales would otherwise take slots
    assert sum(int(m.sum()) for m in kernels) == round(0.25 * 328)
    expected = sparsity.update_masks({'a': delta['Conv_0']['kernel'], 'b': delta['Dense_0']['kernel']},
                                     {'a': masks['Conv_0']['kernel'], 'b': masks['Dense_0']['kernel']}, 0.25, scope)
    np.testing.assert_array_equal(kernels[0], expected['a'])
    np.testing.assert_array_equal(kernels[1], expected['b'])


@pytest.mark.parametrize('scope', sparsity.SCOPES)
def test_no_dense_leaves_is_the_plain_mask_update_also_under_jit(scope):
  delta = _delta(1)
  masks = sparsity.dense_masks(delta)
  expected = sparsity.update_masks(delta, masks, 0.3, scope)
  for dense_leaves in ('', 'no_such_leaf$'):
    got = jax.jit(lambda d, m, density: specialists.pruned_masks(d, m, density, _cfg(dense_leaves, scope)))(
        delta, masks, jnp.float32(0.3))
    jax.tree.map(np.testing.assert_array_equal, got, expected)


