"""Evaluation of a trained workdir: vanilla against Super-Sub on the held-out split (``config.eval_split``),
storage, memory and throughput.

``run(config, workdir)`` loads the checkpoints of the three stages, predicts every held-out image with the vanilla
network, the generalist and Super-Sub (top-1, oracle and top-2 routing), and writes ``report.json``, ``report.md``
and PNG plots into the workdir (schema in ``supersub_jax.report``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import resource
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from supersub_jax import bank as bank_lib
from supersub_jax import delta as delta_lib
from supersub_jax import exported as exported_lib
from supersub_jax import inference
from supersub_jax import report as report_lib
from supersub_jax import specialists
from supersub_jax import stages


def _apply_fn(model):
  @jax.jit
  def apply(variables, images):
    return model.apply(variables, images, train=False)
  return apply


def compiled_bytes(fn: Callable, *args) -> dict[str, int]:
  """XLA's compiled memory analysis of ``fn(*args)``: argument, output and temporary buffers."""
  analysis = fn.lower(*args).compile().memory_analysis()
  if analysis is None:
    return {}
  out = {k: int(getattr(analysis, f'{k}_size_in_bytes')) for k in ('argument', 'output', 'temp', 'alias')}
  out['total'] = out['argument'] + out['output'] + out['temp'] - out['alias']
  return out


def _peak_rss_bytes() -> int:
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(peak if sys.platform == 'darwin' else peak * 1024)


def collect_predictions(config, workdir: str, hierarchy, vanilla, state, generalist_model, specialist_model,
                        *, threshold: float, chunk_sizes: tuple[int, ...],
                        vanilla_matched: stages.Network | None = None,
                        head_only: bank_lib.SuperSub | None = None) -> dict[str, np.ndarray]:
  """Labels and predictions of every image of config.eval_split, as int arrays [M] (padding dropped); with
  ``vanilla_matched``, its predictions too, and with ``head_only``, Super-Sub's with the head-only specialists."""
  source = stages.load_source(config, config.eval_split, hierarchy)
  batches = stages.eval_batches(config, source, label_mode='subclass', batch_size=config.evaluate.batch_size,
                                process_index=0, process_count=1, local_device_count=1)
  vanilla_apply = _apply_fn(vanilla.model)
  vanilla_vars = {'params': vanilla.params, 'batch_stats': vanilla.batch_stats}
  keys = ('subclass', 'superclass', 'vanilla', 'generalist', 'supersub', 'oracle', 'top2', 'second')
  if vanilla_matched is not None:
    keys += ('vanilla_matched',)
    matched_apply = _apply_fn(vanilla_matched.model)
    matched_vars = {'params': vanilla_matched.params, 'batch_stats': vanilla_matched.batch_stats}
  if head_only is not None:
    keys += ('head_only',)
  out = {k: [] for k in keys}
  for batch in batches:
    keep = batch['mask'].reshape(-1) > 0
    images = jnp.asarray(batch['image'].reshape((-1,) + batch['image'].shape[2:]))
    superclass = batch['superclass'].reshape(-1)
    top1 = inference.predict(state, images, generalist_model=generalist_model, specialist_model=specialist_model,
                             chunk_sizes=chunk_sizes)
    oracle = inference.predict_oracle(state, images, jnp.asarray(superclass), specialist_model=specialist_model,
                                      chunk_sizes=chunk_sizes)
    top2 = inference.predict_top2(state, images, generalist_model=generalist_model,
                                  specialist_model=specialist_model, threshold=threshold, chunk_sizes=chunk_sizes)
    rows = {
        'subclass': batch['subclass'].reshape(-1), 'superclass': superclass,
        'vanilla': np.argmax(np.asarray(vanilla_apply(vanilla_vars, images)), -1),
        'generalist': np.asarray(top1['superclass']), 'supersub': np.asarray(top1['label']),
        'oracle': np.asarray(oracle['label']), 'top2': np.asarray(top2['label']),
        'second': np.asarray(top2['second']),
    }
    if vanilla_matched is not None:
      rows['vanilla_matched'] = np.argmax(np.asarray(matched_apply(matched_vars, images)), -1)
    if head_only is not None:
      rows['head_only'] = np.asarray(inference.predict(head_only, images, generalist_model=generalist_model,
                                                       specialist_model=specialist_model,
                                                       chunk_sizes=chunk_sizes)['label'])
    for k in keys:
      out[k].append(np.asarray(rows[k])[keep])
  return {k: np.concatenate(v) for k, v in out.items()}


class _Shuffled:
  """A random-access view of ``source`` in a fixed random order: held-out splits are often stored class by class,
  and consecutive images would all go to one specialist (routing's best case)."""

  def __init__(self, source, count: int, seed: int):
    self.source = source
    self.index = np.random.default_rng(seed).permutation(len(source))[:count]

  def __len__(self):
    return len(self.index)

  def __getitem__(self, i):
    return self.source[int(self.index[i])]


