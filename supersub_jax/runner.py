"""The stage runner: the training loop, progress and metric writing, resume, settings checks, saving and the finished
marker, written once for every network stage and every specialist.

A ``Job`` is one thing that trains into its own checkpoint directory: the vanilla network, the generalist, or one
specialist. ``run_job`` restores its newest intact step (``checkpoint.restore_latest``: corrupt steps are moved
aside), refuses a checkpoint made with other settings (``check_settings``), skips a finished job, trains the rest
with ``fit`` (the loop), evaluates, and writes the final step whose metadata carries the held-out metrics -- the
marker that the job is finished. ``load_finished`` is the read-only side, for the next stage, evaluate.py and
convert: the same checks, and an unfinished job is an error.

Stages say *what* trains (its state, step, data); this module says *how* a job is resumed and finished, and knows
nothing of what a stage's state holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp

from supersub_jax import checkpoint as ckpt
from supersub_jax import config as config_lib
from supersub_jax import files
from supersub_jax import runtime

PyTree = Any
FINISHED = 'test'  # meta key of a job's final step: its held-out metrics


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
    try:
      with open(self.path, 'a') as f:
        f.write(json.dumps(record) + '\n')
    except OSError as e:  # a full disk: name the file (a line cut short is dropped on resume)
      raise files.write_error(self.path, e) from e
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f'{split}/{k}', float(v), int(step))

  def resume_at(self, step: int) -> None:
    """Drops this stage's records after ``step`` (0: all of them), written by a run that was then killed: the
    resumed run writes them again, once."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path, 'rb') as f:  # bytes: a damaged line (not UTF-8) is one line to drop, not the whole file
      lines = f.readlines()
    keep, dropped = [], 0
    for line in lines:
      try:
        record = json.loads(line)
      except ValueError:  # a line cut short by a kill, or damaged (JSONDecodeError, UnicodeDecodeError)
        record = None
      if not isinstance(record, dict) or not isinstance(record.get('step', 0), (int, float)):
        dropped += bool(line.strip())
        continue
      if record.get('stage') != self.stage or record.get('step', 0) <= step:
        keep.append(json.dumps(record) + '\n')
    if dropped:
      logging.warning('%s: dropped %d line(s) that are not JSON records (cut short or damaged).', self.path, dropped)
    files.write_text(self.path, ''.join(keep))


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


class NonFiniteError(FloatingPointError):
  """A step produced a non-finite loss or state; nothing non-finite was saved."""


