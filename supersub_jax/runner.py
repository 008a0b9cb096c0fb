"""The stage runner: resume, settings checks, saving and the finished marker, written once for every network stage
and every specialist.

A ``Job`` is one thing that trains into its own checkpoint directory: the vanilla network, the generalist, or one
specialist. ``run_job`` restores its newest intact step (``checkpoint.restore_latest``: corrupt steps are moved
aside), refuses a checkpoint made with other settings (``check_settings``), skips a finished job, trains the rest
with ``train.fit``, evaluates, and writes the final step whose metadata carries the held-out metrics -- the
marker that the job is finished. ``load_finished`` is the read-only side, for the next stage, evaluate.py and
convert: the same checks, and an unfinished job is an error.

Stages say *what* trains (its state, step, data); this module says *how* a job is resumed and finished, and knows
nothing of what a stage's state holds.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Iterator, Mapping

import jax

from supersub_jax import checkpoint as ckpt
from supersub_jax import config as config_lib
from supersub_jax import train as train_lib

PyTree = Any
FINISHED = 'test'  # meta key of a job's final step: its held-out metrics


class SettingsMismatchError(ValueError):
  """A checkpoint was made with settings that differ from the current ones in a way that changes its meaning."""


@dataclasses.dataclass
class Job:
  """One network stage or one specialist.

  Attributes:
    name: for log lines and errors, e.g. 'vanilla' or 'specialist 3 monkey'.
    stage: its stage (``stages.STAGES``), whose config section it is checked against.
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
            step_fn: Callable, evaluate: Callable[[PyTree], dict], parallel: train_lib.Parallel, frozen: PyTree,
            preemption: train_lib.Preemption | None = None, writer: train_lib.MetricWriter | None = None,
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
    ``SettingsMismatchError``, ``CheckpointCorruptError`` (no intact step), ``train.NonFiniteError``,
    ``train.Preempted`` (after saving).
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

  rstate = train_lib.fit(parallel.replicate(state), step_fn=step_fn, parallel=parallel, frozen=frozen,
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
    raise train_lib.Preempted(f'[{job.name}] preempted (SIGTERM) at its last step: saved it finished; rerun the same '
                              'command to go on with the next one.')
  return Result(host, metrics, meta)
