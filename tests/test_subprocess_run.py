"""benchmarks/subprocess_run.py: a function run in a fresh process with its own XLA host devices."""

import pytest

from benchmarks import subprocess_run


def test_a_child_gets_its_kwargs_its_devices_and_returns_json():
  assert subprocess_run.in_subprocess('textwrap.dedent', {'text': '  two\n  lines'}) == 'two\nlines'
  assert subprocess_run.in_subprocess('jax.local_device_count', devices=3, env={'JAX_PLATFORMS': 'cpu'}) == 3


def test_a_failing_child_is_named():
  with pytest.raises(RuntimeError, match=r'json.loads failed in its subprocess \(exit status 1\)'):
    subprocess_run.in_subprocess('json.loads', {'s': 'not json'})
