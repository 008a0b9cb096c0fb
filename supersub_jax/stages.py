"""The network stages, and what every stage shares: the data, the step budgets and the jobs' descriptions.

* ``vanilla``: one network on all subclasses of the hierarchy (flat global labels): the paper's baseline.
* ``superclass``: the generalist on superclass labels, started from the vanilla network's backbone
  (``superclass.init_from_vanilla``) or from ``config.init``.
* ``vanilla_matched`` (optional): the vanilla network's recipe (``config.vanilla``) trained for as many optimizer
  steps, hence images, as the whole Super-Sub pipeline (``pipeline_steps``): the compute-matched baseline.

The specialist stages are ``supersub_jax.specialists``'s: ``specialists``, and the optional baseline ``head_only``
(the same settings at branch 'head'); ``supersub_jax.recipe.run`` runs ``config.stages`` in order.
Each stage writes its own orbax checkpoint directory ``<workdir>/<stage>`` (``workdir.stage_dir``; what a finished
run left is read back by ``supersub_jax.workdir``); resuming, the settings checks and the finished marker are
``supersub_jax.runner``'s. The hierarchy and the models come built, in the ``setup_of.Setup`` the recipe made once.
"""

from __future__ import annotations

import functools
import json
from typing import Mapping

import jax
import numpy as np

from supersub_jax import checkpoint as ckpt
from supersub_jax import config as config_lib
from supersub_jax import models
from supersub_jax import runner
from supersub_jax import runtime
from supersub_jax import setup_of
from supersub_jax import step as step_lib
from supersub_jax import weights
from supersub_jax import workdir as workdir_lib
from supersub_jax.choices import NETWORK_STAGES, STAGES
from supersub_jax.data import pipeline, sources

# ----------------------------------------------------------------------------------------------------------------------
# Shared: data, step budgets


def load_source(config, split: str, hierarchy, superclass: int | None = None):
  """One split of ``config.dataset`` relabelled by ``hierarchy`` (held-out data: ``config.eval_split``)."""
  # Encoded: the input pipeline decodes each image fused with its crop (image_ops.decode_random_resized_crop).
  return sources.load_source(config.dataset, split, hierarchy, ckpt.abs_path(config.data_dir),
                             manual_dir=config.manual_dir or None, superclass=superclass, encoded=True,
                             **setup_of.dataset_kwargs(config))


def _stats(config):
  return pipeline.DATASET_STATS[config.dataset]


def train_batches(config, source, *, label_mode: str, seed: int, mix=None):
  """The training batches of ``source`` (``pipeline.train_iterator``; ``mix``: a second source and its share)."""
  stats = _stats(config)
  return pipeline.train_iterator(source, global_batch_size=config.batch_size, seed=seed, augment=config.augment,
                                 image_size=config.image_size, mean=stats.mean, std=stats.std,
                                 label_mode=label_mode, worker_count=config.worker_count,
                                 normalize=config.input.normalize == 'host', decoder=config.input.decoder, mix=mix)


def eval_batches(config, source, *, label_mode: str, batch_size: int | None = None, **kwargs):
  stats = _stats(config)
  return pipeline.eval_iterator(source, global_batch_size=batch_size or config.eval_batch_size,
                                image_size=config.image_size, mean=stats.mean, std=stats.std, label_mode=label_mode,
                                crop_fraction=stats.eval_crop_fraction, worker_count=config.worker_count,
                                normalize=config.input.normalize == 'host', **kwargs)


def config_json(config) -> dict:
  return json.loads(config.to_json_best_effort())


def specialist_steps(cfg, num_examples: int, batch_size: int) -> int:
  """Optimizer steps of one specialist: ``cfg.num_train_steps``, or with ``cfg.num_epochs > 0`` that many passes
  over the superclass's training examples (at least ``cfg.min_steps``, rounded up to a multiple of
  ``cfg.steps_multiple`` so that specialists of similar size share one compiled step)."""
  epochs = float(cfg.get('num_epochs', 0.0))
  if epochs <= 0:
    return int(cfg.num_train_steps)
  steps = max(int(np.ceil(epochs * num_examples / batch_size)), int(cfg.get('min_steps', 1)))
  multiple = max(int(cfg.get('steps_multiple', 1)), 1)
  return int(np.ceil(steps / multiple) * multiple)


