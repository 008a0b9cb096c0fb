"""The README's commands and Python snippets, run as written on the smallest data that exercises them.

Each command of "Using it" runs in a subprocess with ``runs/demo`` replaced by a copy of the tiny trained and
evaluated workdir (the demo's own would take minutes) and ``./data`` by a temporary folder; ``train.py``'s and the synthetic ``prepare``
line keep their flags and add size overrides. The Python snippets run with ``exec``, their inputs (``images``, ``base_params``, the
weights file) made here, at tiny sizes.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, 'README.md')).read()
# train.py with the demo's config, shrunk: a few steps on a few images (the committed start fixes the 38 subclasses).
TRAIN_SIZES = ['--config.synthetic.train_per_class=2', '--config.synthetic.validation_per_class=1',
               '--config.synthetic.test_per_class=1', '--config.stages=vanilla', '--config.vanilla.num_train_steps=2',
               '--config.vanilla.warmup_steps=1', '--config.log_every_steps=1', '--config.evaluate.benchmark_batches=1']
# tools.prepare's synthetic line, shrunk the same way: the sample grid needs a few test images of each subclass.
PREPARE_SIZES = ['--train_per_class=2', '--validation_per_class=1', '--test_per_class=4']


def _section(title: str) -> str:
  start = README.index(f'## {title}\n')
  end = README.index('\n## ', start + 1)
  return README[start:end]


def _blocks(text: str, language: str) -> list[str]:
  return re.findall(rf'```{language}\n(.*?)```', text, re.S)


def _commands() -> list[str]:
  [block] = _blocks(_section('Using it'), 'bash')
  return [line.strip() for line in block.splitlines() if line.strip()]


def test_the_using_it_block_lists_every_entry_point():
  programs = {' '.join(shlex.split(c)[:3]) if shlex.split(c)[1] == '-m' else shlex.split(c)[1] for c in _commands()}
  assert {'train.py', 'evaluate.py', 'python -m tools.hierarchy', 'python -m tools.convert',
          'python -m tools.prepare'} <= programs


@pytest.fixture(scope='module')
def demo_like(evaluated_workdir, tmp_path_factory):
  """A folder laid out as the README assumes: runs/demo (a copy of the tiny workdir, evaluated: the README's
  ``evaluate.py`` line then checks what it would redo and keeps the rest, as after ``make demo``; a fresh evaluation by
  ``evaluate.py`` is test_evaluation's) and an empty ./data."""
  folder = tmp_path_factory.mktemp('readme')
  shutil.copytree(evaluated_workdir[0], folder / 'runs' / 'demo')
  return folder


@pytest.mark.slow
@pytest.mark.parametrize('index', range(len(_commands())))
def test_each_readme_command_runs_as_written(demo_like, tmp_path, index):
  command = _commands()[index]
  args = shlex.split(command.split('  #')[0])
  assert args[0] == 'python'
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
  cwd = demo_like
  if args[1] == 'train.py':  # a fresh workdir of the demo's config: the tiny one was trained on another config
    args = [a.replace('runs/demo', str(tmp_path / 'train')) for a in args] + TRAIN_SIZES
    args.append(f'--config.data_dir={tmp_path / "data"}')
  if args[1:3] == ['-m', 'tools.prepare'] and '--dataset=synthetic' in args:
    args += PREPARE_SIZES
  args = [sys.executable] + [os.path.join(ROOT, a) if a.endswith('.py') and not a.startswith('-') else a
                             for a in args[1:]]
  args = [a.replace('--config=configs/', f'--config={ROOT}/configs/') for a in args]
  out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
  if 'cifar100' in command:  # no network here: the documented one-line answer, naming what to place and where
    assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr[-3000:]
    assert 'cifar-100-binary.tar.gz' in out.stderr and '--manual_dir' in out.stderr
    return
  assert out.returncode == 0, (command, out.stderr[-3000:])
  if 'convert' in command:  # into the workdir, under the name the README's comment gives
    assert out.stdout.startswith(f"wrote runs/demo/{command.split('# ')[-1].split()[-1].split('/')[-1]}"), out.stdout
    assert os.path.getsize(cwd / 'runs' / 'demo' / out.stdout.split(':')[0].split('/')[-1]) > 0


def test_the_bundle_snippet_predicts_every_image(demo_like):
  from supersub_jax import bundle, config as config_lib, convert  # pylint: disable=g-import-not-at-top
  workdir = str(demo_like / 'runs' / 'demo')
  config = config_lib.read(workdir)
  path = os.path.join(workdir, 'supersub.msgpack')
  if not os.path.exists(path):
    bundle.write_bundle(path, convert.make_bundle(config, workdir))
  [snippet] = [b for b in _blocks(_section('Using it'), 'python') if 'load_bundle' in b]
  images = np.random.default_rng(0).standard_normal((5, config.image_size, config.image_size, 3)).astype(np.float32)
  namespace = {'images': images}
  exec(snippet.replace("'runs/demo/supersub.msgpack'", repr(path)), namespace)  # pylint: disable=exec-used
  labels = np.asarray(namespace['labels'])
  assert labels.shape == (5,) and labels.dtype == np.int32
  assert ((0 <= labels) & (labels < namespace['hierarchy'].num_subclasses)).all()


def test_the_functional_api_snippets_run():
  import jax  # pylint: disable=g-import-not-at-top
  from supersub_jax import models  # pylint: disable=g-import-not-at-top
  [delta_snippet, torchvision_snippet] = [b for b in _blocks(README, 'python') if 'load_bundle' not in b]
  model = models.create_model('resnet_tiny', 4, stem='small')
  base = models.init_variables(model, jax.random.key(0), (16, 16, 3))['params']
  exec(delta_snippet, {'base_params': base})  # pylint: disable=exec-used  (its own assert checks the compression)
  # The torchvision snippet on the committed reference fixture: ResNet-50's layout at width 1/8 and 10 classes.
  fixture = os.path.join(ROOT, 'tests', 'fixtures', 'torchvision_bottleneck.safetensors')
  snippet = (torchvision_snippet.replace("'resnet50-0676ba61.pth'", repr(fixture))
             .replace("models.create_model('resnet50', 1000, stem='imagenet')",
                      "models.create_model('resnet50', 10, stem='imagenet', width=0.125)"))
  assert snippet != torchvision_snippet
  namespace = {'images_nhwc': np.zeros((1, 64, 64, 3), np.float32)}
  exec(snippet, namespace)  # pylint: disable=exec-used
  assert np.asarray(namespace['logits']).shape == (1, 10)
