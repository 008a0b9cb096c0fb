"""Every config loads from any working directory, documents its command, and names known models, datasets, stages."""

import importlib.util
import os
import subprocess
import sys

import pytest

from supersub_jax import choices
from supersub_jax import config as config_lib
from supersub_jax import delta
from supersub_jax import models, setup_of, stages
from supersub_jax.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs'))
                 if f.endswith('.py') and f != '__init__.py')


def _load(name):
  """As ml_collections' config_flags loads --config=configs/<name>.py: by path, not as a package module."""
  spec = importlib.util.spec_from_file_location(f'{name}_config', os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('name', CONFIGS)
def test_config_is_complete(name):
  module = _load(name)
  assert 'Command' in module.__doc__ and 'Runtime' in module.__doc__ and 'Expected result' in module.__doc__
  config = module.get_config()
  assert config.model in models.MODELS
  assert config.dataset in sources.DATASETS
  assert set(config.stages) <= set(choices.STAGES)
  hierarchy = setup_of.make_hierarchy(config)
  assert hierarchy.num_superclasses >= 2
  for stage in ('vanilla', 'superclass', 'specialists'):
    assert config[stage].num_train_steps > 0
  if config.init.path and name.startswith('synthetic'):  # committed with the repository: it must be there
    assert os.path.exists(config.init.path), config.init.path


def test_imagenet_config_evaluates_on_validation_and_budgets_specialists_by_epochs():
  config = _load('imagenet_superclassing_resnet50').get_config()
  assert config.eval_split == 'validation'  # TFDS imagenet2012 has no labelled test split
  assert config.specialists.num_epochs > 0
  assert not config.superclass.init_from_vanilla  # the generalist starts from config.init, as the vanilla network
  assert config.stem == 'imagenet' and config.init.format == 'torchvision'


@pytest.mark.parametrize('name', ['synthetic', 'synthetic_scratch'])
def test_synthetic_configs_train_the_frontiers_deltas_over_default_fields(name):
  defaults = config_lib.default_config().specialists
  assert set(delta.FRONTIER) <= set(defaults.keys())  # update() would add a stray key silently
  specialists = _load(name).get_config().specialists
  assert {k: specialists[k] for k in delta.FRONTIER} == {'density': 0.05, 'bits': 4, 'leaves': 'kernels_and_norm',
                                                          'dense_leaves': r'(scale|bias)$'}
  assert isinstance(specialists.density, float) and isinstance(specialists.bits, int)


@pytest.mark.parametrize('name', CONFIGS)
def test_config_loads_from_another_working_directory(tmp_path, name):
  code = (f'import importlib.util as u; s = u.spec_from_file_location("c", {os.path.join(ROOT, "configs", name)!r} '
          '+ ".py"); m = u.module_from_spec(s); s.loader.exec_module(m); print(m.get_config().model)')
  out = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, 'PYTHONPATH': ''})
  assert out.returncode == 0, out.stderr


def test_the_demo_gives_the_flat_network_exactly_super_subs_steps(demo_data_dir):
  config = _load('synthetic').get_config()
  config.data_dir = demo_data_dir
  steps = stages.pipeline_steps(config, setup_of.make_hierarchy(config))
  assert steps['vanilla'] == 0  # the generalist starts from config.init: the flat stage is the competitor
  assert config.vanilla.num_train_steps == steps['total'] == steps['superclass'] + steps['specialists']
  assert config.init.keep_head and config.init.path.endswith('.safetensors')
