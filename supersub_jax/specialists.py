"""The specialists stage: per superclass, a sparse fake-quantized delta over the generalist plus a new head.

For superclass k the trainable pytree is ``{'delta': delta, 'head': head}``:

* ``delta`` has the structure of the generalist's backbone params (``None`` on leaves that carry no delta, see
  ``config.specialists.leaves``); the model sees ``base + fake_quant(delta * mask)`` (``delta.materialize``),
  formed inside the compiled step from the frozen base, which is replicated once and shared by all specialists.
* ``head`` is a new dense classifier over the superclass's subclasses, padded to the largest superclass so that
  every specialist has the same shapes (``logit_mask`` hides the padding); only its ``n_k`` real columns are exported.
  It starts random, or (``config.specialists.head_from='init'``) as config.init's subclass head restricted to those
  columns (``head_from_flat``).
* BatchNorm statistics are per specialist, initialised from the generalist's.
* ``config.specialists.branch`` (a ``models`` layer group) shares a trunk: the layers before it carry no delta and
  run in eval mode with the generalist's statistics, so they stay the generalist's exactly, and two-stage
  inference runs them once per image. 'stem' (nothing shared) puts a delta on every backbone layer; 'head' keeps
  the generalist's features and trains a head alone. Only the statistics from the branch on are exported.

Two stages train specialists (``choices.SPECIALIST_STAGES``), each into its own directory: ``specialists``, and the
optional baseline ``head_only``, the same settings at branch 'head' (``stage_settings``): what the generalist's
features give without a delta, the floor of what the deltas add.

The sparsity mask lives in ``TrainState.masks`` and follows ``config.specialists.sparsity_schedule``; it is updated
and re-applied inside the same compiled step, so masked entries are exactly zero after every step.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np

from supersub_jax import checkpoint as ckpt
from supersub_jax import cut as cut_lib
from supersub_jax import delta as delta_lib
from supersub_jax import exported as exported_lib
from supersub_jax import files
from supersub_jax import models
from supersub_jax import runner
from supersub_jax import runtime
from supersub_jax import setup_of
from supersub_jax import sparsity
from supersub_jax import stages
from supersub_jax import step as step_lib
from supersub_jax import weights
from supersub_jax import workdir as workdir_lib
from supersub_jax.choices import SPECIALIST_STAGES

PyTree = Any



def stage_settings(config, stage: str = 'specialists'):
  """``config.specialists`` as ``stage`` trains it: ``head_only`` takes the same settings at branch 'head'."""
  if stage not in SPECIALIST_STAGES:
    raise ValueError(f'{stage!r} is not a specialist stage; use one of {SPECIALIST_STAGES}.')
  cfg = config.specialists
  if stage == 'head_only':
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.branch = 'head'
  return cfg


def make_apply_fn(model, cut: cut_lib.Cut):
  """``model.apply`` for a specialist that branches at ``cut``: a shared trunk is frozen. It always normalises with
  its running averages, so training neither uses nor changes batch statistics there, and no gradient flows into
  it (nor is the backward pass through it computed)."""
  if not cut.shares_trunk:
    return model.apply

  def apply(variables, images, train: bool = True, mutable=False):
    trunk_out = jax.lax.stop_gradient(model.apply(variables, images, train=False, stop=cut.name))
    return model.apply(variables, trunk_out, train=train, start=cut.name, mutable=mutable)

  return apply


def make_params_fn(dcfg: delta_lib.DeltaConfig):
  """(trainable, base, masks) -> model params: the specialist's dense weights, formed transiently."""

  def params_fn(trainable, base, masks):
    return {**delta_lib.materialize(base, trainable['delta'], masks, dcfg), 'head': trainable['head']}

  return params_fn


