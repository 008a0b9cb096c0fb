"""Shared fixtures: a tiny config of the real pipeline and a workdir trained once per session."""

import os

import pytest
from hypothesis import settings

# CI runs the same examples every time (.ci/run sets CI=1): a red build is reproducible, never a lucky draw.
settings.register_profile('ci', derandomize=True)
if os.environ.get('CI'):
  settings.load_profile('ci')

# The suite's time is XLA compiling tiny programs, in-process and in subprocesses (which inherit these, set before
# jax is imported): a persistent compilation cache shares them, and XLA:CPU's backend at optimization level 0
# compiles a train step 2x and a network initialisation 6x faster; tests check results, not speed.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.expanduser('~/.cache/supersub_jax/jax'))
os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} --xla_backend_optimization_level=0'.strip()


def with_devices(n: int, **env) -> dict:
  """The environment of a subprocess with ``n`` XLA host devices (the suite's XLA flags kept)."""
  return dict(os.environ, XLA_FLAGS=f'{os.environ["XLA_FLAGS"]} --xla_force_host_platform_device_count={n}',
              JAX_PLATFORMS='cpu', **env)


def make_tiny_config(data_dir: str):
  """tests/tiny_config.py: configs/synthetic.py shrunk to seconds."""
  import tiny_config  # pylint: disable=g-import-not-at-top
  return tiny_config.get_config(data_dir)


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='session')
def tiny_workdir(tmp_path_factory, tiny_data_dir):
  """A workdir with all stages trained on the tiny config, the baselines' (vanilla_matched, head_only) included
  (shared by stage and evaluation tests)."""
  from supersub_jax import recipe, stages  # pylint: disable=g-import-not-at-top
  config = make_tiny_config(tiny_data_dir)
  config.stages = stages.STAGES
  workdir = str(tmp_path_factory.mktemp('workdir'))
  results = recipe.run(config, workdir)
  return config, workdir, results
