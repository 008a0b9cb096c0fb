"""The committed pretrained networks (supersub_jax/resources/pretrained): each is what its record says.

The record (<name>.json, written by scripts/make_pretrained.py) gives the command, the steps, the held-out top-1,
the training split's fingerprint and the file's SHA-256. Checked here, for each network and the config that starts
from it (configs/synthetic.py, and configs/synthetic_m10.py, `make demo`'s): the file is the recorded one; the
dataset the config builds today is the one it was trained on; its held-out top-1 is the recorded one (for the
second network, whose data (specificity 10) the suite does not otherwise build, under ``-m reproduce``).
``-m reproduce`` (make reproduce; minutes, so not part of make test) also runs the recorded command again and
compares the networks.
"""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from supersub_jax import config as config_lib
from supersub_jax import setup_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.path.join(ROOT, 'supersub_jax', 'resources', 'pretrained')
# The config that starts from each committed network.
NETWORKS = {'synthetic': 'synthetic_resnet_small', 'synthetic_m10': 'synthetic_m10_resnet_small'}
# Whose data the suite builds anyway (the demo_data_dir fixture); the other's checks need minutes of -m reproduce.
BUILT = 'synthetic'


def _name(config_name: str) -> str:
  return os.path.join(FOLDER, NETWORKS[config_name])


def _record(config_name: str = BUILT) -> dict:
  return json.load(open(_name(config_name) + '.json'))


def _demo_config(config_name: str = BUILT):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('demo_config', os.path.join(ROOT, 'configs', f'{config_name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _heavy_unless_built(names):
  return [n if n == BUILT else pytest.param(n, marks=pytest.mark.reproduce) for n in names]


@pytest.mark.parametrize('config_name', sorted(NETWORKS))
def test_the_committed_file_is_the_recorded_network_and_its_config_starts_from_it(config_name):
  record, name = _record(config_name), _name(config_name)
  assert hashlib.sha256(open(name + '.safetensors', 'rb').read()).hexdigest() == record['sha256']
  config = _demo_config(config_name)
  assert os.path.samefile(config.init.path, name + '.safetensors')
  assert config.init.keep_head and not config.superclass.init_from_vanilla
  # The record says whether the ladder converged, and says it truly: the last doubling gained under min_gain.
  ladder = record['ladder']
  assert [r['top1'] for r in ladder if r['steps'] == record['steps']] == [record['test_top1']]
  if record['converged'] is None:  # --steps: one budget, no ladder to say whether it converged
    assert len(ladder) == 1
  else:
    assert record['converged'] == (len(ladder) >= 2 and ladder[-1]['top1'] - ladder[-2]['top1'] < record['min_gain'])
  # The record names the data the config builds (the builder's config name carries every knob, specificity too).
  from supersub_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  builder = synthetic.synthetic_builder(config.data_dir, **setup_of.dataset_kwargs(config))
  assert (builder.name, str(builder.version), builder.builder_config.name) == (
      record['dataset']['builder'], record['dataset']['version'], record['dataset']['config'])


def _data(config_name, demo_data_dir, tmp_path_factory):
  from supersub_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  config = _demo_config(config_name)
  data_dir = demo_data_dir if config_name == BUILT else str(tmp_path_factory.mktemp(f'{config_name}_data'))
  return synthetic.build_synthetic(data_dir, **setup_of.dataset_kwargs(config))


@pytest.mark.parametrize('config_name', _heavy_unless_built(sorted(NETWORKS)))
def test_the_dataset_its_config_builds_is_the_one_the_network_was_trained_on(config_name, demo_data_dir,
                                                                             tmp_path_factory):
  from supersub_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  data = _data(config_name, demo_data_dir, tmp_path_factory)
  recorded = _record(config_name)['dataset']
  assert (data.name, str(data.version), data.builder_config.name) == (
      recorded['builder'], recorded['version'], recorded['config'])
  assert synthetic.fingerprint(data, 'train') == recorded['train_fingerprint']


@pytest.mark.parametrize('config_name', _heavy_unless_built(sorted(NETWORKS)))
def test_its_held_out_top1_is_the_recorded_one(config_name, demo_data_dir, tmp_path_factory):
  import jax  # pylint: disable=g-import-not-at-top
  from supersub_jax import stages, weights  # pylint: disable=g-import-not-at-top
  data = _data(config_name, demo_data_dir, tmp_path_factory)
  config = _demo_config(config_name)
  config.data_dir = os.path.dirname(os.path.dirname(os.path.dirname(data.data_dir)))
  hierarchy = setup_of.make_hierarchy(config)
  model = setup_of.make_model(config, hierarchy.num_subclasses)
  variables = weights.load_network(config.init.path, config.init.format, model)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  correct = count = 0
  for batch in stages.eval_batches(config, stages.load_source(config, 'test', hierarchy), label_mode='subclass',
                                   process_index=0, process_count=1, local_device_count=1):
    real = batch['mask'].reshape(-1) > 0
    pred = np.argmax(np.asarray(apply(variables, batch['image'].reshape((-1,) + batch['image'].shape[2:]))), -1)
    correct += int((pred[real] == batch['label'].reshape(-1)[real]).sum())
    count += int(real.sum())
  assert count == 3800
  # Inference here, the training stage's eval_step there: the same images, the same answers, within a few images
  # of float rounding.
  assert abs(correct / count - _record(config_name)['test_top1']) <= 3 / count


@pytest.mark.reproduce
@pytest.mark.parametrize('config_name', sorted(NETWORKS))
def test_the_recorded_command_makes_the_same_network(tmp_path, config_name):
  from supersub_jax import weights  # pylint: disable=g-import-not-at-top
  record = _record(config_name)
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS')}
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={record["devices"]}'  # as recorded, nothing else
  output = str(tmp_path / 'again')
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'make_pretrained.py'),
                        f'--config={record["config"]}', f'--workdir={tmp_path / "w"}', f'--steps={record["steps"]}',
                        f'--seed={record["seed"]}', f'--output={output}', *record.get('overrides', [])], cwd=ROOT,
                       env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  again, committed = (weights.read_state_dict(p + '.safetensors') for p in (output, _name(config_name)))
  assert json.load(open(output + '.json'))['test_top1'] == record['test_top1']
  for name in committed:
    np.testing.assert_array_equal(again[name], committed[name], err_msg=name)