def held_out_batches(config, hierarchy, batch_size: int, count: int, seed: int = 0) -> list[np.ndarray]:
  """Up to ``count`` distinct batches float32[B, H, W, 3] of held-out images (config.eval_split), drawn in a fixed
  random order and preprocessed as evaluation preprocesses them; B = ``batch_size``, or the whole split if smaller.
  """
  source = stages.load_source(config, config.eval_split, hierarchy)
  batch_size = min(batch_size, len(source))
  count = max(1, min(count, len(source) // batch_size))
  view = _Shuffled(source, count * batch_size, seed)
  batches = stages.eval_batches(config, view, label_mode='subclass', batch_size=batch_size, process_index=0,
                                process_count=1, local_device_count=1)
  out = [np.asarray(b['image']).reshape((-1,) + b['image'].shape[2:]) for b in batches]
  return [x for x in out if x.shape[0] == batch_size][:count]


def median_seconds(fns: dict[str, Callable], batches: list) -> dict[str, float]:
  """Median seconds per call of each ``fn(batch)`` over ``batches`` (each on device), after one warm-up call
  (compilation); the functions alternate batch by batch, so drifts of the machine hit all of them alike."""
  for fn in fns.values():
    jax.block_until_ready(fn(batches[0]))
  times = {name: [] for name in fns}
  for x in batches:
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(x))
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}


def measure_inference(config, trained: Trained, *, chunk_sizes: tuple[int, ...]) -> dict:
  """Throughput and memory of the single network and of Super-Sub (top-1 routing) on real held-out batches.

  For each of ``config.evaluate.benchmark_batch_sizes``: ``config.evaluate.benchmark_batches`` distinct batches
  of held-out images in random order, so the generalist routes them as it routes the split; median seconds per
  call, both models alternating in this process. Memory: XLA's compiled memory analysis of one call at each batch
  size, and the parameter-resident bytes (what stays on device between calls, plus the one specialist
  materialized during a call).
  """
  repeats = int(config.evaluate.benchmark_batches)
  hierarchy, vanilla, state = trained.hierarchy, trained.vanilla, trained.state
  vanilla_vars = jax.device_put({'params': vanilla.params, 'batch_stats': vanilla.batch_stats})
  vanilla_apply = _apply_fn(vanilla.model)
  generalist_apply = _apply_fn(trained.generalist.model)
  predict = jax.jit(functools.partial(inference.predict, generalist_model=trained.generalist.model,
                                      specialist_model=trained.specialist_model, chunk_sizes=chunk_sizes))
  device = jax.devices()[0]
  by_batch_time, by_batch_memory = {}, {}
  for requested in sorted({int(x) for x in config.evaluate.benchmark_batch_sizes}):
    batches = [jax.device_put(x) for x in held_out_batches(config, hierarchy, requested, repeats)]
    b = int(batches[0].shape[0])
    seconds = median_seconds({'single': lambda x: vanilla_apply(vanilla_vars, x),
                               'supersub': lambda x: predict(state, x)}, batches)
    # How many specialists a batch reaches: the generalist's argmax alone (a second Super-Sub pass is not needed).
    groups = [len(np.unique(np.argmax(np.asarray(generalist_apply(state.generalist, x)), -1))) for x in batches]
    by_batch_time[str(b)] = {'single_ips': b / seconds['single'], 'supersub_ips': b / seconds['supersub'],
                             'ratio': seconds['single'] / seconds['supersub'],
                             'single_ms': 1e3 * seconds['single'], 'supersub_ms': 1e3 * seconds['supersub'],
                             'batches': len(batches), 'specialists_per_batch': float(np.mean(groups))}
    spec = jax.ShapeDtypeStruct(batches[0].shape, batches[0].dtype)
    single_mem = compiled_bytes(vanilla_apply, vanilla_vars, spec)
    supersub_mem = compiled_bytes(predict, state, spec)
    by_batch_memory[str(b)] = {'single_bytes': single_mem.get('total', 0), 'supersub_bytes': supersub_mem.get('total', 0),
                               'single_detail': single_mem, 'supersub_detail': supersub_mem}
  largest = str(max(int(b) for b in by_batch_time))
  one_specialist = jax.eval_shape(lambda: inference.specialist_variables(
      state.bank, state.base, 0, state.hierarchy.max_subclasses))
  resident = {'single_bytes': delta_lib.tree_nbytes(vanilla_vars),
              'generalist_bytes': delta_lib.tree_nbytes(state.generalist),
              'bank_bytes': bank_lib.nbytes(state.bank),
              'specialist_bytes': int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(one_specialist)))}
  resident['supersub_bytes'] = resident['generalist_bytes'] + resident['bank_bytes'] + resident['specialist_bytes']
  memory = {'single_bytes': by_batch_memory[largest]['single_bytes'],
            'supersub_bytes': by_batch_memory[largest]['supersub_bytes'],
            'batch_size': int(largest), 'by_batch': by_batch_memory, 'params_resident': resident,
            'bank_bytes': resident['bank_bytes'], 'process_peak_rss_bytes': _peak_rss_bytes(),
            'method': 'XLA compiled memory analysis (arguments + outputs + temporaries - aliases) of one jitted '
                      f'call per batch size on {device.platform}; params_resident: generalist + bank + one '
                      'materialized specialist, against the single network\'s params and BatchNorm statistics'}
  stats = getattr(device, 'memory_stats', lambda: None)()
  if stats and 'peak_bytes_in_use' in stats:
    memory['device_peak_bytes_in_use'] = int(stats['peak_bytes_in_use'])
  throughput = {'single_ips': by_batch_time[largest]['single_ips'],
                'supersub_ips': by_batch_time[largest]['supersub_ips'], 'batch_size': int(largest),
                'ratio': by_batch_time[largest]['ratio'], 'by_batch': by_batch_time,
                'device': str(device.device_kind), 'repeats': repeats, 'chunk_sizes': list(chunk_sizes),
                'method': f'median seconds per call over {repeats} distinct {config.eval_split} batches per batch '
                          'size, drawn in random order and routed as the generalist routes them; single network '
                          'and Super-Sub alternating in one process, after a warm-up call'}
  return {'memory': memory, 'throughput': throughput}