def pruned_masks(delta: PyTree, masks: PyTree, density, cfg) -> PyTree:
  """``sparsity.update_masks`` over the delta leaves that ``cfg.dense_leaves`` does not name; the masks of the
  leaves it names (a regex over '/'-joined paths, '' for none) are returned unchanged, so those leaves stay whole
  and take no share of a global budget."""
  if not cfg.dense_leaves:
    return sparsity.update_masks(delta, masks, density, cfg.sparsity_scope)
  dense = re.compile(cfg.dense_leaves)

  def sparse(tree):
    return jax.tree_util.tree_map_with_path(lambda path, x: None if dense.search(delta_lib.path_str(path)) else x,
                                            tree)

  updated = sparsity.update_masks(sparse(delta), sparse(masks), density, cfg.sparsity_scope)
  by_path = {delta_lib.path_str(path): m for path, m in jax.tree_util.tree_flatten_with_path(updated)[0]}
  return jax.tree_util.tree_map_with_path(lambda path, m: by_path.get(delta_lib.path_str(path), m), masks)


def make_post_update(cfg, num_steps: int):
  """Mask schedule + re-masking, run inside the compiled step after the optimizer update."""
  begin = int(round(cfg.prune_begin_fraction * num_steps))
  end = max(int(round(cfg.prune_end_fraction * num_steps)), begin + 1)
  schedule = sparsity.make_density_schedule(cfg.sparsity_schedule, float(cfg.density), begin, end)
  every = max(int(cfg.mask_update_every), 1)

  def post_update(state: step_lib.TrainState) -> step_lib.TrainState:
    step = state.step  # steps done, after this update
    delta = state.params['delta']
    density = schedule(step)
    # Update on the schedule's grid and at its end, so the final density is exactly the target.
    due = ((step % every == 0) & (step >= begin) & (step <= end)) | (step == end)
    masks = jax.lax.cond(due, lambda: pruned_masks(delta, state.masks, density, cfg), lambda: state.masks)
    params = {**state.params, 'delta': sparsity.apply_masks(delta, masks)}
    return state.replace(params=params, masks=masks)

  return post_update


def initial_state(base, head, batch_stats, dcfg: delta_lib.DeltaConfig, tx, cut: cut_lib.Cut) -> step_lib.TrainState:
  """A specialist's TrainState before its first step (host arrays): a zero delta over ``base`` (the generalist's
  backbone params) with dense masks, ``head`` ({'kernel', 'bias'}) and ``batch_stats`` to train on."""
  if cut.keeps_backbone:  # nothing below the head changes: an empty delta (init_delta refuses to select nothing)
    delta = jax.tree.map(lambda _: None, base)
  else:
    delta = delta_lib.init_delta(base, dcfg.pattern, dcfg.exclude)
  trainable = jax.device_get({'delta': delta, 'head': head})
  masks = jax.device_get(sparsity.dense_masks(trainable['delta']))
  return step_lib.create_train_state(trainable, jax.tree.map(np.asarray, batch_stats), tx, masks=masks)


def head_from_flat(head: PyTree, flat_head: PyTree, labels) -> dict:
  """A specialist's head started from a flat network's: ``head``'s columns j where ``labels[j] >= 0`` replaced by
  the flat head's column ``labels[j]``.

  Args:
    head: {'kernel': float[F, S + d], 'bias': float[S + d]}, a fresh head (S = max_subclasses, d dustbin columns).
    flat_head: {'kernel': float[F, M], 'bias': float[M]}, the head of a flat network over all M subclasses
      (global labels, ``hierarchy.Hierarchy``).
    labels: int[S], the global label of each local index of the superclass, -1 on padding
      (``hierarchy.local_to_label[k]``).

  Returns:
    {'kernel', 'bias'} as numpy arrays of ``head``'s shapes and dtypes: on the superclass's subclasses the specialist
    answers as the flat network's logits restricted to them; padding and dustbin columns are ``head``'s.
  """
  kernel, bias = np.array(head['kernel']), np.array(head['bias'])
  flat_kernel, flat_bias = np.asarray(flat_head['kernel']), np.asarray(flat_head['bias'])
  if flat_kernel.shape[0] != kernel.shape[0]:
    raise ValueError(f'the flat head reads {flat_kernel.shape[0]} features, the specialist\'s {kernel.shape[0]}: '
                     'config.init must be the same architecture (width) as the run.')
  labels = np.asarray(labels)
  real = np.flatnonzero(labels >= 0)
  if labels[real].max(initial=-1) >= flat_kernel.shape[1]:
    raise ValueError(f'subclass label {labels[real].max()} is past the flat head\'s {flat_kernel.shape[1]} outputs: '
                     "config.init's head is not over this hierarchy's subclasses.")
  kernel[:, real] = flat_kernel[:, labels[real]]
  bias[real] = flat_bias[labels[real]]
  return {'kernel': kernel, 'bias': bias}


