"""The Super-Sub recipe: check the config, prepare the data once, and run ``config.stages`` in order.

  from supersub_jax import recipe
  recipe.run(config, workdir)   # what train.py does

Everything that can be known wrong before training is checked first (``validate``), so a bad config fails in
seconds with every problem listed, not after hours of an earlier stage.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from typing import Any

import jax
import ml_collections

from supersub_jax import config as config_lib
from supersub_jax import decide
from supersub_jax import delta as delta_lib
from supersub_jax import inference
from supersub_jax import models
from supersub_jax import quant
from supersub_jax import runner
from supersub_jax import runtime
from supersub_jax import sparsity
from supersub_jax import specialists
from supersub_jax import stages
from supersub_jax import step as step_lib
from supersub_jax.data import pipeline, sources


class ConfigError(ValueError):
  """The config cannot run; the message lists every problem with its field and fix."""


def _unknown_fields(given: dict, known: dict, prefix: str = '') -> list[str]:
  """The highest-level fields of ``given`` that ``known`` lacks, each with a close known name when there is one."""
  out = []
  for key, value in given.items():
    if key not in known:
      close = difflib.get_close_matches(key, list(known), n=1)
      out.append(f'{prefix}{key}: unknown field' + (f'; did you mean {prefix}{close[0]}?' if close else
                                                     '; the fields are documented in supersub_jax/config.py.'))
    elif isinstance(value, dict) and isinstance(known[key], dict):
      out += _unknown_fields(value, known[key], f'{prefix}{key}.')
  return out


def _choice(problems, field, value, choices):
  if value not in choices:
    problems.append(f'{field}={value!r}: use one of {tuple(choices)}.')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ``ConfigError`` listing every problem of ``config`` that is known before training starts."""
  problems = _unknown_fields(config.to_dict(), config_lib.default_config().to_dict())
  _choice(problems, 'model', config.model, sorted(models.MODELS))
  _choice(problems, 'stem', config.stem, models.STEMS)
  _choice(problems, 'dataset', config.dataset, sources.DATASETS)
  _choice(problems, 'augment', config.augment, pipeline.AUGMENTATIONS)
  _choice(problems, 'parallelism', config.parallelism, runtime.PARALLELISMS)
  _choice(problems, 'nonfinite', config.nonfinite, step_lib.NONFINITE)
  _choice(problems, 'init.format', config.init.format, config_lib.INIT_FORMATS)
  _choice(problems, 'input.decoder', config.input.decoder, pipeline.DECODERS)
  _choice(problems, 'input.normalize', config.input.normalize, config_lib.NORMALIZE)
  _choice(problems, 'evaluate.routing', config.evaluate.routing, inference.ROUTINGS + ('auto',))
  _choice(problems, 'evaluate.materialize', config.evaluate.materialize, inference.MATERIALIZE)
  if config.evaluate.slot_size < 1:
    problems.append(f'evaluate.slot_size={config.evaluate.slot_size}: use at least 1 image per slot.')
  if config.input.decoder == 'dali':
    from supersub_jax.data import dali  # pylint: disable=g-import-not-at-top
    problem = dali.unavailable()
    if problem:
      problems.append(f'input.decoder=\'dali\': {problem}')
    if config.augment != 'random_resized_crop':
      problems.append(f"input.decoder='dali' runs random_resized_crop, not augment={config.augment!r}; use "
                      "input.decoder='cpu'.")
  hierarchy = None
  try:
    hierarchy = stages.make_hierarchy(config)
  except ValueError as e:
    problems.append(f'hierarchy={config.hierarchy!r}: {e}')
  unknown = [s for s in config.stages if s not in stages.STAGES]
  if unknown:
    problems.append(f'stages: unknown {unknown}; use a subsequence of {stages.STAGES}.')
  elif list(config.stages) != sorted(set(config.stages), key=stages.STAGES.index):
    problems.append(f'stages={tuple(config.stages)}: out of order or repeated; each stage needs the one before it, '
                    f'so list them in the order of {stages.STAGES}.')
  devices = jax.device_count()
  for field in ('batch_size', 'eval_batch_size'):
    if config[field] < 1 or config[field] % devices:
      problems.append(f'{field}={config[field]}: not divisible by the {devices} devices; use a multiple of '
                      f'{devices}, e.g. {max(devices, config[field] // devices * devices)}.')
  for stage in config_lib.STAGE_SECTIONS:
    cfg = config[stage]
    _choice(problems, f'{stage}.optimizer', cfg.optimizer, step_lib.OPTIMIZERS)
    _choice(problems, f'{stage}.schedule', cfg.schedule, step_lib.SCHEDULES)
    if not 0.0 <= cfg.label_smoothing < 1.0:
      problems.append(f'{stage}.label_smoothing={cfg.label_smoothing}: use a value in [0, 1).')
    if cfg.num_train_steps < 1:
      problems.append(f'{stage}.num_train_steps={cfg.num_train_steps}: use at least 1.')
  cfg = config.specialists
  if cfg.bits not in (0,) + quant.SUPPORTED_BITS:
    problems.append(f'specialists.bits={cfg.bits}: use one of {quant.SUPPORTED_BITS}, or 0 for no quantization.')
  if not 0.0 <= cfg.density <= 1.0:
    problems.append(f'specialists.density={cfg.density}: use a fraction in [0, 1] (0 keeps only the new head).')
  _choice(problems, 'specialists.granularity', cfg.granularity, delta_lib.GRANULARITIES)
  _choice(problems, 'specialists.sparsity_scope', cfg.sparsity_scope, sparsity.SCOPES)
  _choice(problems, 'specialists.sparsity_schedule', cfg.sparsity_schedule, sparsity.SCHEDULE_KINDS)
  _choice(problems, 'specialists.dustbin_others', cfg.dustbin_others, specialists.DUSTBIN_OTHERS)
  if cfg.dustbin:
    try:
      pipeline.mixed_counts(max(config.batch_size // devices, 1), float(cfg.dustbin_fraction))
    except ValueError as e:
      problems.append(f'specialists.dustbin_fraction={cfg.dustbin_fraction} at batch_size={config.batch_size} on '
                      f'{devices} device(s): {e}')
  if cfg.leaves not in specialists.LEAVES:
    try:
      re.compile(cfg.leaves)
    except re.error as e:
      problems.append(f'specialists.leaves={cfg.leaves!r}: not a known set {tuple(specialists.LEAVES)} nor a valid '
                      f'regex ({e}).')
  try:
    re.compile(cfg.dense_leaves)
  except re.error as e:
    problems.append(f"specialists.dense_leaves={cfg.dense_leaves!r}: not a valid regex ({e}); use '' for none.")
  for spec in config.evaluate.rules:
    try:
      rule = decide.Rule.parse(spec)
    except ValueError as e:
      problems.append(f'evaluate.rules: {e}')
      continue
    if hierarchy is not None and rule.k > hierarchy.num_superclasses:
      problems.append(f'evaluate.rules: {spec!r} routes to {rule.k} superclasses; the hierarchy has '
                      f'{hierarchy.num_superclasses}.')
  try:
    cut = models.Cut(cfg.branch)
  except ValueError as e:
    problems.append(f'specialists.branch={cfg.branch!r}: {e}')
  else:
    if config.model in models.MODELS:
      try:
        cut.check(stages.make_model(config, 1))
      except ValueError as e:
        problems.append(str(e))
  hierarchy_ok = not any(p.startswith('hierarchy=') for p in problems)
  if hierarchy_ok and cfg.superclasses:
    n = stages.make_hierarchy(config).num_superclasses
    bad = [k for k in cfg.superclasses if not 0 <= k < n]
    if bad:
      problems.append(f'specialists.superclasses: {bad} outside [0, {n}) of hierarchy {config.hierarchy!r}.')
  uses_init = ({'vanilla', 'vanilla_matched'} & set(config.stages)
               or ('superclass' in config.stages and not config.superclass.init_from_vanilla))
  if uses_init and config.init.path and not os.path.exists(os.path.expanduser(config.init.path)):
    problems.append(f'init.path={config.init.path!r}: no such file or directory; download the weights (see the '
                    "config's docstring) or leave init.path empty for a random start.")
  data_dir = os.path.abspath(os.path.expanduser(config.data_dir))
  try:
    os.makedirs(data_dir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=data_dir):
      pass
  except OSError as e:
    problems.append(f'data_dir={config.data_dir!r}: cannot be written ({e.strerror}); the label caches (and the '
                    'synthetic dataset) are written there: choose a writable directory.')
  if problems:
    raise ConfigError(f'the config cannot run ({len(problems)} problem(s)):\n  ' + '\n  '.join(problems))


def check_previous_run(config, workdir: str) -> None:
  """Before anything is written: the settings of the previous run in ``workdir`` (its config.json) against the
  current ones, for every stage that has checkpoints there. Each job checks its own checkpoint again when it
  resumes (with the networks it was built on); this makes a wrong rerun fail at once and leaves config.json as it
  was."""
  if not os.path.exists(config_lib.path(workdir)):
    return
  previous = config_lib.read(workdir)
  changed = config_lib.differences(previous, config)
  where: dict[str, list[str]] = {}  # difference -> the stages whose checkpoints it concerns
  for stage in stages.STAGES:
    if os.path.isdir(stages.stage_dir(workdir, stage)):
      for d in config_lib.meaning_differences(previous.to_dict(), config, stage):
        where.setdefault(d, []).append(stage)
  problems = [f'{d} (checkpoints of {", ".join(s)})' for d, s in where.items()]
  if problems:
    raise runner.SettingsMismatchError(
        f'{workdir} was trained with other settings ({len(problems)} differ, stored -> now):\n  '
        + '\n  '.join(problems) + '\nRun with the stored settings, or use a fresh --workdir, or delete the stage '
        'directories named above to retrain them. Which fields may change is documented in supersub_jax/config.py.')
  if changed and jax.process_index() == 0:
    print(f'{len(changed)} harmless config field(s) differ from the previous run in {workdir}:\n  '
          + '\n  '.join(changed), flush=True)


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
  """Validates ``config``, prepares the data, then runs ``config.stages`` in order; returns each stage's result.

  One ``Preemption`` spans the whole run, so a SIGTERM that arrives between two stages stops the next one at its
  first step (after saving). Raises ``train.Preempted`` after a preemption save.
  """
  validate(config)
  check_previous_run(config, workdir)
  hierarchy = stages.make_hierarchy(config)
  prepare_data(config, hierarchy)
  if jax.process_index() == 0:
    config_lib.write(config, workdir)  # evaluate.py and convert read it: no --config needed there
  results = {}
  with runtime.Preemption() as preemption:
    for stage in config.stages:
      if stage in stages.SPECIALIST_STAGES:
        results[stage] = specialists.train_specialists(config, workdir, stage=stage, preemption=preemption)
      else:
        results[stage] = stages.train_network(config, workdir, stage, preemption=preemption)
  return results
