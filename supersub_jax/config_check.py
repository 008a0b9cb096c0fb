"""The config check: every field's validity, pure (no file, no device), with every problem listed at once.

  from supersub_jax import config_check
  config_check.check(config, training=True, devices=jax.device_count())   # raises ConfigError

Both entry points run it before anything else (``recipe.run`` for train.py, evaluate.py), through
``preflight.check``, which adds what only the machine can tell (memory, DALI, files to read and directories to
write). What the machine contributes here comes in as arguments: ``devices`` (the batch must split evenly) and
``memory`` (bytes one device may use). The closed sets of names are ``supersub_jax.choices``'s.
"""

from __future__ import annotations

import difflib
import re

import jax
import ml_collections

from supersub_jax import cut as cut_lib
from supersub_jax import choices
from supersub_jax import config as config_lib
from supersub_jax import decide
from supersub_jax import delta as delta_lib
from supersub_jax import models
from supersub_jax import setup_of
from supersub_jax.data import cues, pipeline


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


def _choice(problems, field, value, allowed):
  if value not in allowed:
    problems.append(f'{field}={value!r}: use one of {tuple(allowed)}.')


def _number(problems, field, value, *, low=None, high=None, low_open=False, high_open=False, integer=False,
            fix=''):
  """Appends a problem unless ``value`` is a (finite) number in the interval; NaN and non-numbers fail too."""
  bool_or_str = isinstance(value, (bool, str))
  try:
    ok = (not bool_or_str and (not integer or float(value) == int(value))
          and (low is None or (value > low if low_open else value >= low))
          and (high is None or (value < high if high_open else value <= high)) and value == value)
  except (TypeError, ValueError, OverflowError):
    ok = False
  if not ok:
    if high is None:
      bound = f'{">" if low_open else ">="} {low}'
    else:
      bound = f'in {"(" if low_open else "["}{low}, {high}{")" if high_open else "]"}'
    problems.append(f'{field}={value!r}: use {"an integer" if integer else "a number"} {bound}'
                    + (f'; {fix}' if fix else '') + '.')


def _sizes(problems, field, value, fix):
  """A non-empty tuple of positive integers (batch or chunk sizes)."""
  try:
    ok = len(value) > 0 and all(not isinstance(v, bool) and int(v) == v and v >= 1 for v in value)
  except (TypeError, ValueError):
    ok = False
  if not ok:
    problems.append(f'{field}={value!r}: use a non-empty tuple of positive integers, {fix}.')


def _training_problems(config) -> list[str]:
  """What only training reads: logging and saving periods, step budgets and optimizers, the pretrained file."""
  problems = []
  _number(problems, 'log_every_steps', config.log_every_steps, low=1, integer=True,
          fix='it is the period of the progress lines and train metrics')
  _number(problems, 'checkpoint_every_steps', config.checkpoint_every_steps, low=1, integer=True,
          fix='it is the period of the saves (the final step is always saved); a large value saves rarely')
  _number(problems, 'max_to_keep', config.max_to_keep, low=1, integer=True, fix='checkpoint steps kept per job')
  _number(problems, 'profile_steps', config.profile_steps, low=0, integer=True, fix='0 profiles nothing')
  for stage in choices.STAGE_SECTIONS:
    cfg = config[stage]
    _choice(problems, f'{stage}.optimizer', cfg.optimizer, choices.OPTIMIZERS)
    _choice(problems, f'{stage}.schedule', cfg.schedule, choices.SCHEDULES)
    if not 0.0 <= cfg.label_smoothing < 1.0:
      problems.append(f'{stage}.label_smoothing={cfg.label_smoothing}: use a value in [0, 1).')
    if cfg.num_train_steps < 1:
      problems.append(f'{stage}.num_train_steps={cfg.num_train_steps}: use at least 1.')
    _number(problems, f'{stage}.learning_rate', cfg.learning_rate, low=0,
            fix='the peak learning rate, e.g. 0.1 for SGD (a negative one climbs the loss; 0 keeps the start)')
    _number(problems, f'{stage}.warmup_steps', cfg.warmup_steps, low=0, integer=True)
    _number(problems, f'{stage}.momentum', cfg.momentum, low=0, high=1, high_open=True)
    _number(problems, f'{stage}.weight_decay', cfg.weight_decay, low=0)
  cfg = config.specialists
  _number(problems, 'specialists.mask_update_every', cfg.mask_update_every, low=1, integer=True,
          fix='steps between two updates of the sparsity mask')
  _number(problems, 'specialists.num_epochs', cfg.num_epochs, low=0, fix='0 uses num_train_steps')
  _number(problems, 'specialists.min_steps', cfg.min_steps, low=1, integer=True)
  _number(problems, 'specialists.steps_multiple', cfg.steps_multiple, low=1, integer=True)
  for field in ('prune_begin_fraction', 'prune_end_fraction'):
    _number(problems, f'specialists.{field}', cfg[field], low=0, high=1, fix='a fraction of the step budget')
  try:
    if cfg.prune_begin_fraction > cfg.prune_end_fraction:
      problems.append(f'specialists.prune_begin_fraction={cfg.prune_begin_fraction} is after '
                      f'prune_end_fraction={cfg.prune_end_fraction}: pruning must begin before it ends.')
  except TypeError:
    pass  # reported above
  if not config.stages:
    problems.append(f'stages={tuple(config.stages)}: nothing to train; list the stages to run, a subsequence of '
                    f'{choices.STAGES}, e.g. --config.stages="(\'vanilla\', \'superclass\', \'specialists\')".')
  return problems


