"""The pure, jitted part of training: TrainState, optimizer, losses, and the per-device train and eval steps.

One step function serves every stage. What differs between the vanilla network, the generalist and a specialist is
only *which* pytree is trained and how the model's parameters are formed from it:

* vanilla / superclass: the trainable pytree *is* the model's ``params``;
* specialists: the trainable pytree is ``{'delta': ..., 'head': ...}`` and the model's ``params`` are
  ``materialize(base, delta, masks) | {'head': head}``, formed inside the compiled step, so a specialist's dense
  weights exist only transiently. The frozen ``base`` is a separate, non-donated argument held once per device.

A ``params_fn`` picks between the two (``identity_params`` here; the specialists' in ``supersub_jax.specialists``).
The step is written once, for one device, with collectives over the named axis ``AXIS``;
``supersub_jax.runtime.Parallel`` compiles it with ``jax.pmap`` or ``jax.shard_map``. Nothing here touches files,
signals or the clock.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

from supersub_jax.choices import OPTIMIZERS, SCHEDULES
from supersub_jax.decide import NEG_LOGIT

PyTree = Any
AXIS = 'batch'  # the named device axis of data parallelism (the step's collectives), in pmap and shard_map alike


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, as one pytree (checkpointed whole).

  Attributes:
    step: int32 [] number of optimizer updates applied.
    params: the trainable pytree (model params, or ``{'delta', 'head'}`` for a specialist).
    batch_stats: BatchNorm running statistics of the model (float32).
    opt_state: optax state of ``params``.
    masks: sparsity masks of the delta (float32 0/1, same structure as ``params['delta']``), or None.
  """
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  masks: PyTree = None


def create_train_state(params: PyTree, batch_stats: PyTree, tx: optax.GradientTransformation,
                       masks: PyTree = None) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), masks=masks)


# ----------------------------------------------------------------------------------------------------------------------
# Optimizer


def make_schedule(cfg, num_steps: int) -> optax.Schedule:
  """Linear warm-up then ``cfg.schedule`` decay ('cosine', 'step' or 'constant') of ``cfg.learning_rate``.

  'step' multiplies by ``cfg.get('decay_factor', 0.1)`` at each fraction in ``cfg.get('decay_at', (0.5, 0.75))`` of
  ``num_steps``.
  """
  lr = float(cfg.learning_rate)
  warmup = int(min(cfg.get('warmup_steps', 0), max(num_steps - 1, 0)))
  kind = cfg.get('schedule', 'cosine')
  if kind not in SCHEDULES:
    raise ValueError(f'Unknown learning-rate schedule {kind!r}: use one of {SCHEDULES}.')
  if kind == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(num_steps, warmup + 1))
  if kind == 'step':
    boundaries = {int(f * num_steps): float(cfg.get('decay_factor', 0.1)) for f in cfg.get('decay_at', (0.5, 0.75))}
    decay = optax.piecewise_constant_schedule(lr, {k - warmup: v for k, v in boundaries.items()})
  else:  # 'constant'
    decay = optax.constant_schedule(lr)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def weight_decay_mask(params: PyTree) -> PyTree:
  """True for kernels (ndim > 1); BatchNorm scales/biases and dense biases are not decayed."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(cfg, num_steps: int) -> optax.GradientTransformation:
  """SGD with momentum (optionally Nesterov) or AdamW, with the schedule of ``make_schedule``.

  Weight decay (``cfg.weight_decay``) is applied to kernels only (see ``weight_decay_mask``).
  """
  schedule = make_schedule(cfg, num_steps)
  wd = float(cfg.get('weight_decay', 0.0))
  name = cfg.get('optimizer', 'sgd')
  if name not in OPTIMIZERS:
    raise ValueError(f'Unknown optimizer {name!r}: use one of {OPTIMIZERS}.')
  if name == 'sgd':
    return optax.chain(optax.add_decayed_weights(wd, mask=weight_decay_mask),
                       optax.sgd(schedule, momentum=cfg.get('momentum', 0.9), nesterov=cfg.get('nesterov', False)))
  return optax.adamw(schedule, b1=cfg.get('b1', 0.9), b2=cfg.get('b2', 0.999), weight_decay=wd,
                     mask=weight_decay_mask)


# ----------------------------------------------------------------------------------------------------------------------
# Loss and the step


def cross_entropy(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0,
                  valid: jax.Array | None = None) -> jax.Array:
  """Mean softmax cross-entropy. logits float32 [B, C], labels int32 [B] -> float32 [].

  ``label_smoothing`` moves that much of the target mass uniformly onto the *valid* classes (``valid`` bool [C];
  default all): a padded class of a specialist's head (logit ~ -3e38) given target mass would make the loss ~1e36.
  """
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    valid = jnp.ones((num_classes,), bool) if valid is None else valid
    uniform = valid.astype(targets.dtype) / jnp.sum(valid)
    targets = (1.0 - label_smoothing) * targets + label_smoothing * uniform
  return optax.softmax_cross_entropy(logits, targets).mean()


def all_finite(tree: PyTree) -> jax.Array:
  """bool []: every floating-point entry of ``tree`` is finite."""
  leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.stack(leaves).all() if leaves else jnp.array(True)


def mask_logits(logits: jax.Array, logit_mask: jax.Array | None) -> jax.Array:
  """Sets logits of padded classes (logit_mask False) to ``decide.NEG_LOGIT``. logits float32[B, C], mask bool [C]."""
  if logit_mask is None:
    return logits
  return jnp.where(logit_mask, logits, jnp.asarray(NEG_LOGIT, logits.dtype))


ParamsFn = Callable[[PyTree, PyTree, PyTree], PyTree]


def identity_params(trainable: PyTree, frozen: PyTree, masks: PyTree) -> PyTree:
  """The vanilla and superclass stages: the trainable pytree is the model's params."""
  del frozen, masks
  return trainable