@dataclasses.dataclass
class Trained:
  """A finished workdir, loaded for inference: the networks, the exported specialists and the SuperSub state
  (``vanilla_matched``: the compute-matched baseline, and ``head_only``: the SuperSub state of the head-only
  specialists, when ``config.stages`` trains them)."""
  hierarchy: Any
  vanilla: stages.Network
  generalist: stages.Network
  exported: list
  state: bank_lib.SuperSub
  specialist_model: Any
  vanilla_matched: stages.Network | None = None
  head_only: bank_lib.SuperSub | None = None


def load_trained(config, workdir: str) -> Trained:
  """Loads the vanilla network, the generalist and every specialist of ``workdir`` (checked against ``config``)."""
  hierarchy = stages.make_hierarchy(config)
  vanilla = stages.load_network(config, workdir, 'vanilla', hierarchy)
  generalist = stages.load_network(config, workdir, 'superclass', hierarchy)
  exported = [specialists.load_exported(config, workdir, k, generalist, hierarchy)
              for k in range(hierarchy.num_superclasses)]
  state = bank_lib.build_supersub({'params': generalist.params, 'batch_stats': generalist.batch_stats}, exported,
                                  hierarchy)
  matched = head_only = None
  if 'vanilla_matched' in config.stages:
    matched = stages.load_network(config, workdir, 'vanilla_matched', hierarchy)
  if 'head_only' in config.stages:
    head_only = bank_lib.build_supersub(
        {'params': generalist.params, 'batch_stats': generalist.batch_stats},
        [specialists.load_exported(config, workdir, k, generalist, hierarchy, stage='head_only')
         for k in range(hierarchy.num_superclasses)], hierarchy)
  return Trained(hierarchy, vanilla, generalist, exported, state,
                 stages.make_model(config, hierarchy.max_subclasses), matched, head_only)


