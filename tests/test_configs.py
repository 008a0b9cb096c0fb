"""Every config loads, documents its command, and names known models, datasets and stages."""

import importlib
import os

import pytest

from supersub_jax import models, stages
from supersub_jax.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs'))
                 if f.endswith('.py') and f not in ('__init__.py', 'default.py'))


@pytest.mark.parametrize('name', CONFIGS)
def test_config_is_complete(name):
  module = importlib.import_module(f'configs.{name}')
  assert 'Command' in module.__doc__ and 'Runtime' in module.__doc__ and 'Expected result' in module.__doc__
  config = module.get_config()
  assert config.model in models.MODELS
  assert config.dataset in sources.DATASETS
  assert set(config.stages) <= set(stages.STAGES)
  assert config.parallelism in ('pmap', 'shard_map')
  hierarchy = stages.make_hierarchy(config)
  assert hierarchy.num_superclasses >= 2
  for stage in ('vanilla', 'superclass', 'specialists'):
    assert config[stage].num_train_steps > 0
