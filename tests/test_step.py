"""The pure step (supersub_jax.step): schedules, optimizer masks, losses, and steps that lower the loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from supersub_jax import runtime
from supersub_jax import step as step_lib
from tiny_nets import batches, opt_cfg, setup


def test_weight_decay_mask_skips_norm_and_bias():
  _, params, _ = setup()
  mask = step_lib.weight_decay_mask(params)
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert flat["['head']['kernel']"] and not flat["['head']['bias']"]
  assert not any(v for k, v in flat.items() if 'scale' in k)
  assert any(v for k, v in flat.items() if 'conv' in k.lower() and 'kernel' in k)


@pytest.mark.parametrize('kind', ['cosine', 'step', 'constant'])
def test_schedule_warmup_then_decay(kind):
  sched = step_lib.make_schedule(opt_cfg(schedule=kind, warmup_steps=10), 100)
  assert float(sched(0)) == 0.0
  assert float(sched(10)) == pytest.approx(0.1, rel=1e-5)
  assert float(sched(99)) <= 0.1 + 1e-7
  if kind != 'constant':
    assert float(sched(99)) < 0.05


def test_unknown_optimizer_and_schedule_errors():
  with pytest.raises(ValueError, match='optimizer'):
    step_lib.make_optimizer(opt_cfg(optimizer='lion'), 10)
  with pytest.raises(ValueError, match='schedule'):
    step_lib.make_schedule(opt_cfg(schedule='linear'), 10)


def test_cross_entropy_matches_the_formula_with_smoothing_over_valid_classes():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
  labels = jnp.array([0, 1])
  plain = step_lib.cross_entropy(logits, labels)
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  np.testing.assert_allclose(plain, expected, rtol=1e-6)
  log_p = np.asarray(jax.nn.log_softmax(logits))
  eps = 0.1
  smoothed = -np.mean([(1 - eps) * log_p[i, labels[i]] + eps / 3 * log_p[i].sum() for i in range(2)])
  np.testing.assert_allclose(step_lib.cross_entropy(logits, labels, label_smoothing=eps), smoothed, rtol=1e-6)
  # A specialist's padded class (masked logit ~ -3e38) gets no target mass: the loss stays ~1, not ~1e36.
  valid = jnp.array([True, True, False])
  masked = step_lib.mask_logits(logits, valid)
  log_q = np.asarray(jax.nn.log_softmax(masked))
  expected = -np.mean([(1 - eps) * log_q[i, labels[i]] + eps / 2 * log_q[i, :2].sum() for i in range(2)])
  got = step_lib.cross_entropy(masked, labels, label_smoothing=eps, valid=valid)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert got < 10


def test_mask_logits_excludes_padded_classes():
  logits = jnp.array([[0.0, 5.0, 1.0]])
  masked = step_lib.mask_logits(logits, jnp.array([True, False, True]))
  assert int(jnp.argmax(masked, -1)[0]) == 2
  assert float(jax.nn.softmax(masked)[0, 1]) == 0.0


def test_steps_lower_the_loss_on_a_fixed_batch():
  model, params, batch_stats = setup()
  tx = step_lib.make_optimizer(opt_cfg(learning_rate=0.05, warmup_steps=0, schedule='constant'), 20)
  parallel = runtime.Parallel('pmap')
  step = parallel.compile(functools.partial(step_lib.train_step, apply_fn=model.apply, tx=tx))
  state = parallel.replicate(step_lib.create_train_state(params, batch_stats, tx))
  # One global batch of 16 whatever the device count: with more devices, more images to fit would slow the drop.
  batch = next(batches(jax.local_device_count(), 16 // jax.local_device_count(), 1))
  losses = []
  for _ in range(15):
    state, metrics = step(state, batch, {})
    losses.append(float(parallel.unreplicate(metrics)['loss']))
  assert losses[-1] < 0.7 * losses[0], losses
  assert all(b < a for a, b in zip(losses, losses[1:])), losses
  assert int(parallel.unreplicate(state.step)) == 15


def test_the_pure_step_imports_nothing_of_the_host_and_names_the_axis_the_runtime_maps():
  import ast  # pylint: disable=g-import-not-at-top
  with open(step_lib.__file__) as f:
    tree = ast.parse(f.read())
  package = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
             and node.module and node.module.startswith('supersub_jax')}
  package |= {f'supersub_jax.{a.name}' for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
              and node.module == 'supersub_jax' for a in node.names}
  assert package <= {'supersub_jax', 'supersub_jax.choices', 'supersub_jax.decide'}, package  # decide: pure jnp
  assert runtime.AXIS is step_lib.AXIS
