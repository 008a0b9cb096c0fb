"""Stages of the Super-Sub pipeline, each a function of (config, workdir).

* ``vanilla``: one network on all subclasses of the hierarchy (flat global labels): the paper's baseline.
* ``superclass``: the generalist on superclass labels, optionally initialised from the vanilla backbone.
* ``specialists``: for each superclass, a sparse fake-quantized delta over the generalist plus a new head
  (see ``supersub_jax.specialists``).

Each stage writes its own orbax checkpoint directory ``<workdir>/<stage>`` and, when rerun, resumes from its latest
checkpoint (a finished stage is skipped).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from supersub_jax import checkpoint as ckpt
from supersub_jax import config as config_lib
from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax import models
from supersub_jax import train as train_lib
from supersub_jax import weights
from supersub_jax.data import pipeline, sources

STAGES = ('vanilla', 'superclass', 'specialists')


# ----------------------------------------------------------------------------------------------------------------------
# Shared set-up


def make_hierarchy(config) -> hierarchy_lib.Hierarchy:
  if config.hierarchy == 'synthetic':
    return hierarchy_lib.synthetic(tuple(config.synthetic.sizes))
  return hierarchy_lib.get(config.hierarchy)


def dataset_kwargs(config) -> dict:
  if config.dataset == 'synthetic':
    s = config.synthetic
    return dict(image_size=s.image_size, train_per_class=s.train_per_class, test_per_class=s.test_per_class,
                seed=s.seed, sizes=tuple(s.sizes))
  return {}


def load_source(config, split: str, hierarchy, superclass: int | None = None):
  """One split of ``config.dataset`` relabelled by ``hierarchy`` (held-out data: ``config.eval_split``)."""
  return sources.load_source(config.dataset, split, hierarchy, ckpt.abs_path(config.data_dir),
                             manual_dir=config.manual_dir or None, superclass=superclass, **dataset_kwargs(config))


def _stats(config):
  return pipeline.DATASET_STATS[config.dataset]


def train_batches(config, source, *, label_mode: str, seed: int):
  stats = _stats(config)
  return pipeline.train_iterator(source, global_batch_size=config.batch_size, seed=seed, augment=config.augment,
                                 image_size=config.image_size, mean=stats.mean, std=stats.std,
                                 label_mode=label_mode, worker_count=config.worker_count)


def eval_batches(config, source, *, label_mode: str, batch_size: int | None = None, **kwargs):
  stats = _stats(config)
  return pipeline.eval_iterator(source, global_batch_size=batch_size or config.eval_batch_size,
                                image_size=config.image_size, mean=stats.mean, std=stats.std, label_mode=label_mode,
                                crop_fraction=stats.eval_crop_fraction, worker_count=config.worker_count, **kwargs)


def make_model(config, num_classes: int):
  return models.create_model(config.model, num_classes, stem=config.stem, width=config.width,
                             dtype=jnp.bfloat16 if config.half_precision else jnp.float32)


def image_shape(config) -> tuple[int, int, int]:
  return (config.image_size, config.image_size, 3)


def config_json(config) -> dict:
  return json.loads(config.to_json_best_effort())


@dataclasses.dataclass
class Network:
  """A trained vanilla or superclass network, as host numpy pytrees."""
  stage: str
  model: Any
  params: Any
  batch_stats: Any
  meta: dict


def stage_dir(workdir: str, stage: str) -> str:
  return os.path.join(ckpt.abs_path(workdir), stage)


def load_network(config, workdir: str, stage: str, hierarchy=None) -> Network:
  """Restores the final params and BatchNorm statistics of a 'vanilla' or 'superclass' stage."""
  hierarchy = hierarchy or make_hierarchy(config)
  num_classes = hierarchy.num_subclasses if stage == 'vanilla' else hierarchy.num_superclasses
  model = make_model(config, num_classes)
  directory = stage_dir(workdir, stage)
  manager = ckpt.make_manager(directory, create=False) if os.path.isdir(directory) else None
  if manager is None or manager.latest_step() is None:
    raise FileNotFoundError(f'No {stage!r} checkpoint under {stage_dir(workdir, stage)}: run '
                            f'`python train.py --config=... --workdir={workdir}` with {stage!r} in config.stages.')
  # The target is built exactly as the stage built its state (optimizer included), so the restore is checked
  # leaf by leaf against the current config.
  variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), image_shape(config)))
  tx = train_lib.make_optimizer(config[stage], int(config[stage].num_train_steps))
  target = jax.eval_shape(lambda: train_lib.create_train_state(variables['params'], variables['batch_stats'], tx))
  state, _, meta, _ = ckpt.restore(manager, target=target, with_data=False)
  return Network(stage, model, state.params, state.batch_stats, meta or {})


# ----------------------------------------------------------------------------------------------------------------------
# Network stages


def initial_backbone_source(config, stage: str) -> str:
  """Where the network of ``stage`` starts: 'vanilla', config.init's path, or 'random'."""
  if stage == 'superclass' and config.superclass.init_from_vanilla:
    return 'vanilla'
  return ckpt.abs_path(config.init.path) if config.init.path else 'random'