def fit(state: PyTree, *, step_fn: Callable, parallel: runtime.Parallel, frozen: PyTree, train_iter: Iterator,
        num_steps: int, global_batch: int, name: str, save_fn: Callable[[int, PyTree, bool], None],
        writer: MetricWriter | None = None, log_every: int = 50, checkpoint_every: int = 0,
        preemption: runtime.Preemption | None = None, profile_steps: int = 0, profile_dir: str | None = None,
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
  preemption = preemption or runtime.Preemption()
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
        raise runtime.Preempted(f'[{name}] preempted (SIGTERM): saved step {done}; rerun the same command to resume.')
  check(num_steps)
  return state


def eval_metrics(state: PyTree, *, eval_fn: Callable, parallel: runtime.Parallel, frozen: PyTree,
             batches: Iterator) -> dict[str, float]:
  """Runs a compiled ``eval_step`` over all ``batches`` -> {'loss', 'accuracy', 'count'}."""
  totals = {'loss_sum': 0.0, 'correct': 0.0, 'count': 0.0}
  for batch in batches:
    out = parallel.unreplicate(eval_fn(state, parallel.shard_batch(batch), frozen))
    for k in totals:
      totals[k] += float(out[k])
  count = max(totals['count'], 1.0)
  return {'loss': totals['loss_sum'] / count, 'accuracy': totals['correct'] / count, 'count': totals['count']}


# ----------------------------------------------------------------------------------------------------------------------
# Jobs: resume, settings checks, the finished marker


class SettingsMismatchError(ValueError):
  """A checkpoint was made with settings that differ from the current ones in a way that changes its meaning."""


@dataclasses.dataclass
class Job:
  """One network stage or one specialist.

  Attributes:
    name: for log lines and errors, e.g. 'vanilla' or 'specialist 3 monkey'.
    stage: its stage (``choices.STAGES``), whose config section it is checked against.
    directory: its orbax checkpoint directory.
    num_steps: its step budget.
    meta: JSON recorded in every checkpoint: 'config' (dict), 'hierarchy' (dict) and 'fingerprints' (name ->
      SHA-256 of a network it depends on), plus anything the stage wants kept.
    item_names: the checkpoint's items ('state', 'data', 'meta' and any extra item of the final step).
  """
  name: str
  stage: str
  directory: str
  num_steps: int
  meta: dict
  item_names: tuple[str, ...] = ('state', 'data', 'meta')


def fingerprint(params: PyTree, batch_stats: PyTree) -> str:
  """SHA-256 of a network's variables: what a later stage records of the network it was built on."""
  return ckpt.tree_sha256({'params': params, 'batch_stats': batch_stats})


def settings_differences(stored: Mapping[str, Any], config, job: Job) -> list[str]:
  """Every difference between a checkpoint's recorded settings and ``job``'s that changes the checkpoint's
  meaning: config fields (``config.meaning_differences``), the hierarchy, and the networks it was built on."""
  problems = config_lib.meaning_differences(stored.get('config') or {}, config, job.stage)
  if stored.get('hierarchy') is not None and stored['hierarchy'] != job.meta['hierarchy']:
    old, new = stored['hierarchy'], job.meta['hierarchy']
    problems.append(f'hierarchy: {old.get("name")!r} ({_hierarchy_summary(old)}) -> {new.get("name")!r} '
                    f'({_hierarchy_summary(new)})')
  for name, value in job.meta.get('fingerprints', {}).items():
    was = (stored.get('fingerprints') or {}).get(name)
    if was is not None and was != value:
      problems.append(f'{name} network: trained on {was[:12]}..., now {value[:12]}... (the {name} changed since)')
  return problems


def _hierarchy_summary(h: Mapping[str, Any]) -> str:
  supers = h.get('superclasses') or []
  return f'{len(supers)} superclasses: {", ".join(str(s.get("name")) for s in supers[:4])}{"..." * (len(supers) > 4)}'


def check_settings(stored_meta: Mapping[str, Any], step: int, *, config, job: Job) -> None:
  """Raises ``SettingsMismatchError`` listing every meaning-changing difference (see ``settings_differences``)."""
  problems = settings_differences(stored_meta, config, job)
  if problems:
    raise SettingsMismatchError(
        f'{job.directory} (step {step}) was trained with other settings ({len(problems)} differ, stored -> now):\n  '
        + '\n  '.join(problems) + '\nRun with the stored settings (train.py --config=... --config.field=stored '
        f'value), or use a fresh --workdir, or delete {job.directory} to retrain {job.name} with the new ones. '
        f'Which fields may change is documented in supersub_jax/config.py.')


def recorded_config(directory: str) -> dict | None:
  """The config a job's checkpoints in ``directory`` were trained with (its newest step whose metadata reads back),
  or None when it holds no step: a directory left empty by a run that failed before its first save backs nothing.
  Reads JSON only, never an array."""
  if not os.path.isdir(directory):
    return None
  manager = ckpt.make_manager(directory, create=False)
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      meta = ckpt.read_meta(directory, step)
    except Exception:  # pylint: disable=broad-except  (a damaged step: resuming falls back past it, so may this)
      continue
    if isinstance(meta, dict) and isinstance(meta.get('config'), dict):
      return meta['config']
  return None


def _not_finished(job: Job, step: int) -> str:
  return (f'{job.name} is not finished in {job.directory} (its latest intact step is {step}): run '
          f'`python train.py --config=... --workdir=...` with {job.stage!r} in config.stages to finish it.')


def load_finished(config, job: Job, *, target: PyTree | None,
                  extra: Mapping[str, PyTree | None] | None = None) -> ckpt.Restored:
  """The final step of a finished job, read-only (nothing is created or renamed); ``target``/``extra`` as in
  ``checkpoint.restore``.

  Raises FileNotFoundError (never trained), ValueError (not finished), ``SettingsMismatchError``, or
  ``CheckpointCorruptError`` (no intact step).
  """
  if not os.path.isdir(job.directory):
    raise FileNotFoundError(f'No {job.name} checkpoint under {job.directory}: run `python train.py --config=... '
                            f'--workdir=...` with {job.stage!r} in config.stages.')
  manager = ckpt.make_manager(job.directory, item_names=job.item_names, create=False)
  restored = ckpt.restore_latest(manager, target=target, extra=extra, with_data=False,
                                 check_meta=functools.partial(check_settings, config=config, job=job))
  if restored is None:
    raise FileNotFoundError(f'No {job.name} checkpoint under {job.directory}: run `python train.py --config=... '
                            f'--workdir=...` with {job.stage!r} in config.stages.')
  if FINISHED not in restored.meta:
    raise ValueError(_not_finished(job, restored.step))
  return restored


def _say(line: str) -> None:
  if jax.process_index() == 0:
    print(line, flush=True)


@dataclasses.dataclass
class Result:
  """A finished job: its final host state (None when it had finished before), held-out metrics and metadata."""
  state: PyTree | None
  metrics: dict
  meta: dict


def run_job(config, job: Job, *, fresh_state: Callable[[], PyTree], target: PyTree, train_iter: Iterator,
            step_fn: Callable, evaluate: Callable[[PyTree], dict], parallel: runtime.Parallel, frozen: PyTree,
            preemption: runtime.Preemption | None = None, writer: MetricWriter | None = None,
            finish: Callable[[PyTree, dict], tuple[dict, dict]] | None = None) -> Result:
  """Trains ``job`` to its budget, resuming where it stopped, or returns its stored result if it is finished.

  Args:
    fresh_state: builds the host TrainState of a first start (only called when there is no checkpoint).
    target: the expected TrainState (arrays or ShapeDtypeStructs), checked leaf by leaf against a checkpoint.
    train_iter: the job's grain iterator; its state is saved with every step and restored on resume.
    step_fn: the compiled train step; ``evaluate(replicated state) -> metrics`` runs the held-out evaluation.
    finish: ``finish(host_state, metrics) -> (extra items, extra meta)`` of the final step (e.g. the compressed
      delta of a specialist).
  Raises:
    ``SettingsMismatchError``, ``CheckpointCorruptError`` (no intact step), ``NonFiniteError``,
    ``runtime.Preempted`` (after saving).
  """
  manager = ckpt.make_manager(job.directory, max_to_keep=config.max_to_keep, item_names=job.item_names)
  restored = ckpt.restore_latest(manager, target=target, quarantine=True,
                                 check_meta=functools.partial(check_settings, config=config, job=job))
  if restored is None:
    state = fresh_state()
    if writer is not None:
      writer.resume_at(0)
  else:
    if FINISHED in restored.meta:
      _say(f'[{job.name}] finished before (step {restored.step}): skipped')
      return Result(None, restored.meta[FINISHED], restored.meta)
    if restored.step > job.num_steps:
      raise ValueError(f'{job.directory} holds step {restored.step}, beyond the budget of {job.num_steps} steps: '
                       'restore the budget it was started with, or use a fresh --workdir.')
    state = restored.state
    if restored.data:
      train_iter.set_state(restored.data)
    if writer is not None:
      writer.resume_at(restored.step)
    _say(f'[{job.name}] resuming from step {restored.step}')

  def save_fn(step, rstate, force):
    ckpt.save(manager, step, state=parallel.unreplicate(rstate), data=train_iter.get_state(), meta=job.meta,
              force=force)

  rstate = fit(parallel.replicate(state), step_fn=step_fn, parallel=parallel, frozen=frozen,
                         train_iter=train_iter, num_steps=job.num_steps, global_batch=config.batch_size,
                         name=job.name, save_fn=save_fn, writer=writer, log_every=config.log_every_steps,
                         checkpoint_every=config.checkpoint_every_steps, preemption=preemption,
                         profile_steps=int(config.profile_steps), profile_dir=writer and writer.profile_dir)
  metrics = evaluate(rstate)
  host = parallel.unreplicate(rstate)
  extra_items, extra_meta = finish(host, metrics) if finish else ({}, {})
  meta = {**job.meta, **extra_meta, FINISHED: metrics}
  ckpt.save(manager, job.num_steps, state=host, data=train_iter.get_state(), meta=meta, extra=extra_items)
  if preemption is not None and preemption.requested:
    raise runtime.Preempted(f'[{job.name}] preempted (SIGTERM) at its last step: saved it finished; rerun the same '
                              'command to go on with the next one.')
  return Result(host, metrics, meta)
