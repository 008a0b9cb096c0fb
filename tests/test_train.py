"""Tests of supersub_jax.train: optimizer, loss, the step under pmap and shard_map, the loop."""

import functools
import json
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import with_devices
from supersub_jax import models
from supersub_jax import train as train_lib

IMAGE = (16, 16, 3)


def _opt_cfg(**kw):
  cfg = ml_collections.ConfigDict(dict(learning_rate=0.1, warmup_steps=2, schedule='cosine', optimizer='sgd',
                                       momentum=0.9, nesterov=True, weight_decay=1e-3))
  cfg.update(kw)
  return cfg


def _setup(num_classes=5, seed=0):
  model = models.create_model('resnet_tiny', num_classes, stem='small')
  variables = models.init_variables(model, jax.random.key(seed), IMAGE)
  return model, jax.device_get(variables['params']), jax.device_get(variables['batch_stats'])


def _batches(num_devices, per_device, steps, num_classes=5, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    yield {'image': rng.normal(size=(num_devices, per_device) + IMAGE).astype(np.float32),
           'label': rng.integers(0, num_classes, size=(num_devices, per_device)).astype(np.int32)}


def test_weight_decay_mask_skips_norm_and_bias():
  _, params, _ = _setup()
  mask = train_lib.weight_decay_mask(params)
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert flat["['head']['kernel']"] and not flat["['head']['bias']"]
  assert not any(v for k, v in flat.items() if 'scale' in k)
  assert any(v for k, v in flat.items() if 'conv' in k.lower() and 'kernel' in k)


@pytest.mark.parametrize('kind', ['cosine', 'step', 'constant'])
def test_schedule_warmup_then_decay(kind):
  sched = train_lib.make_schedule(_opt_cfg(schedule=kind, warmup_steps=10), 100)
  assert float(sched(0)) == 0.0
  assert float(sched(10)) == pytest.approx(0.1, rel=1e-5)
  assert float(sched(99)) <= 0.1 + 1e-7
  if kind != 'constant':
    assert float(sched(99)) < 0.05


def test_unknown_optimizer_and_schedule_errors():
  with pytest.raises(ValueError, match='optimizer'):
    train_lib.make_optimizer(_opt_cfg(optimizer='lion'), 10)
  with pytest.raises(ValueError, match='schedule'):
    train_lib.make_schedule(_opt_cfg(schedule='linear'), 10)


def test_cross_entropy_matches_the_formula_with_smoothing_over_valid_classes():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
  labels = jnp.array([0, 1])
  plain = train_lib.cross_entropy(logits, labels)
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  np.testing.assert_allclose(plain, expected, rtol=1e-6)
  log_p = np.asarray(jax.nn.log_softmax(logits))
  eps = 0.1
  smoothed = -np.mean([(1 - eps) * log_p[i, labels[i]] + eps / 3 * log_p[i].sum() for i in range(2)])
  np.testing.assert_allclose(train_lib.cross_entropy(logits, labels, label_smoothing=eps), smoothed, rtol=1e-6)
  # A specialist's padded class (masked logit ~ -3e38) gets no target mass: the loss stays ~1, not ~1e36.
  valid = jnp.array([True, True, False])
  masked = train_lib.mask_logits(logits, valid)
  log_q = np.asarray(jax.nn.log_softmax(masked))
  expected = -np.mean([(1 - eps) * log_q[i, labels[i]] + eps / 2 * log_q[i, :2].sum() for i in range(2)])
  got = train_lib.cross_entropy(masked, labels, label_smoothing=eps, valid=valid)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert got < 10


def test_mask_logits_excludes_padded_classes():
  logits = jnp.array([[0.0, 5.0, 1.0]])
  masked = train_lib.mask_logits(logits, jnp.array([True, False, True]))
  assert int(jnp.argmax(masked, -1)[0]) == 2
  assert float(jax.nn.softmax(masked)[0, 1]) == 0.0


def test_steps_lower_the_loss_on_a_fixed_batch():
  model, params, batch_stats = _setup()
  tx = train_lib.make_optimizer(_opt_cfg(learning_rate=0.05, warmup_steps=0, schedule='constant'), 20)
  parallel = train_lib.Parallel('pmap')
  step = parallel.compile(functools.partial(train_lib.train_step, apply_fn=model.apply, tx=tx))
  state = parallel.replicate(train_lib.create_train_state(params, batch_stats, tx))
  # One global batch of 16 whatever the device count: with more devices, more images to fit would slow the drop.
  batch = next(_batches(jax.local_device_count(), 16 // jax.local_device_count(), 1))
  losses = []
  for _ in range(15):
    state, metrics = step(state, batch, {})
    losses.append(float(parallel.unreplicate(metrics)['loss']))
  assert losses[-1] < 0.7 * losses[0], losses
  assert all(b < a for a, b in zip(losses, losses[1:])), losses
  assert int(parallel.unreplicate(state.step)) == 15


def _run_steps(kind: str, steps: int = 4):
  """Trains resnet_tiny for a few steps with ``kind`` parallelism on all local devices; returns host params."""
  model, params, batch_stats = _setup()
  tx = train_lib.make_optimizer(_opt_cfg(), steps)
  parallel = train_lib.Parallel(kind)
  step = parallel.compile(functools.partial(train_lib.train_step, apply_fn=model.apply, tx=tx))
  state = parallel.replicate(train_lib.create_train_state(params, batch_stats, tx))
  for batch in _batches(jax.local_device_count(), 4, steps):
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
  model, params, batch_stats = _setup()
  tx = train_lib.make_optimizer(_opt_cfg(), 10)
  traces = []

  def counted_step(*args):
    traces.append(1)
    return train_lib.train_step(*args, apply_fn=model.apply, tx=tx)

  parallel = train_lib.Parallel(kind)
  step = parallel.compile(counted_step)
  state = parallel.replicate(train_lib.create_train_state(params, batch_stats, tx))
  for batch in _batches(jax.local_device_count(), 2, 3):
    state, _ = step(state, parallel.shard_batch(batch), {})
  assert len(traces) == 1


def test_parallel_rejects_unknown_kind():
  with pytest.raises(ValueError, match='parallelism'):
    train_lib.Parallel('pjit')


def test_fit_writes_json_lines_tensorboard_events_and_a_profile_of_the_asked_steps(tmp_path):
  model, params, batch_stats = _setup()
  tx = train_lib.make_optimizer(_opt_cfg(), 6)
  parallel = train_lib.Parallel('pmap')
  step = parallel.compile(functools.partial(train_lib.train_step, apply_fn=model.apply, tx=tx))
  state = parallel.replicate(train_lib.create_train_state(params, batch_stats, tx))
  with train_lib.MetricWriter(str(tmp_path), 'vanilla') as writer:
    train_lib.fit(state, step_fn=step, parallel=parallel, frozen={}, name='vanilla', num_steps=6, global_batch=4,
                  train_iter=_batches(jax.local_device_count(), 4, 6), save_fn=lambda *a: None, writer=writer,
                  log_every=2, profile_steps=2, profile_dir=writer.profile_dir)
  logged = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert [r['step'] for r in logged] == [1, 2, 4, 6] and all(r['stage'] == 'vanilla' for r in logged)
  from tensorboardX.event_file_writer import event_pb2  # pylint: disable=g-import-not-at-top
  [events] = (tmp_path / 'tb' / 'vanilla').glob('events.out.tfevents.*')
  scalars = []
  for record in _tf_records(events.read_bytes()):
    event = event_pb2.Event.FromString(record)
    scalars += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
  loss = [(step, value) for tag, step, value in scalars if tag == 'train/loss']
  assert [s for s, _ in loss] == [1, 2, 4, 6]
  assert [v for _, v in loss] == pytest.approx([r['loss'] for r in logged])
  traces = list((tmp_path / 'profile' / 'vanilla').rglob('*.xplane.pb'))
  assert len(traces) == 1 and traces[0].stat().st_size > 0


def _tf_records(data: bytes):
  """The payloads of a TFRecord file (length, its CRC, payload, its CRC), read without TensorFlow."""
  pos = 0
  while pos < len(data):
    (length,) = struct.unpack('<Q', data[pos:pos + 8])
    yield data[pos + 12:pos + 12 + length]
    pos += 12 + length + 4


if __name__ == '__main__':
  globals()[sys.argv[1]]()
