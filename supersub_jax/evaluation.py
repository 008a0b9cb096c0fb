"""Evaluation of a trained workdir: vanilla against Super-Sub on the held-out split (``config.eval_split``),
storage, memory and throughput.

``run(config, workdir)`` loads the checkpoints of the three stages, predicts every held-out image with the vanilla
network, the generalist and Super-Sub (top-1, oracle and top-2 routing), and writes ``report.json``, ``report.md``
and PNG plots into the workdir (schema in ``supersub_jax.report``).
"""

from __future__ import annotations

import functools
import os
import resource
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from supersub_jax import delta as delta_lib
from supersub_jax import inference
from supersub_jax import report as report_lib
from supersub_jax import specialists
from supersub_jax import stages


def _apply_fn(model):
  @jax.jit
  def apply(variables, images):
    return model.apply(variables, images, train=False)
  return apply


def _compiled_bytes(fn: Callable, *args) -> dict[str, int]:
  """XLA's compiled memory analysis of ``fn(*args)``: argument, output and temporary buffers."""
  analysis = fn.lower(*args).compile().memory_analysis()
  if analysis is None:
    return {}
  out = {k: int(getattr(analysis, f'{k}_size_in_bytes')) for k in ('argument', 'output', 'temp', 'alias')}
  out['total'] = out['argument'] + out['output'] + out['temp'] - out['alias']
  return out


def _time(fn: Callable[[], Any], repeats: int) -> float:
  """Seconds per call after one warm-up call (compilation), blocking on the result."""
  jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn())
  return (time.perf_counter() - start) / max(repeats, 1)


def _peak_rss_bytes() -> int:
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(peak if sys.platform == 'darwin' else peak * 1024)


def collect_predictions(config, workdir: str, hierarchy, vanilla, state, generalist_model, specialist_model,
                        *, threshold: float, chunk_size: int) -> dict[str, np.ndarray]:
  """Labels and predictions of every image of config.eval_split, as int arrays [M] (padding dropped)."""
  source = stages.load_source(config, config.eval_split, hierarchy)
  batches = stages.eval_batches(config, source, label_mode='subclass', batch_size=config.evaluate.batch_size,
                                process_index=0, process_count=1, local_device_count=1)
  vanilla_apply = _apply_fn(vanilla.model)
  vanilla_vars = {'params': vanilla.params, 'batch_stats': vanilla.batch_stats}
  keys = ('subclass', 'superclass', 'vanilla', 'generalist', 'supersub', 'oracle', 'top2', 'second')
  out = {k: [] for k in keys}
  for batch in batches:
    keep = batch['mask'].reshape(-1) > 0
    images = jnp.asarray(batch['image'].reshape((-1,) + batch['image'].shape[2:]))
    superclass = batch['superclass'].reshape(-1)
    top1 = inference.predict(state, images, generalist_model=generalist_model, specialist_model=specialist_model,
                             chunk_size=chunk_size)
    oracle = inference.predict_oracle(state, images, jnp.asarray(superclass), specialist_model=specialist_model,
                                      chunk_size=chunk_size)
    top2 = inference.predict_top2(state, images, generalist_model=generalist_model,
                                  specialist_model=specialist_model, threshold=threshold, chunk_size=chunk_size)
    rows = {
        'subclass': batch['subclass'].reshape(-1), 'superclass': superclass,
        'vanilla': np.argmax(np.asarray(vanilla_apply(vanilla_vars, images)), -1),
        'generalist': np.asarray(top1['superclass']), 'supersub': np.asarray(top1['label']),
        'oracle': np.asarray(oracle['label']), 'top2': np.asarray(top2['label']),
        'second': np.asarray(top2['second']),
    }
    for k in keys:
      out[k].append(np.asarray(rows[k])[keep])
  return {k: np.concatenate(v) for k, v in out.items()}


