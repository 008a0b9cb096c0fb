"""Two JAX processes on 127.0.0.1 (gloo CPU collectives, 2 devices each) train like one process with 4 devices."""

import functools
import os
import socket
import sys

import numpy as np
import pytest

from conftest import with_devices
from processes import run_together

STEPS = 3
PER_DEVICE = 4
IMAGE = (16, 16, 3)


def _global_batches():
  """The same global batches for every run: [4 devices, PER_DEVICE, ...]."""
  rng = np.random.default_rng(0)
  for _ in range(STEPS):
    yield {'image': rng.normal(size=(4, PER_DEVICE) + IMAGE).astype(np.float32),
           'label': rng.integers(0, 5, size=(4, PER_DEVICE)).astype(np.int32)}


KINDS = ('pmap', 'shard_map')


def _train(process_id: int, out_dir: str) -> None:
  """Trains STEPS steps with each kind of compilation; writes <out_dir>/<kind>.npz."""
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from supersub_jax import models, runtime, step as step_lib  # pylint: disable=g-import-not-at-top
  local = jax.local_device_count()
  assert jax.device_count() == 4, jax.devices()
  model = models.create_model('resnet_tiny', 5, stem='small')
  variables = jax.device_get(models.init_variables(model, jax.random.key(0), IMAGE))
  cfg = ml_collections.ConfigDict(dict(learning_rate=0.1, warmup_steps=1, schedule='cosine', optimizer='sgd',
                                       momentum=0.9, nesterov=True, weight_decay=1e-3))
  tx = step_lib.make_optimizer(cfg, STEPS)
  for kind in KINDS:
    parallel = runtime.Parallel(kind)
    step = parallel.compile(functools.partial(step_lib.train_step, apply_fn=model.apply, tx=tx))
    state = parallel.replicate(step_lib.create_train_state(variables['params'], variables['batch_stats'], tx))
    for batch in _global_batches():
      mine = {k: v[process_id * local:(process_id + 1) * local] for k, v in batch.items()}  # this process's shard
      state, _ = step(state, parallel.shard_batch(mine), {})
    host = parallel.unreplicate(state)
    np.savez(os.path.join(out_dir, f'{kind}.npz'), *jax.tree.leaves((host.params, host.batch_stats)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  # No persistent compilation cache: a process that loads a program while its peer compiles it reaches the first
  # collective seconds apart, and gloo's rendezvous on CPU gives up after 30 s.
  return with_devices(devices, JAX_COMPILATION_CACHE_DIR='')


@pytest.mark.slow
def test_two_processes_match_one_process_with_four_devices(tmp_path):
  port = _free_port()
  dirs = [tmp_path / name for name in ('p0', 'p1', 'single')]
  for d in dirs:
    d.mkdir()
  workers = run_together([[sys.executable, __file__, 'worker', str(i), str(dirs[i]), str(port)] for i in range(2)],
                         env=_env(2), timeout=600)
  for returncode, output in workers:
    assert returncode == 0, output[-3000:]
  # One process has no peer to keep waiting: it may load its programs from the persistent cache.
  [(returncode, output)] = run_together([[sys.executable, __file__, 'single', '0', str(dirs[2]), '0']],
                                        env=with_devices(4))
  assert returncode == 0, output[-3000:]
  for kind in KINDS:
    p0, p1, one = (np.load(d / f'{kind}.npz') for d in dirs)
    assert len(p0.files) == len(one.files) > 0
    for name in p0.files:
      np.testing.assert_array_equal(p0[name], p1[name])  # identical across processes
      np.testing.assert_allclose(p0[name], one[name], rtol=1e-4, atol=1e-5, err_msg=kind)  # as one with 4 devices


if __name__ == '__main__':
  mode, pid, out_dir, port_arg = sys.argv[1:5]
  if mode == 'worker':
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port_arg}', num_processes=2, process_id=int(pid))
  _train(int(pid), out_dir)