def initial_backbone(config, workdir: str, stage: str, hierarchy) -> dict | None:
  """The backbone (``{'params', 'batch_stats'}`` without the head, numpy) a network stage starts from, or None
  for a random start; see ``initial_backbone_source``."""
  source = initial_backbone_source(config, stage)
  if source == 'random':
    return None
  if source == 'vanilla':
    vanilla = load_network(config, workdir, 'vanilla', hierarchy)
    backbone = {'params': vanilla.params, 'batch_stats': vanilla.batch_stats}
  else:
    backbone = weights.load_backbone(source, config.init.format, make_model(config, 1))
  if jax.process_index() == 0:
    print(f'[{stage}] backbone initialised from {source}', flush=True)
  return {'params': {k: v for k, v in backbone['params'].items() if k != 'head'},
          'batch_stats': backbone['batch_stats']}


def train_network(config, workdir: str, stage: str) -> dict:
  """Trains the 'vanilla' (subclass labels) or 'superclass' network; returns its test metrics."""
  if stage not in ('vanilla', 'superclass'):
    raise ValueError(f'train_network trains vanilla or superclass, not {stage!r}.')
  cfg = config[stage]
  hierarchy = make_hierarchy(config)
  label_mode = 'subclass' if stage == 'vanilla' else 'superclass'
  num_classes = hierarchy.num_subclasses if stage == 'vanilla' else hierarchy.num_superclasses
  parallel = train_lib.Parallel(config.parallelism)
  model = make_model(config, num_classes)
  num_steps = int(cfg.num_train_steps)
  tx = train_lib.make_optimizer(cfg, num_steps)
  seed = int(config.seed) + STAGES.index(stage)

  manager = ckpt.make_manager(stage_dir(workdir, stage), max_to_keep=config.max_to_keep)
  train_iter = train_batches(config, load_source(config, 'train', hierarchy), label_mode=label_mode, seed=seed)
  eval_source = load_source(config, config.eval_split, hierarchy)  # now: a missing split must not wait for the end
  meta = {'stage': stage, 'config': config_json(config), 'hierarchy': hierarchy.to_dict(),
          'num_classes': num_classes, 'init': initial_backbone_source(config, stage)}

  def random_state():
    variables = models.init_variables(model, jax.random.key(seed), image_shape(config))
    return train_lib.create_train_state(variables['params'], variables['batch_stats'], tx)

  if manager.latest_step() is None:
    start = initial_backbone(config, workdir, stage, hierarchy)
    if start is None:
      state = jax.device_get(random_state())
    else:  # the backbone transfers; the head is new (other classes)
      features = jax.eval_shape(random_state).params['head']['kernel'].shape[0]
      head = models.init_head(num_classes, features, jax.random.key(seed))
      state = train_lib.create_train_state({**start['params'], 'head': jax.device_get(head)}, start['batch_stats'],
                                           tx)
  else:  # the starting weights are in the checkpoint: the init file is not read again
    state, data_state, stored_meta, _ = ckpt.restore(manager, target=jax.eval_shape(random_state))
    if data_state:
      train_iter.set_state(data_state)
    if int(state.step) >= num_steps and stored_meta and 'test' in stored_meta:
      logging.info('[%s] finished at step %d: skipping', stage, int(state.step))
      return stored_meta['test']
    logging.info('[%s] resuming from step %d', stage, int(state.step))

  def save_fn(step, rstate, force):
    ckpt.save(manager, step, state=parallel.unreplicate(rstate), data=train_iter.get_state(), meta=meta,
              force=force)

  step_fn = parallel.compile(functools.partial(train_lib.train_step, apply_fn=model.apply, tx=tx,
                                               label_smoothing=float(cfg.label_smoothing)))
  writer = train_lib.MetricWriter(ckpt.abs_path(workdir), stage)
  rstate = train_lib.fit(parallel.replicate(state), step_fn=step_fn, parallel=parallel, frozen={},
                         train_iter=train_iter, num_steps=num_steps, global_batch=config.batch_size, name=stage,
                         save_fn=save_fn, writer=writer, log_every=config.log_every_steps,
                         checkpoint_every=config.checkpoint_every_steps)
  eval_fn = parallel.compile(functools.partial(train_lib.eval_step, apply_fn=model.apply), donate_state=False)
  test = train_lib.evaluate(rstate, eval_fn=eval_fn, parallel=parallel, frozen={},
                            batches=eval_batches(config, eval_source, label_mode=label_mode))
  writer.write(num_steps, config.eval_split, test)
  logging.info('[%s] %s: %s', stage, config.eval_split, test)
  if jax.process_index() == 0:
    print(f'[{stage}] {config.eval_split} loss {test["loss"]:.4f} top-1 {test["accuracy"]:.4f} '
          f'({int(test["count"])} images)', flush=True)
  # The final checkpoint carries the test metrics: its presence marks the stage finished.
  ckpt.save(manager, num_steps, state=parallel.unreplicate(rstate), data=train_iter.get_state(),
            meta={**meta, 'test': test})
  return test


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs ``config.stages`` in order; returns each stage's test metrics."""
  unknown = [s for s in config.stages if s not in STAGES]
  if unknown:
    raise ValueError(f'Unknown stages {unknown} in config.stages; known: {STAGES}.')
  if jax.process_index() == 0:
    previous = config_lib.path(workdir)
    if os.path.exists(previous):
      changed = config_lib.differences(config_lib.read(workdir), config)
      if changed:
        logging.warning('%d config field(s) differ from the previous run in %s:\n  %s', len(changed), workdir,
                        '\n  '.join(changed))
    config_lib.write(config, workdir)  # evaluate.py and convert read it: no --config needed there
  results = {}
  for stage in config.stages:
    if stage == 'specialists':
      from supersub_jax import specialists  # pylint: disable=g-import-not-at-top
      results[stage] = specialists.train_specialists(config, workdir)
    else:
      results[stage] = train_network(config, workdir, stage)
  return results
