"""Shared fixtures: a tiny config of the real pipeline and a workdir trained once per session."""

import contextlib
import fcntl
import json
import os

import pytest
from hypothesis import settings

# CI runs the same examples every time (.ci/run sets CI=1): a red build is reproducible, never a lucky draw.
settings.register_profile('ci', derandomize=True)
if os.environ.get('CI'):
  settings.load_profile('ci')

# The suite's time is XLA compiling tiny programs, in-process and in subprocesses (which inherit these, set before
# jax is imported): a persistent compilation cache shares them, and XLA:CPU's backend at optimization level 0
# compiles a train step 2x and a network initialisation 6x faster (LLVM's expensive passes off: 6% less time for
# test_stages and test_inference on an empty cache); tests check results, not speed.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.expanduser('~/.cache/supersub_jax/jax'))
# Every program, not only those that compile for over a second (JAX's default): most of the suite's are small, and
# its subprocesses compile the same ones again.
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ['XLA_FLAGS'] = (f'{os.environ.get("XLA_FLAGS", "")} --xla_backend_optimization_level=0 '
                           '--xla_llvm_disable_expensive_passes=true').strip()


# The session fixtures that train or evaluate (tens of seconds, filled once by one worker while another would wait for
# them): the tests that read them go first in the order (`make test` runs with --dist worksteal, which gives each
# worker one contiguous half of it), so the first worker fills them while the other runs the tests that need none.
FILLED_ONCE = ('tiny_workdir', 'evaluated_workdir', 'demo_data_dir')


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: not set(FILLED_ONCE) & set(getattr(item, 'fixturenames', ())))  # stable


def with_devices(n: int, **env) -> dict:
  """The environment of a subprocess with ``n`` XLA host devices (the suite's XLA flags kept)."""
  return dict(os.environ, XLA_FLAGS=f'{os.environ["XLA_FLAGS"]} --xla_force_host_platform_device_count={n}',
              JAX_PLATFORMS='cpu', **env)


def make_tiny_config(data_dir: str):
  """tests/tiny_config.py: configs/synthetic_scratch.py shrunk to seconds."""
  import tiny_config  # pylint: disable=g-import-not-at-top
  return tiny_config.get_config(data_dir)


@contextlib.contextmanager
def _once(tmp_path_factory, name: str):
  """A folder shared by every pytest-xdist worker of this run, and whether this worker must fill it.

  The first worker to arrive fills it while holding an OS lock (released if that worker dies); the others wait,
  then reuse it. ``done()`` marks it filled. Without xdist, the folder is this session's own.
  """
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # the run's base folder, shared by its workers
  folder = root / name
  folder.mkdir(exist_ok=True)
  with open(root / f'{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      marker = folder / '.done'
      yield folder, not marker.exists(), lambda: marker.write_text('1')
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
  """The tiny config's data_dir, with its dataset built once for the whole run."""
  with _once(tmp_path_factory, 'data') as (folder, fill, done):
    if fill:
      from supersub_jax import recipe, setup_of  # pylint: disable=g-import-not-at-top
      config = make_tiny_config(str(folder))
      recipe.prepare_data(config, setup_of.make_hierarchy(config))
      done()
  return str(folder)


@pytest.fixture(scope='session')
def demo_data_dir(tmp_path_factory):
  """A data_dir with the demo's synthetic dataset (configs/synthetic.py's knobs), built once for the whole run."""
  with _once(tmp_path_factory, 'demo_data') as (folder, fill, done):
    if fill:
      from supersub_jax.data import synthetic  # pylint: disable=g-import-not-at-top
      synthetic.build_synthetic(str(folder))  # the defaults are the demo's
      done()
  return str(folder)


@pytest.fixture(scope='session')
def tiny_workdir(tmp_path_factory, tiny_data_dir):
  """A workdir with all stages trained on the tiny config, the baselines' (vanilla_matched, head_only) included,
  trained once for the whole run and shared by the stage, evaluation, conversion and fault tests (read-only: a test
  that changes a workdir copies it first)."""
  with _once(tmp_path_factory, 'workdir') as (folder, fill, done):
    from supersub_jax import choices, recipe  # pylint: disable=g-import-not-at-top
    config = make_tiny_config(tiny_data_dir)
    config.stages = choices.STAGES
    if fill:
      (folder / 'results.json').write_text(json.dumps(recipe.run(config, str(folder))))
      done()
    results = json.loads((folder / 'results.json').read_text())
  return config, str(folder), results


@pytest.fixture(scope='session')
def evaluated_workdir(tmp_path_factory, tiny_workdir):
  """A copy of the tiny workdir evaluated once for the whole run (evaluation.run, every part computed): its report
  and its stored predictions and measurements, which a rerun keeps (read-only, as tiny_workdir)."""
  config, trained, _ = tiny_workdir
  with _once(tmp_path_factory, 'evaluated') as (folder, fill, done):
    workdir = folder / 'workdir'
    if fill:
      import shutil  # pylint: disable=g-import-not-at-top
      from supersub_jax import evaluation  # pylint: disable=g-import-not-at-top
      if workdir.exists():  # a worker that died while evaluating
        shutil.rmtree(workdir)
      shutil.copytree(trained, workdir)
      (folder / 'report.json').write_text(json.dumps(evaluation.run(config, str(workdir))))
      done()
    report = json.loads((folder / 'report.json').read_text())
  return str(workdir), report