def _evaluation_problems(config) -> list[str]:
  """``config.evaluate``: what evaluate.py reads (training evaluates with eval_batch_size alone)."""
  problems = []
  cfg = config.evaluate
  _number(problems, 'evaluate.batch_size', cfg.batch_size, low=1, integer=True)
  _number(problems, 'evaluate.top2_threshold', cfg.top2_threshold, low=0, high=1,
          fix='a superclass probability below which a second specialist runs')
  _sizes(problems, 'evaluate.chunk_sizes', cfg.chunk_sizes, 'e.g. (32, 8)')
  _sizes(problems, 'evaluate.benchmark_batch_sizes', cfg.benchmark_batch_sizes, 'e.g. (1, 256)')
  _number(problems, 'evaluate.benchmark_batches', cfg.benchmark_batches, low=1, integer=True)
  return problems


def activation_bytes(config) -> tuple[int, int]:
  """(every layer's output, the largest one) in bytes for one image of ``config.image_size``, from the model's
  shapes alone (traced, nothing compiled nor allocated). Training keeps about the first for the backward pass;
  inference needs about twice the second."""
  model = setup_of.make_model(config, 2)
  image = jax.ShapeDtypeStruct((1, *setup_of.image_shape(config)), jax.numpy.float32)

  def outputs(x):
    variables = model.init(jax.random.key(0), x, train=False)
    return model.apply(variables, x, train=True, mutable=['batch_stats', 'intermediates'],
                       capture_intermediates=True)[1]['intermediates']

  sizes = [x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(outputs, image))]
  return sum(sizes), max(sizes)


def _size(nbytes: float) -> str:
  for unit, scale in (('GiB', 2**30), ('MiB', 2**20), ('KiB', 2**10)):
    if nbytes >= scale:
      return f'{nbytes / scale:,.1f} {unit}'
  return f'{int(nbytes)} bytes'