def _init_state(generalist, base, dcfg, tx, outputs: int, seed: int, cut: cut_lib.Cut, flat_head=None, labels=None):
  """Specialist training's first state: a fresh head of ``outputs`` outputs (the flat head's columns of ``labels``
  where ``flat_head`` is given, ``head_from_flat``), the generalist's statistics."""
  head = models.init_head(outputs, np.shape(generalist.params['head']['kernel'])[0], jax.random.key(seed))
  if flat_head is not None:
    head = head_from_flat(jax.device_get(head), flat_head, labels)
  return initial_state(base, head, generalist.batch_stats, dcfg, tx, cut)


def init_flat_head(config, setup: setup_of.Setup) -> dict | None:
  """config.init's subclass head ({'kernel': float[F, M], 'bias': float[M]}) where
  ``config.specialists.head_from`` is 'init', else None."""
  if config.specialists.head_from != 'init':
    return None
  if not config.init.path:
    raise ValueError("specialists.head_from='init' needs config.init.path (a flat network over the hierarchy's "
                     "subclasses); give it, or use head_from='random'.")
  flat = weights.load_network(ckpt.abs_path(config.init.path), config.init.format, setup.flat)
  return jax.device_get(flat['params']['head'])


def superclass_confusion(config, generalist: workdir_lib.Network, hierarchy) -> np.ndarray:
  """float64[N, N]: row j, column k is the generalist's mean p(k | x) over the training images x of superclass j
  (eval mode, no augmentation); the weights of ``dustbin_others='confused'`` (column k, diagonal excluded)."""
  source = stages.load_source(config, 'train', hierarchy)
  apply = jax.jit(functools.partial(generalist.model.apply, train=False))
  variables = {'params': generalist.params, 'batch_stats': generalist.batch_stats}
  n = hierarchy.num_superclasses
  sums, counts = np.zeros((n, n)), np.zeros(n)
  for batch in stages.eval_batches(config, source, label_mode='superclass', process_index=0, process_count=1,
                                   local_device_count=1):
    real = batch['mask'].reshape(-1) > 0
    images = batch['image'].reshape((-1,) + batch['image'].shape[2:])
    probs = np.asarray(jax.nn.softmax(apply(variables, images)), np.float64)[real]
    truth = batch['superclass'].reshape(-1)[real]
    np.add.at(sums, truth, probs)
    counts += np.bincount(truth, minlength=n)
  return sums / np.maximum(counts, 1.0)[:, None]


def _label(stage: str) -> str:
  """How logs and metrics name one specialist of ``stage``: 'specialist' for the main stage."""
  return 'specialist' if stage == 'specialists' else stage


def _job(config, workdir: str, hierarchy, k: int, num_steps: int, generalist_fingerprint: str,
         stage: str) -> runner.Job:
  superclass = hierarchy.superclasses[k]
  meta = {'stage': stage, 'superclass': k, 'name': superclass.name,
          'num_subclasses': len(superclass.subclasses), 'config': stages.config_json(config),
          'hierarchy': hierarchy.to_dict(), 'fingerprints': {'generalist': generalist_fingerprint}}
  return runner.Job(f'{_label(stage)} {k} {superclass.name}', stage,
                    workdir_lib.specialist_dir(workdir, hierarchy, k, stage), num_steps, meta,
                    workdir_lib.SPECIALIST_ITEMS)


