"""The recipe's checks before anything trains (supersub_jax.recipe.validate), and the run of config.stages."""

import os

import pytest

from conftest import make_tiny_config
from supersub_jax import recipe


def _problems(config) -> str:
  with pytest.raises(recipe.ConfigError) as info:
    recipe.validate(config)
  return str(info.value)


def test_every_problem_is_listed_at_once_with_its_field_and_fix(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.specialists.bits = 3
  config.specialists.density = 1.5
  config.specialists.dense_leaves = '(scale'
  config.model = 'resnet_huge'
  config.stages = ('superclass', 'vanilla')
  config.unlock()
  config.specialist = config.specialists  # a typo'd field, as an API user could add it
  message = _problems(config)
  assert 'cannot run (6 problem(s))' in message
  assert "specialists.dense_leaves='(scale': not a valid regex" in message
  assert 'specialists.bits=3: use one of (8, 4, 2), or 0 for no quantization.' in message
  assert 'specialists.density=1.5: use a fraction in [0, 1]' in message
  assert "model='resnet_huge': use one of" in message and 'resnet50' in message
  assert "stages=('superclass', 'vanilla'): out of order" in message
  assert 'specialist: unknown field; did you mean specialists?' in message


def test_a_branch_outside_the_model_names_its_layer_groups(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.specialists.branch = 'stage4'  # resnet_tiny has three stages
  message = _problems(config)
  assert "config.specialists.branch='stage4' is not a layer group of this model" in message
  assert "('stem', 'stage1', 'stage2', 'stage3', 'head')" in message


def test_unknown_hierarchy_dataset_and_missing_init_file(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.hierarchy = 'mixed_11'
  config.dataset = 'imagenet2021'
  config.init.path = str(tmp_path / 'resnet50.pth')
  message = _problems(config)
  assert "hierarchy='mixed_11': unknown hierarchy spec" in message
  assert "dataset='imagenet2021': use one of ('synthetic', 'cifar100', 'imagenet2012')" in message
  assert "resnet50.pth': no such file" in message


def test_a_data_dir_that_cannot_be_written_is_refused(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  message = _problems(make_tiny_config(str(blocker / 'data')))
  assert 'data_dir=' in message and 'cannot be written' in message


def test_a_bad_config_fails_before_anything_is_written(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.specialists.bits = 5
  with pytest.raises(recipe.ConfigError, match='specialists.bits=5'):
    recipe.run(config, str(tmp_path / 'workdir'))
  assert not os.path.exists(tmp_path / 'workdir')


def test_defaults_and_shipped_configs_are_valid(tmp_path):
  recipe.validate(make_tiny_config(str(tmp_path / 'data')))
