"""The checks an entry point runs first (supersub_jax.preflight): the config check with this machine's devices and
memory, and what only the machine can tell (the pretrained file, a writable data_dir)."""

import os

import pytest

from conftest import make_tiny_config
from supersub_jax import config_check
from supersub_jax import preflight


def _problems(config, **kwargs) -> str:
  with pytest.raises(config_check.ConfigError) as info:
    preflight.check(config, **kwargs)
  return str(info.value)


def test_a_data_dir_that_cannot_be_written_is_refused(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  message = _problems(make_tiny_config(str(blocker / 'data')))
  assert 'data_dir=' in message and 'cannot be written' in message


def test_a_missing_data_dir_is_created_and_left_empty(tmp_path):
  preflight.check(make_tiny_config(str(tmp_path / 'data')))
  assert os.listdir(tmp_path / 'data') == []


def test_a_missing_init_file_stops_training_but_not_evaluation(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.init.path = str(tmp_path / 'resnet50.pth')
  config.hierarchy = 'mixed_11'  # a config problem and a host problem: both listed at once
  message = _problems(config)
  assert 'cannot run (2 problem(s))' in message
  assert "hierarchy='mixed_11': unknown hierarchy spec" in message and "resnet50.pth': no such file" in message
  config.hierarchy = 'synthetic'
  preflight.check(config, training=False)  # evaluation reads the trained networks, not the start they came from


def test_a_missing_map_stops_evaluation_but_not_training(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.evaluate.map_summary = str(tmp_path / 'map.json')
  assert "map.json': no such file; give a map studies/map.py wrote" in _problems(config, training=False)
  preflight.check(config)  # training never reads it
  (tmp_path / 'map.json').write_text('{"rows": [], "summary": {"cells": []}}')
  preflight.check(config, training=False)