def train_specialists(config, workdir: str, setup: setup_of.Setup, *, stage: str = 'specialists',
                      preemption: runtime.Preemption | None = None) -> dict:
  """Trains one specialist of ``stage`` (``SPECIALIST_STAGES``) per superclass
  (``config.specialists.superclasses``, default all); returns the summary (per-specialist oracle accuracy and bytes,
  and the storage report) also written to ``<workdir>/<stage>/summary.json``."""
  cfg = stage_settings(config, stage)
  hierarchy = setup.hierarchy
  generalist = workdir_lib.load_network(config, workdir, 'superclass', setup)
  generalist_fingerprint = runner.fingerprint(generalist.params, generalist.batch_stats)
  base, _ = cut_lib.split_head(generalist.params)
  dcfg = setup_of.delta_config(cfg)
  parallel = runtime.Parallel(config.parallelism)
  frozen = parallel.replicate(base)  # held once on each device for all specialists
  d = int(bool(cfg.dustbin))  # the dustbin column, after the S = max_subclasses real (or padding) ones
  model = setup.specialist  # S = max_subclasses outputs, + d
  cut = cut_lib.Cut(cfg.branch)
  cut.check(model)
  apply_fn = make_apply_fn(model, cut)
  params_fn = make_params_fn(dcfg)
  eval_fn = parallel.compile(
      lambda state, batch, frozen_and_mask: step_lib.eval_step(
          state, batch, frozen_and_mask['base'], apply_fn=apply_fn, params_fn=params_fn,
          logit_mask=frozen_and_mask['eval_mask']), donate_state=False)

  @functools.cache
  def compiled_step(num_steps: int):
    """The step for a specialist budget of ``num_steps``: one compile per distinct budget, shared by all
    specialists with that budget (the logit mask and base are data, not constants)."""
    tx = step_lib.make_optimizer(cfg, num_steps)
    fn = parallel.compile(
        lambda state, batch, frozen_and_mask: step_lib.train_step(
            state, batch, frozen_and_mask['base'], apply_fn=apply_fn, tx=tx, params_fn=params_fn,
            label_smoothing=float(cfg.label_smoothing), logit_mask=frozen_and_mask['logit_mask'],
            post_update=make_post_update(cfg, num_steps), skip_nonfinite=config.nonfinite == 'skip'))
    return tx, fn

  which = list(cfg.superclasses) or list(range(hierarchy.num_superclasses))
  flat_head = init_flat_head(config, setup)
  all_train = stages.load_source(config, 'train', hierarchy) if d else None
  confusion = superclass_confusion(config, generalist, hierarchy) if d and cfg.dustbin_others == 'confused' else None
  results = {}
  for k in which:
    n_k = int(hierarchy.sizes[k])
    train_source = stages.load_source(config, 'train', hierarchy, superclass=k)
    eval_source = stages.load_source(config, config.eval_split, hierarchy, superclass=k)
    num_steps = stages.specialist_steps(cfg, len(train_source), config.batch_size)
    job = _job(config, workdir, hierarchy, k, num_steps, generalist_fingerprint, stage)
    tx, step_fn = compiled_step(num_steps)
    writer = runner.MetricWriter(ckpt.abs_path(workdir), f'{_label(stage)}_{k}')
    valid = np.asarray(hierarchy.local_valid[k])
    # Training may answer "not mine" (the dustbin); the held-out score is the specialist's own subclasses only.
    extra = {'base': frozen, 'logit_mask': parallel.replicate(np.concatenate([valid, [True] * d])),
             'eval_mask': parallel.replicate(np.concatenate([valid, [False] * d]))}
    seed = int(config.seed) + 100 + k
    fresh_state = functools.partial(_init_state, generalist, base, dcfg, tx, hierarchy.max_subclasses + d, seed, cut,
                                    flat_head, hierarchy.local_to_label[k])
    mix, dustbin = None, None
    if d:
      shares = None if confusion is None else confusion[:, k]
      mix = (all_train.outside(k, local=hierarchy.max_subclasses, weights=shares, seed=seed),
             float(cfg.dustbin_fraction))
      prior = len(train_source) / len(all_train)
      dustbin = {'fraction': float(cfg.dustbin_fraction), 'others': cfg.dustbin_others, 'prior': prior}
      dustbin['logit_correction'] = exported_lib.dustbin_logit_correction(dustbin)

    def evaluate(rstate, extra=extra, eval_source=eval_source):
      return runner.eval_metrics(rstate, eval_fn=eval_fn, parallel=parallel, frozen=extra,
                                batches=stages.eval_batches(config, eval_source, label_mode='local'))

    def finish(host_state, metrics, job=job, k=k, n_k=n_k, num_steps=num_steps, writer=writer, dustbin=dustbin):
      exported = exported_lib.export(host_state.params['delta'], host_state.masks, host_state.params['head'],
                                     cut.split(host_state.batch_stats)[1], dcfg, n_k, cut=cut, dustbin=dustbin)
      spec = exported.pop('spec')  # JSON, kept in the checkpoint's metadata; the arrays are an orbax item
      spec['superclass'] = k  # which one it serves: a specialist moved to another's place is found at load
      spec['model'] = setup_of.model_description(config)  # the architecture its delta fits, as the bundle states it
      nbytes = exported_lib.exported_nbytes(exported)
      kept = spec['delta']['density']
      summary = {'superclass': k, 'name': job.meta['name'], 'num_subclasses': n_k, 'num_steps': num_steps,
                 'oracle_top1': metrics['accuracy'], 'test_count': metrics['count'], 'density': kept,
                 'bytes': nbytes, 'total_bytes': sum(nbytes.values())}
      writer.write(num_steps, config.eval_split, {'accuracy': metrics['accuracy'], 'density': kept})
      if jax.process_index() == 0:
        print(f'[{job.name}] oracle top-1 {metrics["accuracy"]:.4f} on {int(metrics["count"])} images, density '
              f'{kept:.3f}, {summary["total_bytes"]:,} bytes', flush=True)
      return {'compressed': exported}, {'summary': summary, 'specialist': spec}

    with writer:
      result = runner.run_job(config, job, fresh_state=fresh_state, target=fresh_state(),
                              train_iter=stages.train_batches(config, train_source, label_mode='local', seed=seed,
                                                              mix=mix),
                              step_fn=step_fn, evaluate=evaluate, parallel=parallel, frozen=extra,
                              preemption=preemption, finish=finish, writer=writer)
    results[k] = result.meta['summary']

  base_bytes = delta_lib.tree_nbytes(generalist.params) + delta_lib.tree_nbytes(generalist.batch_stats)
  storage = exported_lib.storage_report(base_bytes, [results[k]['total_bytes'] for k in which])
  count = sum(r['test_count'] for r in results.values())
  oracle = sum(r['oracle_top1'] * r['test_count'] for r in results.values()) / max(count, 1)
  out = {'specialists': [results[k] for k in which], 'storage': storage, 'oracle_top1': oracle,
         'delta': {'density': float(cfg.density), 'bits': int(cfg.bits), 'granularity': cfg.granularity,
                   'leaves': cfg.leaves, 'branch': cfg.branch}}
  if jax.process_index() == 0:
    files.write_text(os.path.join(workdir_lib.stage_dir(workdir, stage), 'summary.json'), json.dumps(out, indent=2))
    print(f'[{stage}] oracle-routed top-1 {oracle:.4f}; storage {storage["factor"]:.3f} networks, '
          f'alpha {storage["alpha"]:.4f} (alpha*N+1 with N={storage["num_specialists"]})', flush=True)
  return out
from supersub_jax import cut as cut_lib