def run(config, workdir: str) -> dict:
  """Evaluates the trained workdir; writes report.json, report.md and PNGs there; returns the report."""
  workdir = stages.ckpt.abs_path(workdir)
  trained = load_trained(config, workdir)
  hierarchy, vanilla, generalist, exported, state = (trained.hierarchy, trained.vanilla, trained.generalist,
                                                     trained.exported, trained.state)
  specialist_model = trained.specialist_model
  n = hierarchy.num_superclasses
  threshold = float(config.evaluate.top2_threshold)
  chunk_sizes = tuple(int(c) for c in config.evaluate.chunk_sizes)
  p = collect_predictions(config, workdir, hierarchy, vanilla, state, generalist.model, specialist_model,
                          threshold=threshold, chunk_sizes=chunk_sizes, vanilla_matched=trained.vanilla_matched,
                          head_only=trained.head_only)

  l2s = np.asarray(hierarchy.label_to_superclass)
  acc = report_lib.accuracy
  per_superclass = []
  for k, sup in enumerate(hierarchy.superclasses):
    sel = p['superclass'] == k
    per_superclass.append({
        'index': k, 'name': sup.name, 'wnid': sup.wnid, 'num_subclasses': len(sup.subclasses),
        'test_count': int(sel.sum()), 'vanilla_top1': acc(p['vanilla'][sel], p['subclass'][sel]),
        'supersub_top1': acc(p['supersub'][sel], p['subclass'][sel]),
        'oracle_top1': acc(p['oracle'][sel], p['subclass'][sel]),
        'routing_top1': acc(p['generalist'][sel], p['superclass'][sel])})

  # Storage: the generalist (params + BatchNorm statistics) once, then each specialist's exported bytes.
  base_bytes = delta_lib.tree_nbytes(generalist.params) + delta_lib.tree_nbytes(generalist.batch_stats)
  parts = [exported_lib.exported_nbytes(e) for e in exported]
  storage = exported_lib.storage_report(base_bytes, [sum(b.values()) for b in parts])
  storage.update({'num_superclasses': n, 'delta_bytes': sum(b['delta'] for b in parts),
                  'head_bytes': sum(b['head'] for b in parts),
                  'batch_stats_bytes': sum(b['batch_stats'] for b in parts),
                  'vanilla_bytes': delta_lib.tree_nbytes(vanilla.params) + delta_lib.tree_nbytes(vanilla.batch_stats)})

  report = {
      'dataset': config.dataset, 'split': config.eval_split, 'hierarchy': hierarchy.name,
      'num_subclasses': hierarchy.num_subclasses,
      'test_count': int(len(p['subclass'])),
      'vanilla': {'top1': acc(p['vanilla'], p['subclass']),
                  'superclass_top1': acc(l2s[p['vanilla']], p['superclass'])},
      'superclass': {'top1': acc(p['generalist'], p['superclass'])},
      'supersub': {'top1': acc(p['supersub'], p['subclass']), 'oracle_top1': acc(p['oracle'], p['subclass']),
                   'top2_top1': acc(p['top2'], p['subclass']), 'top2_threshold': threshold,
                   'top2_second_fraction': float(np.mean(p['second'])), 'branch': state.cut.name,
                   'top1_minus_vanilla': acc(p['supersub'], p['subclass']) - acc(p['vanilla'], p['subclass'])},
      'errors': report_lib.error_breakdown(p['vanilla'], p['subclass'], l2s),
      'supersub_errors': report_lib.error_breakdown(p['supersub'], p['subclass'], l2s),
      'per_superclass': per_superclass,
      'storage': storage,
      'compute': {'vanilla_steps': vanilla.steps, 'supersub_steps': stages.pipeline_steps(
          config, hierarchy), 'batch_size': int(config.batch_size)},
  }
  # The optional baselines: the flat network trained for Super-Sub's whole budget, and Super-Sub with head-only
  # specialists (the same routes, no delta).
  for name in ('vanilla_matched', 'head_only'):
    if name in p:
      top1 = acc(p[name], p['subclass'])
      report.setdefault('baselines', {})[name] = {'top1': top1, 'supersub_minus': report['supersub']['top1'] - top1}
      for k, row in enumerate(per_superclass):
        sel = p['superclass'] == k
        row[f'{name}_top1'] = acc(p[name][sel], p['subclass'][sel])
  if 'vanilla_matched' in p:
    report['baselines']['vanilla_matched']['steps'] = trained.vanilla_matched.steps
  report.update(measure_inference(config, trained, chunk_sizes=chunk_sizes))
  report['memory']['bank_export_bytes'] = sum(sum(b.values()) for b in parts)

  if jax.process_index() == 0:
    names = [s.name for s in hierarchy.superclasses]
    plots = ['confusion_superclass.png', 'confusion_largest_superclass.png', 'per_superclass.png']
    report_lib.plot_confusion(report_lib.confusion_matrix(l2s[p['vanilla']], p['superclass'], n), names,
                              os.path.join(workdir, plots[0]),
                              'Vanilla network, superclass of its prediction (rows: true superclass)')
    largest = int(np.argmax(hierarchy.sizes))
    sel = p['superclass'] == largest
    offset, size = int(hierarchy.offsets[largest]), int(hierarchy.sizes[largest])
    # Predictions outside the superclass go to an extra last column ('other superclass').
    pred_local = np.where(l2s[p['vanilla'][sel]] == largest, p['vanilla'][sel] - offset, size)
    cm = report_lib.confusion_matrix(pred_local, p['subclass'][sel] - offset, size + 1)[:size]
    sub_names = [s.name.split('/')[-1] for s in hierarchy.superclasses[largest].subclasses]
    report_lib.plot_confusion(cm, sub_names, os.path.join(workdir, plots[1]),
                              f'Vanilla network within "{names[largest]}" ({size} subclasses)',
                              col_names=sub_names + ['other superclass'])
    report_lib.plot_per_superclass(names, [r['vanilla_top1'] for r in per_superclass],
                                   [r['oracle_top1'] for r in per_superclass],
                                   [r['supersub_top1'] for r in per_superclass], os.path.join(workdir, plots[2]))
    report['plots'] = plots
    report_lib.write(report, workdir)
  return report
