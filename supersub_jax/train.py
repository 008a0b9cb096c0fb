"""Train state, optimizer, the per-device train step, its pmap / shard_map compilations, and the training loop.

One step function serves every stage. What differs between the vanilla network, the generalist and a specialist is
only *which* pytree is trained and how the model's parameters are formed from it:

* vanilla / superclass: the trainable pytree *is* the model's ``params``;
* specialists: the trainable pytree is ``{'delta': ..., 'head': ...}`` and the model's ``params`` are
  ``materialize(base, delta, masks) | {'head': head}``, formed inside the compiled step, so a specialist's dense
  weights exist only transiently. The frozen ``base`` is a separate, non-donated argument held once per device.

``make_params_fn`` picks between the two; the step itself is written once (``train_step``) and compiled either with
``jax.pmap`` (the default) or with ``jax.shard_map`` over a 1-D ``Mesh`` (``config.parallelism = 'shard_map'``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import time
from typing import Any, Callable, Iterator, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = 'batch'  # the named device axis of data parallelism, in pmap and in shard_map alike

PyTree = Any


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
  if kind == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(num_steps, warmup + 1))
  if kind == 'step':
    boundaries = {int(f * num_steps): float(cfg.get('decay_factor', 0.1)) for f in cfg.get('decay_at', (0.5, 0.75))}
    decay = optax.piecewise_constant_schedule(lr, {k - warmup: v for k, v in boundaries.items()})
  elif kind == 'constant':
    decay = optax.constant_schedule(lr)
  else:
    raise ValueError(f"Unknown learning-rate schedule {kind!r}: use 'cosine', 'step' or 'constant'.")
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
  if name == 'sgd':
    return optax.chain(optax.add_decayed_weights(wd, mask=weight_decay_mask),
                       optax.sgd(schedule, momentum=cfg.get('momentum', 0.9), nesterov=cfg.get('nesterov', False)))
  if name == 'adamw':
    return optax.adamw(schedule, b1=cfg.get('b1', 0.9), b2=cfg.get('b2', 0.999), weight_decay=wd,
                       mask=weight_decay_mask)
  raise ValueError(f"Unknown optimizer {name!r}: use 'sgd' or 'adamw'.")


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
  """Sets logits of padded classes (logit_mask False) to a large negative number. logits [B, C], mask bool [C]."""
  if logit_mask is None:
    return logits
  return jnp.where(logit_mask, logits, jnp.finfo(logits.dtype).min / 2)


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


# ----------------------------------------------------------------------------------------------------------------------
# Parallel compilation: pmap (default) or shard_map over a Mesh, with the same per-device function.


@dataclasses.dataclass(frozen=True)
class Parallel:
  """How per-device functions are compiled and how host data is placed.

  ``kind='pmap'``: state and frozen pytrees carry a leading axis of local devices; batches are
  [local_devices, per_device_batch, ...] as the input pipeline yields them.
  ``kind='shard_map'``: state and frozen pytrees are global arrays replicated over a 1-D mesh of all devices; batches
  are assembled into global arrays sharded along their batch axis.
  """
  kind: str = 'pmap'

  def __post_init__(self):
    if self.kind not in ('pmap', 'shard_map'):
      raise ValueError(f"config.parallelism={self.kind!r}: use 'pmap' or 'shard_map'.")

  @functools.cached_property
  def mesh(self) -> Mesh:
    return Mesh(np.asarray(jax.devices()), (AXIS,))

  @functools.cached_property
  def _pmap_sharding(self):
    # pmap's own output layout (leading axis over the local devices), read off one identity pmap and reused for
    # leaves of any shape. Its axis name must be the compiled functions' own: pmap keys its cache on the inputs'
    # sharding, mesh axis names included, so state placed under another name would compile the step a second time
    # when its own output comes back as the next input.
    return jax.pmap(lambda y: y, axis_name=AXIS)(np.zeros(jax.local_device_count(), np.float32)).sharding

  def compile(self, fn: Callable, *, donate_state: bool = True) -> Callable:
    """Compiles ``fn(state, batch, frozen)`` written for one device."""
    if self.kind == 'pmap':
      return jax.pmap(fn, axis_name=AXIS, donate_argnums=(0,) if donate_state else ())
    # check_vma=False keeps pmap's semantics: the gradient of a replicated parameter computed inside the body is the
    # per-device gradient, which train_step then averages with pmean. (With check_vma=True JAX would insert the psum
    # itself when transposing the implicit broadcast, and the pmean would leave a sum over devices.)
    mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), P(AXIS), P()), out_specs=P(), check_vma=False)
    return jax.jit(mapped, donate_argnums=(0,) if donate_state else ())

  def replicate(self, tree: PyTree) -> PyTree:
    """Host pytree -> the layout ``compile``d functions take for state and frozen arguments."""
    if self.kind == 'pmap':
      n = jax.local_device_count()
      return jax.tree.map(
          lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), self._pmap_sharding), tree)
    sharding = NamedSharding(self.mesh, P())
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)

  def unreplicate(self, tree: PyTree) -> PyTree:
    """One host copy (numpy) of a replicated pytree."""
    if self.kind == 'pmap':  # each device's shard keeps a leading axis of size 1
      return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)).reshape(x.shape[1:]), tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)

  def shard_batch(self, batch: Mapping[str, np.ndarray]) -> Mapping[str, jax.Array]:
    """Host batch [local_devices, per_device_batch, ...] -> device arrays in the layout of the compiled step.

    The copy is dispatched here, asynchronously, not inside the step's call: a pmapped call given numpy arrays
    copies them synchronously on every call.
    """
    if self.kind == 'pmap':
      return {k: jax.device_put(v, self._pmap_sharding) for k, v in batch.items()}
    sharding = NamedSharding(self.mesh, P(AXIS))
    return {k: jax.make_array_from_process_local_data(sharding, v.reshape((-1,) + v.shape[2:]))
            for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------------------------------
# Distributed set-up


def initialize_distributed(cfg) -> None:
  """``jax.distributed.initialize`` from ``config.distributed`` (no-op unless enabled).

  With ``coordinator_address`` empty, JAX auto-detects the cluster (Cloud TPU, SLURM, ...). On CPU, gloo collectives
  are selected so that multi-process pmap works.
  """
  if cfg is None or not cfg.get('enabled', False):
    return
  if jax.distributed.is_initialized():
    return
  if cfg.get('cpu_collectives', ''):
    jax.config.update('jax_cpu_collectives_implementation', cfg.cpu_collectives)
  kwargs = {}
  if cfg.get('coordinator_address', ''):
    kwargs = dict(coordinator_address=cfg.coordinator_address, num_processes=int(cfg.num_processes),
                  process_id=int(cfg.process_id))
  if cfg.get('local_device_ids', None):
    kwargs['local_device_ids'] = list(cfg.local_device_ids)
  jax.distributed.initialize(**kwargs)


def initialize_runtime(config) -> None:
  """What every entry point does before any other JAX call: ``jax.distributed`` (``config.distributed``) and XLA's
  persistent compilation cache (``config.compilation_cache_dir``; rerunning a command then loads its compiled
  programs instead of compiling them again, e.g. about 10 s per ResNet initialisation on a 2-core CPU)."""
  initialize_distributed(config.distributed)
  cache = config.get('compilation_cache_dir', '')
  if cache and not jax.config.jax_compilation_cache_dir:  # JAX_COMPILATION_CACHE_DIR in the environment wins
    jax.config.update('jax_compilation_cache_dir', os.path.abspath(os.path.expanduser(cache)))


# ----------------------------------------------------------------------------------------------------------------------
# The loop


class MetricWriter:
  """Writes metrics as JSON lines (``<workdir>/metrics.jsonl``) and TensorBoard event files
  (``<workdir>/tb/<stage>``, tensorboardX) on process 0. ``profile_dir`` is where ``fit`` puts a profiler trace of
  this stage (``config.profile_steps``). Use it as a context manager: leaving it writes out the event files
  (tensorboardX writes them from a thread, every 10 s before that)."""

  def __init__(self, workdir: str, stage: str):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top  (a slow import, needed late)
    self.stage = stage
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.profile_dir = os.path.join(workdir, 'profile', stage)
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._tb = SummaryWriter(os.path.join(workdir, 'tb', stage), flush_secs=10)

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {'stage': self.stage, 'split': split, 'step': int(step), 'time': round(time.time(), 3),
              **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f'{split}/{k}', float(v), int(step))

  def resume_at(self, step: int) -> None:
    """Drops this stage's records after ``step`` (0: all of them), written by a run that was then killed: the
    resumed run writes them again, once."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    keep = []
    for line in lines:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:  # a line cut short by a kill
        continue
      if record.get('stage') != self.stage or record.get('step', 0) <= step:
        keep.append(json.dumps(record) + '\n')
    tmp = f'{self.path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
      f.writelines(keep)
    os.replace(tmp, self.path)


