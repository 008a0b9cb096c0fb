"""convert.py: export, network and the bundle of a trained workdir (the bundle format: test_bundle.py; the command:
test_tools_convert.py)."""

import os

import jax
import numpy as np
import pytest

from conftest import make_tiny_config
from supersub_jax import bank as bank_lib
from supersub_jax import convert
from supersub_jax import inference
from supersub_jax import setup_of
from supersub_jax import stages
from supersub_jax import weights
from supersub_jax import workdir as workdir_lib


def _banked_specialist(config, workdir, k):
  """Specialist k as two-stage inference materializes it from the bank (the reference for exports)."""
  bundle = convert.make_bundle(config, workdir)
  hierarchy = setup_of.make_hierarchy(config)
  state = bank_lib.build_supersub(bundle['generalist'], [bundle['specialists'][str(i)] for i in range(3)],
                                  hierarchy)
  banked = inference.specialist_variables(state.bank, state.base, k, hierarchy.max_subclasses)
  n = int(hierarchy.sizes[k])
  return jax.tree_util.tree_map_with_path(
      lambda p, x: np.asarray(x)[..., :n] if p[1].key == 'head' else np.asarray(x), banked), n


@pytest.mark.parametrize('fmt', convert.EXPORT_FORMATS)
def test_export_is_the_banked_specialist(tiny_workdir, tmp_path, fmt):
  config, workdir, _ = tiny_workdir
  k = 1
  expected, n = _banked_specialist(config, workdir, k)
  output = str(tmp_path / {'orbax': 'spec', 'safetensors': 'spec.safetensors', 'npz': 'spec.npz'}[fmt])
  convert.export_specialist(config, workdir, k, fmt, output)
  model = setup_of.make_model(config, n)
  if fmt == 'orbax':
    variables, meta = weights.load_orbax(output)
    assert meta['superclass'] == k and meta['num_classes'] == n and len(meta['subclasses']) == n
  else:
    variables = weights.from_torchvision(weights.read_state_dict(output), model)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(expected)[0], jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  logits = model.apply(variables, np.zeros((2, 16, 16, 3), np.float32), train=False)
  assert logits.shape == (2, n)


def test_export_rejects_bad_input_and_writes_nothing(tiny_workdir, tmp_path):
  config, workdir, _ = tiny_workdir
  with pytest.raises(ValueError, match=r'--superclass=99 is outside \[0, 3\)'):
    convert.export_specialist(config, workdir, 99, 'orbax', str(tmp_path / 'a'))
  with pytest.raises(ValueError, match='must end with .safetensors'):
    convert.export_specialist(config, workdir, 0, 'safetensors', str(tmp_path / 'a.bin'))
  empty = str(tmp_path / 'empty_workdir')
  with pytest.raises(FileNotFoundError, match='No superclass checkpoint'):
    convert.export_specialist(config, empty, 0, 'npz', str(tmp_path / 'a.npz'))
  assert sorted(os.listdir(tmp_path)) == []  # no output, and no directory created in the empty workdir


@pytest.mark.parametrize('fmt', ['safetensors', 'orbax'])
def test_a_network_stage_exported_is_what_config_init_continues_and_routes_by(tiny_workdir, tmp_path, fmt):
  config, workdir, _ = tiny_workdir
  output = str(tmp_path / ('flat.safetensors' if fmt == 'safetensors' else 'flat'))
  assert 'the vanilla network (7 classes' in convert.export_network(config, workdir, 'vanilla', fmt, output)
  vanilla = workdir_lib.load_network(config, workdir, 'vanilla', setup_of.build(config))
  pretrained = make_tiny_config(config.data_dir)
  pretrained.init.update(dict(path=output, format='torchvision' if fmt == 'safetensors' else 'orbax',
                              keep_head=True))
  pretrained.superclass.init_from_vanilla = False
  setup = setup_of.build(pretrained)
  # The flat stages continue the whole network; the generalist takes its backbone and a new head.
  start = stages._pretrained_start(pretrained, 'vanilla', setup.flat)
  for a, b in zip(jax.tree.leaves({'params': vanilla.params, 'batch_stats': vanilla.batch_stats}),
                  jax.tree.leaves(start)):
    np.testing.assert_array_equal(a, b)
  assert 'head' not in stages._pretrained_start(pretrained, 'superclass', setup.generalist)['params']
  # It is the flat router of a pipeline whose generalist starts from it; the vanilla network is, otherwise.
  router = workdir_lib.flat_router_of(pretrained, vanilla, setup)
  for a, b in zip(jax.tree.leaves(router.params), jax.tree.leaves(vanilla.params)):
    np.testing.assert_array_equal(a, b)
  assert workdir_lib.flat_router_of(config, vanilla, setup_of.build(config)) is vanilla
  with pytest.raises(ValueError, match='superclass'):
    convert.export_network(config, workdir, 'specialists', fmt, str(tmp_path / 'x.npz'))
