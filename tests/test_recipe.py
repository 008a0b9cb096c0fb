"""The recipe: a bad config fails before anything is written, the settings check against a previous run, and the run
of config.stages. (The config check itself: tests/test_config_check.py; the machine's: tests/test_preflight.py.)"""

import os

import pytest

from conftest import make_tiny_config
from supersub_jax import config_check
from supersub_jax import recipe


def test_a_bad_config_fails_before_anything_is_written(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.specialists.bits = 5
  with pytest.raises(config_check.ConfigError, match='specialists.bits=5'):
    recipe.run(config, str(tmp_path / 'workdir'))
  assert not os.path.exists(tmp_path / 'workdir')


def test_only_checkpoints_count_in_the_settings_check_not_a_config_json_they_do_not_back(tmp_path, tiny_workdir):
  # A start that failed after writing config.json and an empty stage directory must not block the corrected command.
  from supersub_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = make_tiny_config(str(tmp_path / 'data'))
  failed = make_tiny_config(str(tmp_path / 'data'))
  failed.image_size = 8
  config_lib.write(failed, str(tmp_path / 'w'))
  os.makedirs(tmp_path / 'w' / 'vanilla')
  recipe.check_previous_run(config, str(tmp_path / 'w'))
  trained_config, trained, _ = tiny_workdir  # read only
  changed = trained_config.copy_and_resolve_references()
  changed.seed = 1
  changed.specialists.density = 0.5
  with pytest.raises(recipe.runner.SettingsMismatchError) as info:
    recipe.check_previous_run(changed, trained)
  assert 'seed: 0 -> 1 (checkpoints of vanilla, superclass, specialists, vanilla_matched, head_only)' in str(info.value)
  assert 'specialists.density: 0.05 -> 0.5 (checkpoints of specialists, head_only)' in str(info.value)