def specialist_epochs_for(config, hierarchy, steps: int) -> float:
  """The largest ``specialists.num_epochs`` (to 1e-4) whose specialists, all together, train at most ``steps``
  optimizer steps; ValueError when even the smallest budget of ``specialists.min_steps`` each is larger."""
  sizes = [len(load_source(config, 'train', hierarchy, superclass=k)) for k in range(hierarchy.num_superclasses)]
  spec = config.specialists.copy_and_resolve_references()

  def total(epochs):
    spec.num_epochs = epochs
    return sum(specialist_steps(spec, n, config.batch_size) for n in sizes)

  low, high = 1e-3, 1e3
  if total(low) > steps:
    raise ValueError(f'{steps} specialist steps cannot train {len(sizes)} specialists (at least '
                     f'{total(low)} with specialists.min_steps={spec.min_steps}): raise the budget.')
  for _ in range(60):
    mid = (low + high) / 2
    low, high = (mid, high) if total(mid) <= steps else (low, mid)
  return float(np.floor(low * 1e4) / 1e4)  # rounded down: never over the budget


def pipeline_steps(config, hierarchy) -> dict[str, int]:
  """Optimizer steps (at ``config.batch_size``) that Super-Sub's predictions cost: the generalist, each specialist
  of ``config.specialists.superclasses`` (all by default), and the vanilla network when the generalist starts from
  it. Returns {'vanilla', 'superclass', 'specialists', 'total'}; 'total' is ``vanilla_matched``'s budget."""
  which = list(config.specialists.superclasses) or list(range(hierarchy.num_superclasses))
  specialists = sum(specialist_steps(config.specialists, len(load_source(config, 'train', hierarchy, superclass=k)),
                                     config.batch_size) for k in which)
  vanilla = int(config.vanilla.num_train_steps) if initial_backbone_source(config, 'superclass') == 'vanilla' else 0
  steps = {'vanilla': vanilla, 'superclass': int(config.superclass.num_train_steps), 'specialists': specialists}
  return {**steps, 'total': sum(steps.values())}


def stage_steps(config, stage: str, hierarchy) -> int:
  """The step budget of a network stage."""
  if stage == 'vanilla_matched':
    return pipeline_steps(config, hierarchy)['total']
  return int(config[stage].num_train_steps)


def _network_job(config, workdir: str, stage: str, hierarchy, fingerprints: Mapping[str, str] | None = None):
  num_classes = hierarchy.num_superclasses if stage == 'superclass' else hierarchy.num_subclasses
  meta = {'stage': stage, 'config': config_json(config), 'hierarchy': hierarchy.to_dict(),
          'num_classes': num_classes, 'init': initial_backbone_source(config, stage),
          'fingerprints': dict(fingerprints or {})}
  num_steps = stage_steps(config, stage, hierarchy)
  return runner.Job(stage, stage, workdir_lib.stage_dir(workdir, stage), num_steps, meta), num_classes


def _abstract_state(config, model, stage: str, num_steps: int, image_shape, seed: int = 0):
  """The TrainState a network stage trains, as ShapeDtypeStructs (the target of every restore)."""
  tx = step_lib.make_optimizer(config[config_lib.section(stage)], num_steps)

  def build():
    variables = models.init_variables(model, jax.random.key(seed), image_shape)
    return step_lib.create_train_state(variables['params'], variables['batch_stats'], tx)

  return jax.eval_shape(build), build, tx


def initial_backbone_source(config, stage: str) -> str:
  """Where the network of ``stage`` starts: 'vanilla', config.init's path, or 'random'."""
  if stage == 'superclass' and config.superclass.init_from_vanilla:
    return 'vanilla'
  return ckpt.abs_path(config.init.path) if config.init.path else 'random'


def keeps_init_head(config, stage: str) -> bool:
  """Whether ``stage`` starts from config.init's whole network, head included (``config.init.keep_head``): the
  flat stages, whose classes are the init network's, continue it."""
  return bool(config.init.keep_head) and stage in ('vanilla', 'vanilla_matched') and bool(config.init.path)


