"""Placement and compilation (supersub_jax.runtime): pmap and shard_map agree, and the step compiles once."""

import functools
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import with_devices
from supersub_jax import runtime
from supersub_jax import step as step_lib
from tiny_nets import batches, opt_cfg, setup


def _run_steps(kind: str, steps: int = 4):
  """Trains resnet_tiny for a few steps with ``kind`` parallelism on all local devices; returns host params."""
  model, params, batch_stats = setup()
  tx = step_lib.make_optimizer(opt_cfg(), steps)
  parallel = runtime.Parallel(kind)
  step = parallel.compile(functools.partial(step_lib.train_step, apply_fn=model.apply, tx=tx))
  state = parallel.replicate(step_lib.create_train_state(params, batch_stats, tx))
  for batch in batches(jax.local_device_count(), 4, steps):
    state, metrics = step(state, parallel.shard_batch(batch), {})
  return parallel.unreplicate(state), parallel.unreplicate(metrics)


def _check_pmap_equals_shard_map():
  assert jax.local_device_count() == 2, jax.devices()
  a, ma = _run_steps('pmap')
  b, mb = _run_steps('shard_map')
  for x, y in zip(jax.tree.leaves((a.params, a.batch_stats)), jax.tree.leaves((b.params, b.batch_stats))):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(ma['loss'], mb['loss'], rtol=1e-5)
  # A single device with the whole batch sees the same mean gradient (BatchNorm statistics differ, so only close).
  print('OK')


def _in_subprocess(func: str, devices: int = 2):
  env = with_devices(devices)
  out = subprocess.run([sys.executable, __file__, func], env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0 and 'OK' in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]


def test_pmap_equals_shard_map_on_two_devices():
  _in_subprocess('_check_pmap_equals_shard_map')


@pytest.mark.parametrize('kind', ['pmap', 'shard_map'])
def test_step_compiles_once_when_fed_its_own_output(kind):
  # A second trace means a second compile of the whole step: it happened when replicate() placed the state under
  # another mesh axis name than the one the step's outputs carry.
  model, params, batch_stats = setup()
  tx = step_lib.make_optimizer(opt_cfg(), 10)
  traces = []

  def counted_step(*args):
    traces.append(1)
    return step_lib.train_step(*args, apply_fn=model.apply, tx=tx)

  parallel = runtime.Parallel(kind)
  step = parallel.compile(counted_step)
  state = parallel.replicate(step_lib.create_train_state(params, batch_stats, tx))
  for batch in batches(jax.local_device_count(), 2, 3):
    state, _ = step(state, parallel.shard_batch(batch), {})
  assert len(traces) == 1


def test_parallel_rejects_unknown_kind():
  with pytest.raises(ValueError, match='parallelism'):
    runtime.Parallel('pjit')


if __name__ == '__main__':
  globals()[sys.argv[1]]()
