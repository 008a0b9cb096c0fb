"""The demo's committed pretrained network (supersub_jax/resources/pretrained): it is what its record says.

The record (<name>.json, written by scripts/make_pretrained.py) gives the command, the steps, the held-out top-1,
the training split's fingerprint and the file's SHA-256. Checked here: the file is the recorded one; the dataset the
demo builds today is the one it was trained on; its held-out top-1 is the recorded one. ``-m reproduce`` (make
reproduce; minutes, so not part of make test) runs the recorded command again and compares the networks.
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
NAME = os.path.join(ROOT, 'supersub_jax', 'resources', 'pretrained', 'synthetic_resnet_small')


def _record() -> dict:
  return json.load(open(NAME + '.json'))


def _demo_config():
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('demo_config', os.path.join(ROOT, 'configs', 'synthetic.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_the_committed_file_is_the_recorded_network_and_the_demo_starts_from_it():
  record = _record()
  assert hashlib.sha256(open(NAME + '.safetensors', 'rb').read()).hexdigest() == record['sha256']
  config = _demo_config()
  assert os.path.samefile(config.init.path, NAME + '.safetensors')
  assert config.init.keep_head and not config.superclass.init_from_vanilla
  # The record says whether the ladder converged, and says it truly: the last doubling gained under min_gain.
  ladder = record['ladder']
  assert [r['top1'] for r in ladder if r['steps'] == record['steps']] == [record['test_top1']]
  assert record['converged'] == (len(ladder) >= 2 and ladder[-1]['top1'] - ladder[-2]['top1'] < record['min_gain'])


@pytest.fixture(scope='module')
def demo_data(demo_data_dir):
  from supersub_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  s = _demo_config().synthetic
  return synthetic.build_synthetic(demo_data_dir, image_size=s.image_size, train_per_class=s.train_per_class,
                                   test_per_class=s.test_per_class, seed=s.seed, sizes=tuple(s.sizes))


def test_the_dataset_the_demo_builds_is_the_one_the_network_was_trained_on(demo_data):
  from supersub_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  recorded = _record()['dataset']
  assert (demo_data.name, str(demo_data.version), demo_data.builder_config.name) == (
      recorded['builder'], recorded['version'], recorded['config'])
  assert synthetic.fingerprint(demo_data, 'train') == recorded['train_fingerprint']


def test_its_held_out_top1_is_the_recorded_one(demo_data):
  import jax  # pylint: disable=g-import-not-at-top
  from supersub_jax import stages, weights  # pylint: disable=g-import-not-at-top
  config = _demo_config()
  config.data_dir = os.path.dirname(os.path.dirname(os.path.dirname(demo_data.data_dir)))
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
  assert abs(correct / count - _record()['test_top1']) <= 3 / count


@pytest.mark.reproduce
def test_the_recorded_command_makes_the_same_network(tmp_path):
  from supersub_jax import weights  # pylint: disable=g-import-not-at-top
  record = _record()
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS')}
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={record["devices"]}'  # as recorded, nothing else
  output = str(tmp_path / 'again')
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'make_pretrained.py'),
                        f'--config={record["config"]}', f'--workdir={tmp_path / "w"}', f'--steps={record["steps"]}',
                        f'--seed={record["seed"]}', f'--output={output}'], cwd=ROOT, env=env, capture_output=True,
                       text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  again, committed = (weights.read_state_dict(p + '.safetensors') for p in (output, NAME))
  assert json.load(open(output + '.json'))['test_top1'] == record['test_top1']
  for name in committed:
    np.testing.assert_array_equal(again[name], committed[name], err_msg=name)