def _pretrained_start(config, stage: str, model) -> dict | None:
  """config.init's variables for ``stage`` (``{'params', 'batch_stats'}``; without the head unless
  ``keeps_init_head``), or None for a random start."""
  source = initial_backbone_source(config, stage)
  if source in ('random', 'vanilla'):
    return None
  if keeps_init_head(config, stage):
    start = weights.load_network(source, config.init.format, model)
  else:
    start = weights.load_backbone(source, config.init.format, setup_of.make_model(config, 1))
  if jax.process_index() == 0:
    print(f'[{stage}] {"network" if "head" in start["params"] else "backbone"} initialised from {source}', flush=True)
  return start


def train_network(config, workdir: str, stage: str, setup: setup_of.Setup, *,
                  preemption: runtime.Preemption | None = None) -> dict:
  """Trains the network of ``stage`` (``NETWORK_STAGES``: subclass labels, or superclass labels for the generalist);
  returns its held-out metrics."""
  if stage not in NETWORK_STAGES:
    raise ValueError(f'train_network trains one of {NETWORK_STAGES}, not {stage!r}.')
  cfg = config[config_lib.section(stage)]
  hierarchy = setup.hierarchy
  label_mode = 'superclass' if stage == 'superclass' else 'subclass'
  vanilla = None
  if initial_backbone_source(config, stage) == 'vanilla':
    vanilla = workdir_lib.load_network(config, workdir, 'vanilla', setup)
  fingerprints = {'vanilla': runner.fingerprint(vanilla.params, vanilla.batch_stats)} if vanilla else {}
  job, num_classes = _network_job(config, workdir, stage, hierarchy, fingerprints)
  parallel = runtime.Parallel(config.parallelism)
  model = setup.model(stage)
  seed = int(config.seed) + STAGES.index(stage)
  target, random_state, tx = _abstract_state(config, model, stage, job.num_steps, setup.image_shape, seed)
  train_iter = train_batches(config, load_source(config, 'train', hierarchy), label_mode=label_mode, seed=seed)
  eval_source = load_source(config, config.eval_split, hierarchy)  # now: a missing split must not wait for the end

  def fresh_state():
    start = ({'params': vanilla.params, 'batch_stats': vanilla.batch_stats} if vanilla is not None
             else _pretrained_start(config, stage, model))
    if start is None:
      return jax.device_get(random_state())
    if keeps_init_head(config, stage):  # a flat network continued: same classes, same head
      return step_lib.create_train_state(start['params'], start['batch_stats'], tx)
    if vanilla is not None and jax.process_index() == 0:
      print(f'[{stage}] backbone initialised from the vanilla network', flush=True)
    # The backbone transfers; the head is new (other classes). Initialising the head alone skips compiling a whole
    # network's random initialisers.
    head = models.init_head(num_classes, target.params['head']['kernel'].shape[0], jax.random.key(seed))
    params = {**{k: v for k, v in start['params'].items() if k != 'head'}, 'head': jax.device_get(head)}
    return step_lib.create_train_state(params, start['batch_stats'], tx)

  step_fn = parallel.compile(functools.partial(step_lib.train_step, apply_fn=model.apply, tx=tx,
                                               label_smoothing=float(cfg.label_smoothing),
                                               skip_nonfinite=config.nonfinite == 'skip'))
  eval_fn = parallel.compile(functools.partial(step_lib.eval_step, apply_fn=model.apply), donate_state=False)

  def evaluate(rstate):
    return runner.eval_metrics(rstate, eval_fn=eval_fn, parallel=parallel, frozen={},
                              batches=eval_batches(config, eval_source, label_mode=label_mode))

  with runner.MetricWriter(ckpt.abs_path(workdir), stage) as writer:
    result = runner.run_job(config, job, fresh_state=fresh_state, target=target, train_iter=train_iter,
                            step_fn=step_fn, evaluate=evaluate, parallel=parallel, frozen={}, preemption=preemption,
                            writer=writer)
    if result.state is not None:
      writer.write(job.num_steps, config.eval_split, result.metrics)
  if result.state is not None:
    metrics = result.metrics
    if jax.process_index() == 0:
      print(f'[{stage}] {config.eval_split} loss {metrics["loss"]:.4f} top-1 {metrics["accuracy"]:.4f} '
            f'({int(metrics["count"])} images)', flush=True)
  return result.metrics
