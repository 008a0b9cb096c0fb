"""The default config and the copy a workdir keeps (supersub_jax.config)."""

import json

import pytest

from supersub_jax import config as config_lib


def test_workdir_copy_round_trips_with_tuples(tmp_path):
  config = config_lib.default_config()
  config.stages = ('vanilla',)
  config.specialists.superclasses = (0, 2)
  config_lib.write(config, str(tmp_path))
  back = config_lib.read(str(tmp_path))
  assert back.stages == ('vanilla',) and back.specialists.superclasses == (0, 2)
  assert back.synthetic.sizes == config.synthetic.sizes
  assert config_lib.differences(config, back) == []
  assert sorted(p.name for p in tmp_path.iterdir()) == ['config.json']  # no temporary file left


def test_fields_added_since_training_take_their_defaults(tmp_path):
  stored = config_lib.default_config().to_dict()
  del stored['eval_split'], stored['init']
  (tmp_path / 'config.json').write_text(json.dumps(stored))
  back = config_lib.read(str(tmp_path))
  assert back.eval_split == 'test' and back.init.path == ''


def test_differences_name_each_changed_field():
  a, b = config_lib.default_config(), config_lib.default_config()
  b.specialists.density = 0.5
  b.stages = ('vanilla', 'superclass')
  assert config_lib.differences(a, b) == [
      'specialists.density: 0.1 -> 0.5',
      "stages: ['vanilla', 'superclass', 'specialists'] -> ['vanilla', 'superclass']"]


def test_missing_or_broken_copy_says_what_to_pass(tmp_path):
  with pytest.raises(FileNotFoundError, match='pass --config='):
    config_lib.read(str(tmp_path))
  (tmp_path / 'config.json').write_text('{not json')
  with pytest.raises(ValueError, match='not valid JSON.*pass --config='):
    config_lib.read(str(tmp_path))