def _memory_problems(config, *, training: bool, devices: int, memory: tuple[int, str]) -> list[str]:
  """An image or batch that cannot fit the devices, refused before anything compiles (XLA would fail to allocate,
  with a long traceback, or the run would swap for minutes), with the estimate. ``memory``: (bytes one device may
  use, what they are), as ``runtime.device_memory`` gives them."""
  available, where = memory
  try:
    per_image, largest = activation_bytes(config)
  except Exception:  # pylint: disable=broad-except  (an estimate only: a model it cannot trace is checked elsewhere)
    return []
  needs = [('eval_batch_size', config.eval_batch_size, 2 * largest, 'inference')]
  if training:
    needs.insert(0, ('batch_size', config.batch_size, per_image, 'training'))
  problems = []
  for field, batch, per, what in needs:
    per_device = max(batch // devices, 1)
    if per_device * per > available:
      fits = available // per * devices
      fix = (f'use a {field} of at most {fits}, or a smaller image_size' if fits >= devices else
             'even one image per device does not fit: use a smaller image_size')
      problems.append(
          f'image_size={config.image_size}, {field}={batch}: {what} needs at least {_size(per_device * per)} per '
          f'device ({per_device} image(s) of {_size(per)} of activations), more than the {_size(available)} of '
          f'{where}; {fix}.')
  return problems


def problems_of(config: ml_collections.ConfigDict, *, training: bool = True, devices: int = 1,
                memory: tuple[int, str] | None = None) -> list[str]:
  """Every problem of ``config`` that is known before training starts, each with its field and fix.

  ``training=False`` (evaluate.py) leaves out what only training reads (``_training_problems``): a workdir trained
  before a check existed can still be evaluated. ``devices``: the devices the batches are split over; ``memory``:
  (bytes one device may use, what they are), or None to leave the memory estimate out.
  """
  problems = _unknown_fields(config.to_dict(), config_lib.default_config().to_dict())
  _choice(problems, 'model', config.model, sorted(models.MODELS))
  _choice(problems, 'stem', config.stem, choices.STEMS)
  _choice(problems, 'dataset', config.dataset, choices.DATASETS)
  _choice(problems, 'augment', config.augment, choices.AUGMENTATIONS)
  _choice(problems, 'parallelism', config.parallelism, choices.PARALLELISMS)
  _choice(problems, 'nonfinite', config.nonfinite, choices.NONFINITE)
  _choice(problems, 'init.format', config.init.format, choices.INIT_FORMATS)
  _choice(problems, 'input.decoder', config.input.decoder, choices.DECODERS)
  _choice(problems, 'input.normalize', config.input.normalize, choices.NORMALIZE)
  _choice(problems, 'evaluate.routing', config.evaluate.routing, choices.ROUTINGS + ('auto',))
  _choice(problems, 'evaluate.materialize', config.evaluate.materialize, choices.MATERIALIZE + ('auto',))
  if config.evaluate.slot_size < 1:
    problems.append(f'evaluate.slot_size={config.evaluate.slot_size}: use at least 1 image per slot.')
  _number(problems, 'max_side', config.max_side, low=0, integer=True, fix='0 reads the JPEGs as distributed')
  if config.max_side:
    _number(problems, 'jpeg_quality', config.jpeg_quality, low=1, high=100, integer=True)
    if config.dataset != 'imagenet2012':
      problems.append(f'max_side={config.max_side}: the pre-resized store is imagenet2012\'s; use 0 for '
                      f'dataset={config.dataset!r}.')
  if config.input.decoder == 'dali':
    if config.augment != 'random_resized_crop':
      problems.append(f"input.decoder='dali' runs random_resized_crop, not augment={config.augment!r}; use "
                      "input.decoder='cpu'.")
  hierarchy = None
  if str(config.hierarchy).startswith('synthetic:'):  # one way to state the synthetic sizes (setup_of)
    sizes = config.hierarchy.partition(':')[2]
    try:
      sizes = str(tuple(int(x) for x in sizes.split(',')))
    except ValueError:
      sizes = f'({sizes})'
    problems.append(f'hierarchy={config.hierarchy!r}: the synthetic sizes are stated once, in synthetic.sizes; use '
                    f"hierarchy='synthetic' and synthetic.sizes={sizes}.")
  else:
    try:
      hierarchy = setup_of.make_hierarchy(config)
    except ValueError as e:
      problems.append(f'hierarchy={config.hierarchy!r}: {e}')
  unknown = [s for s in config.stages if s not in choices.STAGES]
  if unknown:
    problems.append(f'stages: unknown {unknown}; use a subsequence of {choices.STAGES}.')
  elif list(config.stages) != sorted(set(config.stages), key=choices.STAGES.index):
    problems.append(f'stages={tuple(config.stages)}: out of order or repeated; each stage needs the one before it, '
                    f'so list them in the order of {choices.STAGES}.')
  for field in ('batch_size', 'eval_batch_size'):
    if not isinstance(config[field], int) or config[field] < 1:
      problems.append(f'{field}={config[field]!r}: use a positive multiple of the {devices} devices, e.g. '
                      f'{max(devices, 128 // devices * devices)}.')
    elif config[field] % devices:
      problems.append(f'{field}={config[field]}: not divisible by the {devices} devices; use a multiple of '
                      f'{devices}, e.g. {max(devices, config[field] // devices * devices)}.')
  _number(problems, 'image_size', config.image_size, low=1, integer=True,
          fix='the side of the square images the networks see, e.g. 32 (224 for ImageNet)')
  _number(problems, 'width', config.width, low=0, low_open=True, high=64, fix='a width multiplier, 1.0 by default')
  _number(problems, 'worker_count', config.worker_count, low=0, integer=True, fix='0 reads in this process')
  if config.dataset == 'synthetic':
    for field in ('image_size', 'train_per_class', 'validation_per_class', 'test_per_class'):
      _number(problems, f'synthetic.{field}', config.synthetic[field], low=1, integer=True)
    try:
      cues.validate_specificity(tuple(config.synthetic.sizes), config.synthetic.specificity)
    except (TypeError, ValueError) as e:
      problems.append(f'synthetic.{e}')
  if config.distributed.enabled and config.distributed.coordinator_address:
    _number(problems, 'distributed.num_processes', config.distributed.num_processes, low=1, integer=True)
    _number(problems, 'distributed.process_id', config.distributed.process_id, low=0,
            high=max(int(config.distributed.num_processes) - 1, 0), integer=True)
  if training:
    problems += _training_problems(config)
  problems += _evaluation_problems(config)
  cfg = config.specialists
  if cfg.bits not in (0,) + choices.SUPPORTED_BITS:
    problems.append(f'specialists.bits={cfg.bits}: use one of {choices.SUPPORTED_BITS}, or 0 for no quantization.')
  if not 0.0 <= cfg.density <= 1.0:
    problems.append(f'specialists.density={cfg.density}: use a fraction in [0, 1] (0 keeps only the new head).')
  _choice(problems, 'specialists.granularity', cfg.granularity, choices.GRANULARITIES)
  _choice(problems, 'specialists.sparsity_scope', cfg.sparsity_scope, choices.SCOPES)
  _choice(problems, 'specialists.sparsity_schedule', cfg.sparsity_schedule, choices.SCHEDULE_KINDS)
  _choice(problems, 'specialists.dustbin_others', cfg.dustbin_others, choices.DUSTBIN_OTHERS)
  _choice(problems, 'specialists.head_from', cfg.head_from, choices.HEAD_FROM)
  if cfg.head_from == 'init' and not config.init.path:
    problems.append("specialists.head_from='init' starts each specialist's head from config.init's subclass head, "
                    "but config.init.path is empty: give init.path (a flat network over the hierarchy's subclasses) "
                    "or use head_from='random'.")
  if cfg.dustbin:
    try:
      pipeline.mixed_counts(max(config.batch_size // devices, 1), float(cfg.dustbin_fraction))
    except ValueError as e:
      problems.append(f'specialists.dustbin_fraction={cfg.dustbin_fraction} at batch_size={config.batch_size} on '
                      f'{devices} device(s): {e}')
  if cfg.leaves not in delta_lib.LEAVES:
    try:
      re.compile(cfg.leaves)
    except re.error as e:
      problems.append(f'specialists.leaves={cfg.leaves!r}: not a known set {tuple(delta_lib.LEAVES)} nor a valid '
                      f'regex ({e}).')
  try:
    re.compile(cfg.dense_leaves)
  except re.error as e:
    problems.append(f"specialists.dense_leaves={cfg.dense_leaves!r}: not a valid regex ({e}); use '' for none.")
  evaluated = set()
  for spec in config.evaluate.rules:
    try:
      rule = decide.Rule.parse(spec)
    except ValueError as e:
      problems.append(f'evaluate.rules: {e}')
      continue
    evaluated.add(rule)
    if hierarchy is not None and rule.k > hierarchy.num_superclasses:
      problems.append(f'evaluate.rules: {spec!r} routes to {rule.k} superclasses; the hierarchy has '
                      f'{hierarchy.num_superclasses}.')
  evaluate = config.evaluate
  try:
    verdict = decide.Rule.parse(evaluate.verdict_rule)
  except ValueError as e:
    problems.append(f'evaluate.verdict_rule: {e}')
  else:
    if verdict != decide.Rule() and verdict not in evaluated:
      problems.append(f'evaluate.verdict_rule={evaluate.verdict_rule!r} is not among evaluate.rules '
                      f'{tuple(evaluate.rules)}: add it there, or give the paper\'s rule, \'hard\'.')
  if evaluate.map_summary and config.dataset != 'synthetic':
    problems.append(f'evaluate.map_summary={evaluate.map_summary!r}: a map is over the synthetic data\'s cue '
                    f'specificity, and dataset={config.dataset!r}; leave map_summary empty.')
  try:
    cut = cut_lib.Cut(cfg.branch)
  except ValueError as e:
    problems.append(f'specialists.branch={cfg.branch!r}: {e}')
  else:
    if config.model in models.MODELS:
      try:
        cut.check(setup_of.make_model(config, 1))
      except ValueError as e:
        problems.append(str(e))
  if hierarchy is not None and cfg.superclasses:
    n = hierarchy.num_superclasses
    bad = [k for k in cfg.superclasses if not 0 <= k < n]
    if bad:
      problems.append(f'specialists.superclasses: {bad} outside [0, {n}) of hierarchy {config.hierarchy!r}.')
  if not problems and memory is not None:  # the sizes trace the model: only a config otherwise sound gets that far
    problems += _memory_problems(config, training=training, devices=devices, memory=memory)
  return problems


def check(config: ml_collections.ConfigDict, *, training: bool = True, devices: int = 1,
          memory: tuple[int, str] | None = None) -> None:
  """Raises ``ConfigError`` listing every problem of ``config`` (``problems_of``, same arguments)."""
  raise_if(problems_of(config, training=training, devices=devices, memory=memory))


def raise_if(problems: list[str]) -> None:
  """Raises ``ConfigError`` with ``problems``, one a line, unless there are none."""
  if problems:
    raise ConfigError(f'the config cannot run ({len(problems)} problem(s)):\n  ' + '\n  '.join(problems))