def measure_inference(config, vanilla, state, generalist_model, specialist_model, *, chunk_size: int) -> dict:
  """Memory (XLA compiled analysis; device peak on accelerators) and images/s at the evaluation batch size."""
  batch = int(config.evaluate.batch_size)
  images = jnp.zeros((batch, config.image_size, config.image_size, 3), jnp.float32)
  vanilla_vars = jax.device_put({'params': vanilla.params, 'batch_stats': vanilla.batch_stats})
  vanilla_apply = _apply_fn(vanilla.model)
  predict = functools.partial(inference.predict, generalist_model=generalist_model,
                              specialist_model=specialist_model, chunk_size=chunk_size)
  single_mem = _compiled_bytes(vanilla_apply, vanilla_vars, images)
  supersub_mem = _compiled_bytes(
      jax.jit(lambda s, x: inference.predict(s, x, generalist_model=generalist_model,
                                             specialist_model=specialist_model, chunk_size=chunk_size)),
      state, images)
  # Routing cost depends on how images spread over superclasses: time on real-looking routing (random images
  # route wherever the generalist sends them), repeated `benchmark_batches` times.
  repeats = int(config.evaluate.benchmark_batches)
  single_s = _time(lambda: vanilla_apply(vanilla_vars, images), repeats)
  supersub_s = _time(lambda: predict(state, images), repeats)
  memory = {'single_bytes': single_mem.get('total', 0), 'supersub_bytes': supersub_mem.get('total', 0),
            'single_detail': single_mem, 'supersub_detail': supersub_mem,
            'bank_bytes': int(inference.bank_nbytes(state.bank)),
            'process_peak_rss_bytes': _peak_rss_bytes(),
            'method': 'XLA compiled memory analysis (arguments + outputs + temporaries - aliases) of one jitted '
                      f'call at batch {batch} on {jax.devices()[0].platform}'}
  stats = getattr(jax.devices()[0], 'memory_stats', lambda: None)()
  if stats and 'peak_bytes_in_use' in stats:
    memory['device_peak_bytes_in_use'] = int(stats['peak_bytes_in_use'])
  throughput = {'single_ips': batch / single_s, 'supersub_ips': batch / supersub_s, 'batch_size': batch,
                'device': str(jax.devices()[0].device_kind), 'repeats': repeats}
  return {'memory': memory, 'throughput': throughput}


def run(config, workdir: str) -> dict:
  """Evaluates the trained workdir; writes report.json, report.md and PNGs there; returns the report."""
  workdir = stages.ckpt.abs_path(workdir)
  hierarchy = stages.make_hierarchy(config)
  n = hierarchy.num_superclasses
  vanilla = stages.load_network(config, workdir, 'vanilla', hierarchy)
  generalist = stages.load_network(config, workdir, 'superclass', hierarchy)
  exported = [specialists.load_exported(config, workdir, k, generalist, hierarchy) for k in range(n)]
  state = inference.build_supersub({'params': generalist.params, 'batch_stats': generalist.batch_stats}, exported,
                                   hierarchy)
  specialist_model = stages.make_model(config, hierarchy.max_subclasses)
  threshold = float(config.evaluate.top2_threshold)
  chunk_size = int(config.evaluate.chunk_size)
  p = collect_predictions(config, workdir, hierarchy, vanilla, state, generalist.model, specialist_model,
                          threshold=threshold, chunk_size=chunk_size)

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
  parts = [specialists.exported_nbytes(e) for e in exported]
  storage = delta_lib.storage_report(base_bytes, [sum(b.values()) for b in parts])
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
                   'top2_second_fraction': float(np.mean(p['second'])),
                   'top1_minus_vanilla': acc(p['supersub'], p['subclass']) - acc(p['vanilla'], p['subclass'])},
      'errors': report_lib.error_breakdown(p['vanilla'], p['subclass'], l2s),
      'supersub_errors': report_lib.error_breakdown(p['supersub'], p['subclass'], l2s),
      'per_superclass': per_superclass,
      'storage': storage,
  }
  report.update(measure_inference(config, vanilla, state, generalist.model, specialist_model,
                                  chunk_size=chunk_size))

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
