"""Every config loads from any working directory, documents its command, and names known models, datasets, stages."""

import importlib.util
import json
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


@pytest.mark.parametrize('name', ['synthetic', 'synthetic_m10', 'synthetic_scratch'])
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


def _counted_on_the_built_data(config, demo_data_dir):
  """``config`` reading the suite's demo data: a superclass's training images number the same at every cue
  specificity (the knob changes what an image shows, not how many there are), so steps counted there are the
  config's own without building its data."""
  config = config.copy_and_resolve_references()
  assert {k: v for k, v in config.synthetic.items() if k != 'specificity'} == {
      k: v for k, v in config_lib.default_config().synthetic.items() if k != 'specificity'}
  config.synthetic.specificity = 0
  config.data_dir = demo_data_dir
  return config


@pytest.mark.parametrize('name', ['synthetic', 'synthetic_m10'])
def test_the_converged_configs_give_the_flat_network_exactly_super_subs_steps(name, demo_data_dir):
  config = _counted_on_the_built_data(_load(name).get_config(), demo_data_dir)
  steps = stages.pipeline_steps(config, setup_of.make_hierarchy(config))
  assert steps['vanilla'] == 0  # the generalist starts from config.init: the flat stage is the competitor
  assert config.vanilla.num_train_steps == steps['total'] == steps['superclass'] + steps['specialists']
  assert config.init.keep_head and config.init.path.endswith('.safetensors')


def test_the_demo_is_the_maps_run_of_its_cell_base_0_seed_0_at_a_quarter_of_the_bases_steps(demo_data_dir):
  """configs/synthetic_m10.py trains what studies/map.py trains for specificity 10, width 1.0, base 0, seed 0 at
  --extra=0.25 with the tag base_router's flags (--generalist_share=0, specialists.head_from='init'), from the
  base network it would train (the committed one, made by that recipe and seed: tests/test_pretrained.py), so that
  its numbers are that run's (docs/results/map_runs/)."""
  from studies import common  # pylint: disable=g-import-not-at-top
  demo = _load('synthetic_m10').get_config()
  record = json.load(open(os.path.splitext(demo.init.path)[0] + '.json'))
  assert (record['steps'], record['seed'], record['config']) == (2400, 1000, 'configs/synthetic_scratch.py')
  assert record['overrides'] == ['--config.synthetic.specificity=10']
  study = _load('synthetic').get_config()
  study.synthetic.specificity, study.width = 10, 1.0
  study.init.path = demo.init.path  # the map's own copy of base network 0, the same bytes
  study.specialists.head_from = 'init'
  counted, _ = common.converged(_counted_on_the_built_data(study, demo_data_dir), 0.25, 0,
                                base_steps=record['steps'], generalist_share=0)
  counted.synthetic.specificity, counted.data_dir = 10, demo.data_dir
  # What the evaluation reports differs (rules, verdict, the map); nothing that trains does.
  assert [d for d in config_lib.differences(counted, demo) if not d.startswith('evaluate.')] == []
