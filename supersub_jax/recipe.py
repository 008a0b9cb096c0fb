"""The Super-Sub recipe: check the config, prepare the data once, and run ``config.stages`` in order.

  from supersub_jax import recipe
  recipe.run(config, workdir)   # what train.py does

Everything that can be known wrong before training is checked first (``preflight.check``: the config check and
this machine), so a bad config fails in seconds with every problem listed, not after hours of an earlier stage. The
config's setup (hierarchy, models, data: ``setup_of``) is built once here and passed down to the stages.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from supersub_jax import config as config_lib
from supersub_jax import locks
from supersub_jax import preflight
from supersub_jax import runner
from supersub_jax import runtime
from supersub_jax import setup_of
from supersub_jax import specialists
from supersub_jax import stages
from supersub_jax import workdir as workdir_lib
from supersub_jax.choices import NETWORK_STAGES, SPECIALIST_STAGES, STAGES


def _job_directories(workdir: str, stage: str) -> list[str]:
  """The checkpoint directories of ``stage``'s jobs in ``workdir``: the stage's own, or one per specialist."""
  root = workdir_lib.stage_dir(workdir, stage)
  if stage in NETWORK_STAGES or not os.path.isdir(root):
    return [root]
  return sorted(os.path.join(root, name) for name in os.listdir(root) if os.path.isdir(os.path.join(root, name)))


def check_previous_run(config, workdir: str) -> None:
  """Before anything is written: the current settings against those the checkpoints in ``workdir`` record, for
  every stage that has one. Only checkpoints count: a config.json or a stage directory left by a run that failed
  before its first save backs nothing, and must not block the corrected command. Each job checks its own checkpoint
  again when it resumes (with the networks it was built on); this makes a wrong rerun fail at once, with every
  difference listed, and leaves config.json as it was."""
  where: dict[str, list[str]] = {}  # difference -> the stages whose checkpoints it concerns
  for stage in STAGES:
    for directory in _job_directories(workdir, stage):
      stored = runner.recorded_config(directory)
      if stored is None:
        continue
      for d in config_lib.meaning_differences(stored, config, stage):
        if stage not in where.setdefault(d, []):
          where[d].append(stage)
  problems = [f'{d} (checkpoints of {", ".join(s)})' for d, s in where.items()]
  if problems:
    raise runner.SettingsMismatchError(
        f'{workdir} was trained with other settings ({len(problems)} differ, stored -> now):\n  '
        + '\n  '.join(problems) + '\nRun with the stored settings, or use a fresh --workdir, or delete the stage '
        'directories named above to retrain them. Which fields may change is documented in supersub_jax/config.py.')
  try:
    changed = config_lib.differences(config_lib.read(workdir), config) if os.path.exists(
        config_lib.path(workdir)) else []
  except ValueError:  # unreadable: rewritten below
    changed = []
  if changed and jax.process_index() == 0:
    print(f'{len(changed)} config field(s) differ from the previous run in {workdir} (no checkpoint there depends '
          'on them):\n  ' + '\n  '.join(changed), flush=True)


def _check_writable(workdir: str) -> None:
  """The stage directories a rerun writes into (the lock found the workdir itself writable)."""
  for stage in STAGES:
    for directory in [workdir_lib.stage_dir(workdir, stage)] + _job_directories(workdir, stage):
      if os.path.isdir(directory) and not os.access(directory, os.W_OK):
        raise locks.NotWritableError(f'{directory} cannot be written: train.py saves checkpoints there. Make it '
                                     'writable, or copy the workdir to a writable place and pass that instead.')


def prepare_data(config, hierarchy) -> None:
  """Opens the splits the stages read, building what can be built (the synthetic dataset, label caches), in process
  0 first: several processes sharing a data_dir must not build into it at once."""
  def open_splits():
    for split in ('train', config.eval_split):
      stages.load_source(config, split, hierarchy)

  if jax.process_count() == 1:
    open_splits()
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    open_splits()
  multihost_utils.sync_global_devices('supersub_jax: data prepared by process 0')
  if jax.process_index() != 0:
    open_splits()


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Checks ``config`` (``preflight.check``), takes the workdir's lock (one run at a time: ``locks``), checks the
  checkpoints already there, builds the setup once (``setup_of.build``), prepares the data, then runs
  ``config.stages`` in order; returns each stage's result.

  One ``Preemption`` spans the whole run, so a SIGTERM that arrives between two stages stops the next one at its
  first step (after saving). Raises ``runtime.Preempted`` after a preemption save.
  """
  preflight.check(config)
  with locks.hold_workdir(workdir, program='train.py', writes='its checkpoints, metrics and config.json'):
    # Preflight: nothing is written into the workdir until these pass, so a refused start leaves it as it was.
    check_previous_run(config, workdir)
    _check_writable(workdir)
    setup = setup_of.build(config)
    prepare_data(config, setup.hierarchy)
    if jax.process_index() == 0:
      config_lib.write(config, workdir)  # evaluate.py and convert read it: no --config needed there
    results = {}
    with runtime.Preemption() as preemption:
      for stage in config.stages:
        if stage in SPECIALIST_STAGES:
          results[stage] = specialists.train_specialists(config, workdir, setup, stage=stage,
                                                        preemption=preemption)
        else:
          results[stage] = stages.train_network(config, workdir, stage, setup, preemption=preemption)
  return results
