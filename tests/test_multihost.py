"""Two JAX processes on 127.0.0.1 (gloo CPU collectives, 2 devices each) train like one process with 4 devices."""

import functools
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

STEPS = 3
PER_DEVICE = 4
IMAGE = (16, 16, 3)


def _global_batches():
  """The same global batches for every run: [4 devices, PER_DEVICE, ...]."""
  rng = np.random.default_rng(0)
  for _ in range(STEPS):
    yield {'image': rng.normal(size=(4, PER_DEVICE) + IMAGE).astype(np.float32),
           'label': rng.integers(0, 5, size=(4, PER_DEVICE)).astype(np.int32)}


def _train(process_id: int, num_processes: int, kind: str, out: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from supersub_jax import models, train as train_lib  # pylint: disable=g-import-not-at-top
  local = jax.local_device_count()
  assert jax.device_count() == 4, jax.devices()
  model = models.create_model('resnet_tiny', 5, stem='small')
  variables = models.init_variables(model, jax.random.key(0), IMAGE)
  cfg = ml_collections.ConfigDict(dict(learning_rate=0.1, warmup_steps=1, schedule='cosine', optimizer='sgd',
                                       momentum=0.9, nesterov=True, weight_decay=1e-3))
  tx = train_lib.make_optimizer(cfg, STEPS)
  parallel = train_lib.Parallel(kind)
  step = parallel.compile(functools.partial(train_lib.train_step, apply_fn=model.apply, tx=tx))
  state = parallel.replicate(train_lib.create_train_state(jax.device_get(variables['params']),
                                                          jax.device_get(variables['batch_stats']), tx))
  for batch in _global_batches():
    mine = {k: v[process_id * local:(process_id + 1) * local] for k, v in batch.items()}  # this process's shard
    state, _ = step(state, parallel.shard_batch(mine), {})
  host = parallel.unreplicate(state)
  leaves = jax.tree.leaves((host.params, host.batch_stats))
  np.savez(out, *leaves)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  return dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu')


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['pmap', 'shard_map'])
def test_two_processes_match_one_process_with_four_devices(tmp_path, kind):
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, __file__, 'worker', str(i), '2', kind, str(tmp_path / f'p{i}.npz'),
                             str(port)], env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  single = subprocess.run([sys.executable, __file__, 'single', '0', '1', kind, str(tmp_path / 'single.npz'), '0'],
                          env=_env(4), capture_output=True, text=True, timeout=600)
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, o in zip(procs, outputs):
    assert p.returncode == 0, o[-3000:]
  assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-2000:]
  p0, p1, one = (np.load(tmp_path / f) for f in ('p0.npz', 'p1.npz', 'single.npz'))
  assert len(p0.files) == len(one.files) > 0
  for name in p0.files:
    np.testing.assert_array_equal(p0[name], p1[name])  # identical across processes
    np.testing.assert_allclose(p0[name], one[name], rtol=1e-4, atol=1e-5)  # as one process with 4 devices


if __name__ == '__main__':
  mode, pid, nproc, kind_arg, out_path, port_arg = sys.argv[1:7]
  if mode == 'worker':
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port_arg}', num_processes=int(nproc),
                               process_id=int(pid))
  _train(int(pid), int(nproc), kind_arg, out_path)
