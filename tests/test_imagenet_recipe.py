"""The ImageNet recipe end to end, as a user runs it, on a fake ILSVRC2012 in the original tar layout.

Every step is the documented command in a subprocess: prepare the tars, train with
configs/imagenet_superclassing_resnet50.py overriding only sizes (a tiny ResNet with the ImageNet stem at 32x32, a
few steps, no grain workers) and starting from a test-made torchvision-format weights file, evaluate the workdir
(no --config: the stored one), and every convert verb (the export's formats besides orbax through its
function).
"""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from supersub_jax.data.fake_imagenet import imagenet_wnids, write_fake_imagenet
from supersub_jax import bundle
from supersub_jax import config as config_lib
from supersub_jax import convert
from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax import models
from supersub_jax import weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, 'configs', 'imagenet_superclassing_resnet50.py')
SIZES = [  # sizes only: the model, the images, the steps, the batches, the workers, the rules reported
    '--config.model=resnet_tiny', '--config.image_size=32', '--config.batch_size=16', '--config.eval_batch_size=64',
    '--config.worker_count=0', '--config.vanilla.num_train_steps=3', '--config.vanilla.warmup_steps=1',
    '--config.superclass.num_train_steps=2', '--config.superclass.warmup_steps=1',
    '--config.specialists.num_epochs=0.25', '--config.specialists.min_steps=4',
    '--config.specialists.steps_multiple=4', '--config.specialists.mask_update_every=1',
    '--config.log_every_steps=2', '--config.checkpoint_every_steps=2', '--config.evaluate.batch_size=64',
    '--config.evaluate.benchmark_batches=1',
    # Every rule and batch size is one more compile of ten specialists (most of evaluate's time here); the rules and
    # the timing are test_evaluation's and test_measure's, this test is the recipe's path through the commands.
    "--config.evaluate.rules=('hard',)", "--config.evaluate.benchmark_batch_sizes=(8,)"]


def _run(args, cwd, timings, name):
  start = time.perf_counter()
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))  # tools.*
  out = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
  timings[name] = time.perf_counter() - start
  assert out.returncode == 0, f'{name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}'
  return out.stdout


@pytest.mark.slow
def test_imagenet_recipe_from_tars_to_report_and_exports(tmp_path):
  timings = {}
  h = hierarchy_lib.mixed_10()
  all_wnids = imagenet_wnids()
  inside = [all_wnids[s.source_index] for sup in h.superclasses for s in sup.subclasses]
  outside = [w for i, w in enumerate(all_wnids) if h.source_to_label[i] < 0][:3]
  tars, data, workdir = tmp_path / 'tars', tmp_path / 'data', tmp_path / 'workdir'
  write_fake_imagenet(tars, inside + outside, per_class=2, val_wnids=inside + outside)
  # The user's pretrained weights: a torchvision-format file (names, layouts, 1000-way fc) of the architecture.
  model = models.create_model('resnet_tiny', 1000, stem='imagenet')
  pretrained = jax.device_get(models.init_variables(model, jax.random.key(7), (32, 32, 3)))
  init_file = str(tmp_path / 'resnet_tiny_torchvision.safetensors')
  weights.write_state_dict(init_file, weights.to_torchvision(pretrained))
  cwd = str(tmp_path)  # not the repository: configs and entry points must work from anywhere

  out = _run(['-m', 'tools.prepare', '--dataset=imagenet2012', f'--data_dir={data}',
              f'--manual_dir={tars}'], cwd, timings, 'prepare')
  assert 'train=512, validation=256' in out  # 253 + 3 classes, 2 train images and 1 validation image each

  _run([os.path.join(ROOT, 'train.py'), f'--config={CONFIG}', f'--workdir={workdir}', f'--config.data_dir={data}',
        f'--config.init.path={init_file}', *SIZES], cwd, timings, 'train')
  stored = json.loads((workdir / 'config.json').read_text())
  assert stored['eval_split'] == 'validation' and stored['init']['path'] == init_file

  out = _run([os.path.join(ROOT, 'evaluate.py'), f'--workdir={workdir}'], cwd, timings, 'evaluate')
  assert 'Super-Sub top-1' in out
  report = json.loads((workdir / 'report.json').read_text())
  assert report['split'] == 'validation' and report['test_count'] == 253 and report['dataset'] == 'imagenet2012'
  assert report['storage']['num_superclasses'] == 10
  assert [r['num_subclasses'] for r in report['per_superclass']] == [116, 52, 27, 13, 10, 8, 7, 7, 7, 6]

  convert_ = ['-m', 'tools.convert']
  _run([*convert_, 'bundle', f'--workdir={workdir}', f'--output={tmp_path}/supersub.msgpack'], cwd, timings,
       'convert bundle')
  _, exported, hierarchy, _ = bundle.load_bundle(str(tmp_path / 'supersub.msgpack'))
  assert hierarchy.num_superclasses == 10 and len(exported) == 10
  _run([*convert_, 'export', f'--workdir={workdir}', '--superclass=9', '--format=orbax',
        f'--output={tmp_path}/boat_orbax'], cwd, timings, 'convert export orbax')
  # The other formats through the function the command calls (the command's own path is the same but for --format):
  # a process each would cost its start-up and the ten specialists' read again.
  stored_config = config_lib.read(str(workdir))
  for fmt, name in (('safetensors', 'boat.safetensors'), ('npz', 'boat.npz')):
    convert.export_specialist(stored_config, str(workdir), 9, fmt, str(tmp_path / name))
  boat = models.create_model('resnet_tiny', 6, stem='imagenet')
  from_orbax, meta = weights.load_orbax(str(tmp_path / 'boat_orbax'))
  assert meta['name'] == 'boat' and meta['num_classes'] == 6
  for name in ('boat.safetensors', 'boat.npz'):
    variables = weights.from_torchvision(weights.read_state_dict(str(tmp_path / name)), boat)
    for a, b in zip(jax.tree.leaves(from_orbax), jax.tree.leaves(variables)):
      np.testing.assert_array_equal(a, b)
  _run([*convert_, 'import-torchvision', '--arch=resnet_tiny', f'--input={init_file}',
        f'--output={tmp_path}/imported'], cwd, timings, 'convert import-torchvision')
  imported, _ = weights.load_orbax(str(tmp_path / 'imported'))
  for a, b in zip(jax.tree.leaves(pretrained), jax.tree.leaves(imported)):
    np.testing.assert_array_equal(a, b)
  print('\n' + '\n'.join(f'{k:>28}: {v:6.1f} s' for k, v in timings.items())
        + f'\n{"total":>28}: {sum(timings.values()):6.1f} s')