def train_step(state: TrainState, batch: Mapping[str, jax.Array], frozen: PyTree, *, apply_fn: Callable,
               tx: optax.GradientTransformation, params_fn: ParamsFn = identity_params,
               label_smoothing: float = 0.0, logit_mask: jax.Array | None = None,
               post_update: Callable[[TrainState], TrainState] | None = None, skip_nonfinite: bool = False,
               axis_name: str = AXIS) -> tuple[TrainState, dict[str, jax.Array]]:
  """One per-device optimizer step; gradients and BatchNorm statistics are averaged over ``axis_name``.

  Args:
    state: this device's (replicated) TrainState.
    batch: 'image' float [b, H, W, C] and 'label' int32 [b] for this device.
    frozen: pytree held fixed (a specialist's base params; ``{}`` otherwise).
    apply_fn: the flax model's ``apply``.
    params_fn: (trainable, frozen, masks) -> model params.
    logit_mask: bool [C] of valid classes (specialist heads are padded to the largest superclass), or None.
    post_update: applied to the new state, e.g. re-applying sparsity masks so masked entries stay exactly zero.
    skip_nonfinite: when the loss or the updated state is not finite on any device, keep the old state (only the
      step counter advances) instead of applying the update.
  Returns:
    (new state, metrics) with metrics 'loss', 'accuracy' float32 [] averaged over all devices, 'finite' float32 []
    (1.0 when the loss and the updated state are finite on every device) and 'skipped' float32 [] (1.0 when
    ``skip_nonfinite`` dropped this update).
  """

  def loss_fn(trainable):
    params = params_fn(trainable, frozen, state.masks)
    logits, new_vars = apply_fn({'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=True,
                                mutable=['batch_stats'])
    logits = mask_logits(logits, logit_mask)
    loss = cross_entropy(logits, batch['label'], label_smoothing=label_smoothing, valid=logit_mask)
    return loss, (logits, new_vars['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, axis_name)
  batch_stats = jax.lax.pmean(batch_stats, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
  if post_update is not None:
    new_state = post_update(new_state)
  # One flag per step, on device: the loop checks it before every log and save without a host sync per step.
  finite = jax.lax.pmin((jnp.isfinite(loss) & all_finite((new_state.params, new_state.batch_stats,
                                                           new_state.opt_state))).astype(jnp.float32), axis_name)
  skipped = jnp.zeros((), jnp.float32)
  if skip_nonfinite:
    keep = finite > 0
    new_state = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_state,
                             state.replace(step=state.step + 1))
    skipped, finite = 1.0 - finite, jnp.ones((), jnp.float32)  # the state stays finite
  accuracy = (jnp.argmax(logits, -1) == batch['label']).mean()
  metrics = jax.lax.pmean({'loss': loss, 'accuracy': accuracy}, axis_name)
  return new_state, {**metrics, 'finite': finite, 'skipped': skipped}


def eval_step(state: TrainState, batch: Mapping[str, jax.Array], frozen: PyTree, *, apply_fn: Callable,
              params_fn: ParamsFn = identity_params, logit_mask: jax.Array | None = None,
              axis_name: str = AXIS) -> dict[str, jax.Array]:
  """Summed eval metrics over all devices: 'loss_sum', 'correct', 'count' float32 [] ('mask' weights padding)."""
  params = params_fn(state.params, frozen, state.masks)
  logits = apply_fn({'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=False)
  logits = mask_logits(logits, logit_mask)
  weights = batch.get('mask', jnp.ones(batch['label'].shape, jnp.float32))
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
  return jax.lax.psum({'loss_sum': (losses * weights).sum(), 'correct': (correct * weights).sum(),
                       'count': weights.sum()}, axis_name)
