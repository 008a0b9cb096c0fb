"""supersub_jax.specialists: which delta leaves the mask schedule prunes (pruned_masks); where a specialist's head
starts (head_from_flat, init_flat_head)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import make_tiny_config
from supersub_jax import convert
from supersub_jax import cut as cut_lib
from supersub_jax import delta as delta_lib
from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax import setup_of
from supersub_jax import sparsity, specialists
from supersub_jax import step as step_lib
from supersub_jax import workdir as workdir_lib


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




def test_a_head_from_the_flat_head_gives_the_flat_logits_of_its_superclass_and_keeps_padding_and_dustbin():
  hierarchy = hierarchy_lib.synthetic((3, 1, 4))  # max_subclasses 4: superclass 0 has one padding column
  rng = np.random.default_rng(0)
  flat = {'kernel': rng.normal(size=(6, 8)).astype(np.float32), 'bias': rng.normal(size=8).astype(np.float32)}
  features = rng.normal(size=(5, 6)).astype(np.float32)
  flat_logits = features @ flat['kernel'] + flat['bias']
  for k, labels in enumerate(hierarchy.local_to_label):
    fresh = {'kernel': rng.normal(size=(6, 5)).astype(np.float32), 'bias': rng.normal(size=5).astype(np.float32)}
    head = specialists.head_from_flat(fresh, flat, labels)
    logits = features @ head['kernel'] + head['bias']
    n = int(hierarchy.sizes[k])
    start = int(hierarchy.offsets[k])  # global labels are superclass-major: superclass k owns start .. start + n - 1
    np.testing.assert_allclose(logits[:, :n], flat_logits[:, start:start + n], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(head['kernel'][:, n:], fresh['kernel'][:, n:])  # padding and the dustbin column
    np.testing.assert_array_equal(head['bias'][n:], fresh['bias'][n:])
    assert head['kernel'].dtype == np.float32


def test_a_flat_head_of_other_features_or_too_few_subclasses_is_refused_with_the_reason():
  fresh = {'kernel': np.zeros((6, 4), np.float32), 'bias': np.zeros(4, np.float32)}
  with pytest.raises(ValueError, match='reads 5 features, the specialist.s 6'):
    specialists.head_from_flat(fresh, {'kernel': np.zeros((5, 8)), 'bias': np.zeros(8)}, [0, 1, 2, -1])
  with pytest.raises(ValueError, match="label 9 is past the flat head's 8 outputs"):
    specialists.head_from_flat(fresh, {'kernel': np.zeros((6, 8)), 'bias': np.zeros(8)}, [7, 8, 9, -1])


def test_head_from_init_starts_every_specialist_from_the_init_networks_subclass_columns(tiny_workdir, tmp_path):
  config, workdir, _ = tiny_workdir
  path = str(tmp_path / 'flat.safetensors')
  convert.export_network(config, workdir, 'vanilla', 'safetensors', path)
  setup = setup_of.build(config)
  vanilla = workdir_lib.load_network(config, workdir, 'vanilla', setup)
  generalist = workdir_lib.load_network(config, workdir, 'superclass', setup)
  continued = make_tiny_config(config.data_dir)
  continued.init.update(dict(path=path, format='torchvision', keep_head=True))
  assert specialists.init_flat_head(continued, setup) is None  # head_from='random', the default
  continued.specialists.head_from = 'init'
  flat_head = specialists.init_flat_head(continued, setup)
  np.testing.assert_array_equal(flat_head['kernel'], vanilla.params['head']['kernel'])
  np.testing.assert_array_equal(flat_head['bias'], vanilla.params['head']['bias'])
  hierarchy = setup.hierarchy
  base, _ = cut_lib.split_head(generalist.params)
  dcfg = setup_of.delta_config(continued.specialists)
  for k in range(hierarchy.num_superclasses):
    state = specialists._init_state(generalist, base, dcfg, step_lib.make_optimizer(
        continued.specialists, 10), hierarchy.max_subclasses, k, cut_lib.Cut('stem'), flat_head,
        hierarchy.local_to_label[k])
    n, start = int(hierarchy.sizes[k]), int(hierarchy.offsets[k])
    np.testing.assert_array_equal(state.params['head']['kernel'][:, :n],
                                  np.asarray(vanilla.params['head']['kernel'])[:, start:start + n])
  continued.init.path = ''
  with pytest.raises(ValueError, match="head_from='init' needs config.init.path"):
    specialists.init_flat_head(continued, setup)