class Progress:
  """A periodic log line: step, loss, accuracy, images/s and ETA (process 0 only)."""

  def __init__(self, name: str, total_steps: int, start_step: int, global_batch: int, every: int):
    self.name, self.total, self.global_batch, self.every = name, total_steps, global_batch, max(every, 1)
    self.start_step = start_step
    self.t0 = None
    self.t_last, self.step_last = None, start_step

  def update(self, step: int, metrics: Mapping[str, float]) -> str | None:
    now = time.perf_counter()
    if self.t0 is None:  # the first step includes compilation: time from after it.
      self.t0, self.t_last, self.step_last = now, now, step
      return None
    if step % self.every and step != self.total:
      return None
    ips = (step - self.step_last) * self.global_batch / max(now - self.t_last, 1e-9)
    rate = (step - self.start_step - 1) / max(now - self.t0, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else float('nan')
    self.t_last, self.step_last = now, step
    line = (f'[{self.name}] step {step}/{self.total} loss {metrics["loss"]:.4f} acc {metrics["accuracy"]:.4f} '
            f'{ips:,.0f} img/s ETA {eta:,.0f}s')
    if metrics.get('skipped'):
      line += f' ({int(metrics["skipped"])} non-finite steps skipped)'
    if jax.process_index() == 0:
      logging.info(line)
      print(line, flush=True)
    return line


PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"; a scheduler can requeue on it, unlike a crash's 1


class Preempted(Exception):
  """Raised after a SIGTERM once the checkpoint of the current step is saved (entry points exit with
  ``PREEMPTED_EXIT_CODE``)."""


class NonFiniteError(FloatingPointError):
  """A step produced a non-finite loss or state; nothing non-finite was saved."""


class Preemption:
  """SIGTERM -> save at the same step on every process, then stop.

  One process: a SIGTERM handler sets a flag. Several (``jax.distributed`` initialised): JAX's preemption service
  (which installs its own SIGTERM notifier, so no Python handler is set) propagates a notice received by any process
  to all, and ``reached_preemption_sync_point`` answers True at the same step everywhere. Its step ids must grow
  over the whole process, across stages and specialists, so ``reached`` counts steps itself. Use one object for a
  whole run (``with Preemption() as p``), so that a signal between two stages is not lost.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._count = 0
    self._multiprocess = jax.process_count() > 1

  def __enter__(self):
    if self._multiprocess:
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # not in the main thread: no handler, nothing to restore.
      self._previous = None
    return self

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self) -> bool:
    """Called once per step, after it: whether to save now and stop."""
    self._count += 1
    if self._multiprocess:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(self._count)
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False


def fit(state: PyTree, *, step_fn: Callable, parallel: Parallel, frozen: PyTree, train_iter: Iterator,
        num_steps: int, global_batch: int, name: str, save_fn: Callable[[int, PyTree, bool], None],
        writer: MetricWriter | None = None, log_every: int = 50, checkpoint_every: int = 0,
        preemption: Preemption | None = None, profile_steps: int = 0, profile_dir: str | None = None,
        hooks: tuple[Callable[[int, PyTree], PyTree], ...] = ()) -> PyTree:
  """Runs ``step_fn`` from ``state.step`` to ``num_steps``.

  Args:
    state: the replicated TrainState (layout of ``parallel``).
    step_fn: the compiled ``(state, batch, frozen) -> (state, metrics)`` (``train_step``: metrics carry 'finite').
    train_iter: host batches [local_devices, per_device_batch, ...].
    save_fn: ``save_fn(step, state, force)`` writes a checkpoint (the caller owns the manager and the data iterator).
    preemption: the run's ``Preemption`` (default: one for this call only).
    profile_steps, profile_dir: with ``profile_steps > 0``, a ``jax.profiler`` trace of that many steps is written
      to ``profile_dir`` (TensorBoard's profile plugin or Perfetto read it), starting two steps after ``state.step``
      so that compilation stays out of it.
    hooks: ``hook(step, state) -> state`` called before each step (tests use it to send signals).
  Returns:
    the final replicated state, all finite. Raises ``Preempted`` after saving if SIGTERM arrived, and
    ``NonFiniteError`` (before any save of a non-finite state) when a step was not finite.
  """
  start = int(parallel.unreplicate(state.step))
  progress = Progress(name, num_steps, start, global_batch, log_every)
  finite, skipped = None, None  # device accumulators: min of 'finite', sum of 'skipped'
  checked, last_saved = start, start

  def check(done: int) -> None:
    nonlocal checked
    if finite is not None and float(parallel.unreplicate(finite)) < 1.0:
      raise NonFiniteError(
          f'[{name}] the loss or the parameters became non-finite between step {checked} and step {done}; '
          f'nothing after step {last_saved} was saved (the last good checkpoint is step {last_saved}'
          f'{"" if last_saved else ", i.e. none"}). Lower the learning rate or check the data, then rerun the same '
          "command; or set --config.nonfinite=skip to skip such steps.")
    checked = done

  owned = preemption is None
  preemption = preemption or Preemption()
  trace = (start + 2, start + 2 + profile_steps) if profile_steps > 0 and profile_dir else (-1, -1)
  tracing = False
  with (preemption if owned else contextlib.nullcontext()), contextlib.ExitStack() as stack:
    for step in range(start, num_steps):
      for hook in hooks:
        state = hook(step, state)
      if step == trace[0]:
        jax.block_until_ready(state)
        jax.profiler.start_trace(profile_dir)
        tracing = True
        stack.callback(lambda: tracing and jax.profiler.stop_trace())  # also when the loop ends early
      batch = parallel.shard_batch(next(train_iter))
      state, metrics = step_fn(state, batch, frozen)
      if tracing and step + 1 == trace[1]:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        tracing = False
      finite = metrics['finite'] if finite is None else jnp.minimum(finite, metrics['finite'])
      skipped = metrics['skipped'] if skipped is None else skipped + metrics['skipped']
      done = step + 1
      if done % max(log_every, 1) == 0 or done == num_steps or done == start + 1:
        check(done)
        host_metrics = {k: float(v) for k, v in parallel.unreplicate(
            {'loss': metrics['loss'], 'accuracy': metrics['accuracy'], 'skipped': skipped}).items()}
        progress.update(done, host_metrics)
        if writer is not None:
          writer.write(done, 'train', host_metrics)
      save_now = bool(checkpoint_every) and done % checkpoint_every == 0 and done != num_steps
      if preemption.reached():
        preemption.requested = True  # also at the last step: the caller stops after its final save
      stop = preemption.requested and done < num_steps
      if save_now or stop:
        check(done)
        save_fn(done, state, stop)
        last_saved = done
      if stop:
        raise Preempted(f'[{name}] preempted (SIGTERM): saved step {done}; rerun the same command to resume.')
  check(num_steps)
  return state


def evaluate(state: PyTree, *, eval_fn: Callable, parallel: Parallel, frozen: PyTree,
             batches: Iterator) -> dict[str, float]:
  """Runs a compiled ``eval_step`` over all ``batches`` -> {'loss', 'accuracy', 'count'}."""
  totals = {'loss_sum': 0.0, 'correct': 0.0, 'count': 0.0}
  for batch in batches:
    out = parallel.unreplicate(eval_fn(state, parallel.shard_batch(batch), frozen))
    for k in totals:
      totals[k] += float(out[k])
  count = max(totals['count'], 1.0)
  return {'loss': totals['loss_sum'] / count, 'accuracy': totals['correct'] / count, 'count': totals['count']}
