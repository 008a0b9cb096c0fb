"""The evaluation report: metrics from predictions (pure numpy), its JSON schema, markdown and PNG plots.

Wherever a person reads (the terminal table, report.md, the plots), the network of the 'vanilla' stage is "the flat
network" (``FLAT``); the JSON keys keep the stage's name. Both open with ``headline``, the verdict.

``report.json`` keys (nested objects; numbers are floats or ints), stable across versions:

=====================================  ==============================================================================
key                                    meaning
=====================================  ==============================================================================
``vanilla.top1``                       top-1 of the single network trained on all subclasses (the paper's baseline)
``superclass.top1``                    superclass accuracy of the generalist
``supersub.top1``                      Super-Sub top-1: generalist routes, the routed specialist classifies; a wrong
                                       superclass counts as an error
``supersub.oracle_top1``               Super-Sub with the true superclass given (the specialists' own accuracy)
``vanilla.oracle_top1``                the flat network with the true superclass given (its argmax among that
                                       superclass's subclasses): the reference for ``supersub.oracle_top1``
``supersub.top2_top1``                 Super-Sub with top-2 routing (uncertain images also run the second specialist)
``supersub.branch``                    the specialists' cut (their specs): layers before it are the generalist's, run once
``baselines.vanilla_matched.top1``     with the ``vanilla_matched`` stage: the flat network trained for Super-Sub's whole
                                       budget (``compute.supersub_steps.total`` steps); ``.supersub_minus`` the gap;
                                       ``.oracle_top1`` as ``vanilla.oracle_top1``
``baselines.head_only.top1``           with the ``head_only`` stage: Super-Sub with specialists that train a head on
                                       the generalist's features (no delta); ``.supersub_minus`` what deltas add
``compute.supersub_steps.total``       optimizer steps behind Super-Sub's predictions (``stages.pipeline_steps``)
``rules.<rule>.top1``                  Super-Sub's top-1 under each decision rule of ``config.evaluate.rules``
                                       (``decide.Rule.key``: 'hard', 'soft:2', 'hinton:2/mean', ...); beside it
                                       ``.specialists_per_image``, ``.images_per_s`` and ``.minus_vanilla`` (and
                                       ``.minus_vanilla_matched`` with the ``vanilla_matched`` stage)
``errors.within_superclass_fraction``  of the vanilla network's errors, the fraction whose prediction lies in the true
                                       superclass (the paper's finding (i))
``storage.factor``                     bytes of generalist + all specialists, in units of one network
``storage.alpha``                      alpha in storage = (alpha * N + 1) networks
``storage.num_superclasses``           N
``memory.single_bytes``                inference memory of the single network at ``memory.batch_size`` (see
                                       ``memory.method``; ``memory.by_batch`` has every timed batch size)
``memory.supersub_bytes``              inference memory of Super-Sub at the same batch
``throughput.single_ips``              images/s of the single network at ``throughput.batch_size``, on real
                                       held-out batches (``throughput.method``; ``throughput.by_batch``: batch 1 too)
``throughput.supersub_ips``            images/s of Super-Sub (top-1 routing, as the generalist routes those images)
=====================================  ==============================================================================

Also: ``supersub.minus_vanilla_interval`` and ``baselines.vanilla_matched.supersub_minus_interval``, the 95% paired
interval of the gap over the test images (``paired_difference``); ``compute.start``, the start both arms share;
``throughput.by_batch.<b>.{single,supersub}_ms_range`` and ``rules.<rule>.ms_range``, the fastest and slowest timed
call; ``evaluation``: the fingerprints of what the evaluation read and the parts it kept (``evaluation.run``).

Other keys (per-superclass tables, counts, top-2 cost, the naive N+1 factor, ...) may be added; those above stay.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from supersub_jax import files

REQUIRED_KEYS = (
    'vanilla.top1', 'superclass.top1', 'supersub.top1', 'supersub.oracle_top1', 'supersub.top2_top1',
    'errors.within_superclass_fraction', 'storage.factor', 'storage.alpha', 'storage.num_superclasses',
    'memory.single_bytes', 'memory.supersub_bytes', 'throughput.single_ips', 'throughput.supersub_ips',
)
_INT_KEYS = ('storage.num_superclasses', 'memory.single_bytes', 'memory.supersub_bytes')
# One name wherever a person reads: the network of the 'vanilla' stage (one network over all subclasses) is the
# flat network; report.json keeps the stage's name in its keys.
FLAT = 'flat network'
SEEDS_NOTE = ('one seed: the interval over seeds is in docs/benchmarks.md and docs/results/ '
              '(studies/seeds.py, studies/regimes.py)')


def get_path(report: Mapping, key: str):
  node: Any = report
  for part in key.split('.'):
    node = node[part]
  return node


def validate(report: Mapping) -> None:
  """Raises ValueError naming every missing or non-numeric required key."""
  problems = []
  for key in REQUIRED_KEYS:
    try:
      value = get_path(report, key)
    except (KeyError, TypeError):
      problems.append(f'{key}: missing')
      continue
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      problems.append(f'{key}: {value!r} is not a number')
    elif key in _INT_KEYS and not isinstance(value, int):
      problems.append(f'{key}: {value!r} should be an int')
  if problems:
    raise ValueError('report.json does not follow the schema:\n  ' + '\n  '.join(problems))


def accuracy(pred: np.ndarray, true: np.ndarray) -> float:
  return float(np.mean(np.asarray(pred) == np.asarray(true))) if len(true) else float('nan')


def error_breakdown(pred: np.ndarray, true: np.ndarray, label_to_superclass: np.ndarray) -> dict:
  """Splits a subclass classifier's errors into within- and across-superclass. pred, true int [M]."""
  pred, true = np.asarray(pred), np.asarray(true)
  wrong = pred != true
  within = wrong & (label_to_superclass[pred] == label_to_superclass[true])
  n_wrong = int(wrong.sum())
  return {'errors': n_wrong, 'within_superclass': int(within.sum()), 'across_superclass': int(n_wrong - within.sum()),
          'within_superclass_fraction': float(within.sum() / n_wrong) if n_wrong else 0.0,
          'error_rate': float(wrong.mean()) if len(true) else 0.0}


def per_superclass_accuracy(pred: np.ndarray, true: np.ndarray, superclass: np.ndarray, num_superclasses: int) -> list:
  """Accuracy of ``pred`` against ``true`` within each true superclass -> list of N floats (nan when empty)."""
  out = []
  for k in range(num_superclasses):
    sel = superclass == k
    out.append(accuracy(pred[sel], true[sel]) if sel.any() else float('nan'))
  return out


def paired_difference(a_right: np.ndarray, b_right: np.ndarray, confidence_z: float = 1.96) -> list[float]:
  """[mean, low, high] of top-1(a) - top-1(b) on the same images (bool [M] each: right or not), with the normal
  interval of a paired difference: what the choice of test images moves, not what a new seed would."""
  d = np.asarray(a_right, float) - np.asarray(b_right, float)
  if d.size < 2:
    return [float(d.mean()) if d.size else float('nan'), float('nan'), float('nan')]
  half = confidence_z * float(d.std(ddof=1)) / np.sqrt(d.size)
  return [float(d.mean()), float(d.mean()) - half, float(d.mean()) + half]


def confusion_matrix(pred: np.ndarray, true: np.ndarray, num_classes: int) -> np.ndarray:
  """int64 [num_classes, num_classes], rows = true class, columns = predicted class."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (np.asarray(true), np.asarray(pred)), 1)
  return cm


def build(p: Mapping[str, np.ndarray], hierarchy, *, dataset: str, split: str, storage: Mapping,
          compute: Mapping, top2_threshold: float, cut: str, matched_steps: int | None = None,
          rules: Mapping[str, int] | None = None) -> dict:
  """The report's metrics (the schema above, less memory and throughput) from held-out predictions.

  Args:
    p: int arrays [M] of one held-out split (``evaluation.collect_predictions``): 'subclass', 'superclass' (truth),
      'vanilla', 'generalist' (its superclass), 'supersub', 'oracle', 'top2' (labels), 'second' (bool: the image
      ran a second specialist), the optional baselines 'vanilla_matched' and 'head_only', and 'rule:<key>' for
      each decision rule (``decide.Rule.key``); optionally 'vanilla_oracle' and 'vanilla_matched_oracle' (the flat
      networks' labels within the true superclass).
    hierarchy: the ``hierarchy.Hierarchy`` of the labels.
    storage, compute: report.json's 'storage' and 'compute' (``evaluation.storage``, ``stages.pipeline_steps``).
    top2_threshold: the top-2 rule's threshold; cut: the specialists' cut; matched_steps: the steps the
      ``vanilla_matched`` network trained for (its checkpoint's); rules: decision rule key -> the specialists it
      runs per image, for the 'rule:<key>' predictions of ``p``.
  """
  l2s = np.asarray(hierarchy.label_to_superclass)
  truth = p['subclass']
  n = hierarchy.num_superclasses
  per_superclass = []
  for k, sup in enumerate(hierarchy.superclasses):
    sel = p['superclass'] == k
    per_superclass.append({
        'index': k, 'name': sup.name, 'wnid': sup.wnid, 'num_subclasses': len(sup.subclasses),
        'test_count': int(sel.sum()), 'vanilla_top1': accuracy(p['vanilla'][sel], truth[sel]),
        'supersub_top1': accuracy(p['supersub'][sel], truth[sel]),
        'oracle_top1': accuracy(p['oracle'][sel], truth[sel]),
        'routing_top1': accuracy(p['generalist'][sel], p['superclass'][sel])})
  supersub = accuracy(p['supersub'], truth)
  report = {
      'dataset': dataset, 'split': split, 'hierarchy': hierarchy.name, 'num_subclasses': hierarchy.num_subclasses,
      'test_count': int(len(truth)),
      'vanilla': {'top1': accuracy(p['vanilla'], truth), 'superclass_top1': accuracy(l2s[p['vanilla']], p['superclass'])},
      'superclass': {'top1': accuracy(p['generalist'], p['superclass'])},
      'supersub': {'top1': supersub, 'oracle_top1': accuracy(p['oracle'], truth),
                   'top2_top1': accuracy(p['top2'], truth), 'top2_threshold': float(top2_threshold),
                   'top2_second_fraction': float(np.mean(p['second'])), 'branch': cut,
                   'top1_minus_vanilla': supersub - accuracy(p['vanilla'], truth),
                   'minus_vanilla_interval': paired_difference(p['supersub'] == truth, p['vanilla'] == truth)[1:]},
      'errors': error_breakdown(p['vanilla'], truth, l2s),
      'supersub_errors': error_breakdown(p['supersub'], truth, l2s),
      'per_superclass': per_superclass,
      'storage': dict(storage),
      'compute': dict(compute),
  }
  # The optional baselines: the flat network trained for Super-Sub's whole budget, and Super-Sub with head-only
  # specialists (the same routes, no delta).
  for name in ('vanilla_matched', 'head_only'):
    if name in p:
      top1 = accuracy(p[name], truth)
      report.setdefault('baselines', {})[name] = {
          'top1': top1, 'supersub_minus': supersub - top1,
          'supersub_minus_interval': paired_difference(p['supersub'] == truth, p[name] == truth)[1:]}
      for row, top1 in zip(per_superclass, per_superclass_accuracy(p[name], truth, p['superclass'], n)):
        row[f'{name}_top1'] = top1
  if 'vanilla_matched' in p:
    report['baselines']['vanilla_matched']['steps'] = int(matched_steps)
  for name, where in (('vanilla', report['vanilla']), ('vanilla_matched', report.get('baselines', {}).get(
      'vanilla_matched'))):
    if f'{name}_oracle' in p and where is not None:
      where['oracle_top1'] = accuracy(p[f'{name}_oracle'], truth)
      for row, top1 in zip(per_superclass, per_superclass_accuracy(p[f'{name}_oracle'], truth, p['superclass'], n)):
        row[f'{name}_oracle_top1'] = top1
  report['rules'] = {}
  for name, routes in (rules or {}).items():
    top1 = accuracy(p[f'rule:{name}'], truth)
    row = {'top1': top1, 'specialists_per_image': routes, 'minus_vanilla': top1 - report['vanilla']['top1']}
    if 'vanilla_matched' in p:
      row['minus_vanilla_matched'] = top1 - report['baselines']['vanilla_matched']['top1']
    report['rules'][name] = row
  return report


PLOTS = ('confusion_superclass.png', 'confusion_largest_superclass.png', 'per_superclass.png',
         'routing_supersub.png')


def write_plots(p: Mapping[str, np.ndarray], hierarchy, report: Mapping, workdir: str) -> list[str]:
  """The report's PNGs (``PLOTS``) from the predictions ``p`` (as in ``build``); returns their file names."""
  l2s = np.asarray(hierarchy.label_to_superclass)
  n = hierarchy.num_superclasses
  names = [s.name for s in hierarchy.superclasses]
  plot_confusion(confusion_matrix(l2s[p['vanilla']], p['superclass'], n), names, os.path.join(workdir, PLOTS[0]),
                 f'{FLAT.capitalize()}: the superclass of its prediction (rows: true superclass)')
  largest = int(np.argmax(hierarchy.sizes))
  sel = p['superclass'] == largest
  offset, size = int(hierarchy.offsets[largest]), int(hierarchy.sizes[largest])
  # Predictions outside the superclass go to an extra last column ('other superclass').
  pred_local = np.where(l2s[p['vanilla'][sel]] == largest, p['vanilla'][sel] - offset, size)
  cm = confusion_matrix(pred_local, p['subclass'][sel] - offset, size + 1)[:size]
  sub_names = [s.name.split('/')[-1] for s in hierarchy.superclasses[largest].subclasses]
  plot_confusion(cm, sub_names, os.path.join(workdir, PLOTS[1]),
                 f'{FLAT.capitalize()} within "{names[largest]}" ({size} subclasses)',
                 col_names=sub_names + ['other superclass'])
  rows = report['per_superclass']
  series = {FLAT: [r['vanilla_top1'] for r in rows]}
  if 'vanilla_matched_top1' in rows[0]:
    series[f'{FLAT}, compute-matched'] = [r['vanilla_matched_top1'] for r in rows]
  series['Super-Sub (routed by the generalist)'] = [r['supersub_top1'] for r in rows]
  if 'vanilla_oracle_top1' in rows[0]:  # the reference for the specialists' own accuracy
    series[f'{FLAT} (oracle routing)'] = [r['vanilla_oracle_top1'] for r in rows]
  series['specialist (oracle routing)'] = [r['oracle_top1'] for r in rows]
  note = (f"{FLAT}: one network over all subclasses; Super-Sub (routed): the generalist picks the specialist, so a "
          "wrong superclass is an error; oracle routing: given the true superclass (the specialist's own accuracy, "
          f"and the {FLAT}'s best subclass of that superclass). Whiskers: 95% binomial interval over the "
          "superclass's held-out images, clipped to [0, 1].")
  plot_per_superclass(names, series, [r['test_count'] for r in rows], os.path.join(workdir, PLOTS[2]),
                      title=f"Subclass top-1 within each superclass ({report.get('test_count', 0):,} held-out "
                            f"images of {report.get('dataset', '?')})", note=note)
  plot_routing(confusion_matrix(p['generalist'], p['superclass'], n), names,
               [r['supersub_top1'] for r in rows], [r['routing_top1'] for r in rows],
               os.path.join(workdir, PLOTS[3]))
  return list(PLOTS)


def save_figure(fig, path: str, dpi: int = 120) -> None:
  """Writes a matplotlib figure as a PNG, atomically, and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  with files.atomic_write(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=dpi)
  plt.close(fig)


def _label_cells(ax, cm, norm) -> None:
  """Writes each non-empty cell's row share into a confusion heatmap (white on the dark cells)."""
  for i in range(cm.shape[0]):
    for j in range(cm.shape[1]):
      if cm[i, j]:
        ax.text(j, i, f'{norm[i, j]:.2f}', ha='center', va='center', fontsize=6,
                color='white' if norm[i, j] < 0.6 else 'black')


def plot_confusion(cm: np.ndarray, names: Sequence[str], path: str, title: str,
                   col_names: Sequence[str] | None = None) -> None:
  """Row-normalised confusion matrix as a PNG (``col_names`` for rectangular matrices; default ``names``)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  col_names = list(names) if col_names is None else list(col_names)
  norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
  rows, cols = cm.shape
  size = max(4.0, min(0.45 * max(rows, cols) + 2, 16))
  fig, ax = plt.subplots(figsize=(size, size))
  im = ax.imshow(norm, cmap='viridis', vmin=0, vmax=1)
  ax.set_xticks(range(cols), col_names, rotation=90, fontsize=7)
  ax.set_yticks(range(rows), names, fontsize=7)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(title, fontsize=9)
  if max(rows, cols) <= 16:
    _label_cells(ax, cm, norm)
  fig.colorbar(im, ax=ax, fraction=0.046)
  fig.tight_layout()
  save_figure(fig, path)


def plot_per_superclass(names: Sequence[str], series: Mapping[str, Sequence[float]], counts: Sequence[int],
                        path: str, *, title: str = 'Subclass top-1 within each superclass', note: str = '') -> None:
  """Grouped bars of per-superclass subclass top-1, one bar per entry of ``series`` (label -> N accuracies), with
  95% binomial error bars from each superclass's ``counts`` held-out images, clipped to [0, 1]. The axis starts just
  below the lowest bar, not at 0, so differences of a few points show; the legend sits above the axes, clear of the
  bars; ``note`` (what the bars and whiskers are) below them."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  x = np.arange(len(names))
  width = 0.8 / len(series)
  counts = np.maximum(np.asarray(counts, float), 1.0)
  fig, ax = plt.subplots(figsize=(max(8, 0.8 * len(names) + 2), 5.5))
  lowest = 1.0
  for i, (label, values) in enumerate(series.items()):
    v = np.asarray(values, float)
    err = 1.96 * np.sqrt(np.clip(v * (1 - v), 0, None) / counts)
    below, above = np.minimum(err, v), np.minimum(err, 1 - v)  # an accuracy lies in [0, 1]: so does its interval
    ax.bar(x + (i - (len(series) - 1) / 2) * width, v, width, yerr=np.stack([below, above]), capsize=2,
           label=label)
    lowest = min(lowest, float(np.nanmin(v - below)))
  ax.set_ylim(max(0.0, np.floor(lowest * 20) / 20 - 0.02), 1.0)
  ax.set_xticks(x, [f'{name}\n({int(c):,})' for name, c in zip(names, counts)], rotation=45, ha='right')
  ax.set_xlabel('superclass (held-out images)')
  ax.set_ylabel('subclass top-1 within the superclass')
  ax.grid(axis='y', alpha=0.3)
  ax.legend(loc='lower center', bbox_to_anchor=(0.5, 1.0), ncol=min(len(series), 3), fontsize=8, frameon=False)
  fig.suptitle(title, fontsize=10)
  if note:
    fig.text(0.01, 0.01, note, fontsize=7, wrap=True, va='bottom')
  fig.tight_layout(rect=(0, 0.1 if note else 0, 1, 0.95))
  save_figure(fig, path)


def plot_routing(cm: np.ndarray, names: Sequence[str], supersub_top1: Sequence[float],
                 routing_top1: Sequence[float], path: str) -> None:
  """Where Super-Sub's routing goes wrong: left, the generalist's superclass confusion (int [N, N], rows the true
  superclass, columns the one it routed to, row-normalised): the off-diagonal cells are where misrouted images go;
  right, per true superclass, the share of its images Super-Sub gets wrong inside the right specialist and the share
  it loses to misrouting (``routing_top1``: the share routed right; ``supersub_top1``: the share right)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  n = len(names)
  norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
  size = max(4.0, min(0.45 * n + 2, 14))
  fig, (left, right) = plt.subplots(1, 2, figsize=(2 * size + 1, size), gridspec_kw={'width_ratios': [1.2, 1]})
  im = left.imshow(norm, cmap='viridis', vmin=0, vmax=1)
  left.set_xticks(range(n), names, rotation=90, fontsize=7)
  left.set_yticks(range(n), names, fontsize=7)
  left.set_xlabel('superclass the generalist routed to')
  left.set_ylabel('true superclass')
  left.set_title('Generalist: where each superclass is routed (row shares)', fontsize=9)
  if n <= 16:
    _label_cells(left, cm, norm)
  fig.colorbar(im, ax=left, fraction=0.046)
  y = np.arange(n)
  right_share, routed = np.asarray(supersub_top1, float), np.asarray(routing_top1, float)
  within, misrouted = routed - right_share, 1 - routed
  right.barh(y, within, color='tab:orange', label='wrong subclass, right specialist')
  right.barh(y, misrouted, left=within, color='tab:red', label='misrouted (the left panel says where to)')
  for i in range(n):
    right.text(within[i] + misrouted[i], i, f' {within[i] + misrouted[i]:.1%}', va='center', fontsize=7)
  right.set_yticks(y, names, fontsize=7)
  right.invert_yaxis()  # the matrix's row order
  right.set_xlim(0, max(0.05, 1.15 * float(np.max(within + misrouted))))
  right.set_xlabel("share of the superclass's held-out images")
  right.set_title("Super-Sub's errors per true superclass", fontsize=9)
  right.legend(loc='upper center', bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=7, frameon=False)
  fig.tight_layout()
  save_figure(fig, path)


def plot_per_superclass_gain(names: Sequence[str], gains: Mapping[str, np.ndarray], path: str) -> None:
  """Super-Sub minus each baseline per superclass, in points, with error bars: one panel per baseline (each on its
  own scale, as a weak baseline's gains would flatten the others').

  Args:
    names: [N] superclass names.
    gains: baseline label -> float[3, N]: mean, 95% interval low and high (fractions), e.g. over seeds.
    path: the PNG written.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  x = np.arange(len(names))
  fig, axes = plt.subplots(len(gains), 1, sharex=True, squeeze=False,
                           figsize=(max(6, 0.7 * len(names) + 2), 2.2 * len(gains) + 1))
  for ax, (label, (mean, low, high)) in zip(axes[:, 0], gains.items()):
    mean, low, high = (100 * np.asarray(v, float) for v in (mean, low, high))
    ax.bar(x, mean, 0.6, yerr=np.stack([mean - low, high - mean]), capsize=3,
           color=np.where(mean >= 0, 'tab:blue', 'tab:orange'))
    ax.axhline(0, color='black', linewidth=0.8)
    ax.set_title(f'Super-Sub - {label}', fontsize=9)
    ax.set_ylabel('points')
  axes[-1, 0].set_xticks(x, names, rotation=45, ha='right')
  fig.suptitle('Per-superclass top-1 gain: mean and 95% interval over seeds', fontsize=10)
  fig.tight_layout()
  save_figure(fig, path)


def _fmt_bytes(n: float) -> str:
  for unit in ('B', 'KiB', 'MiB', 'GiB'):
    if abs(n) < 1024 or unit == 'GiB':
      return f'{n:,.1f} {unit}' if unit != 'B' else f'{int(n):,} B'
    n /= 1024
  return str(n)


def _points(value: float, interval: Sequence[float] | None = None) -> str:
  text = f'{100 * value:+.2f}'
  if interval is not None and np.all(np.isfinite(interval)):
    text += f' [{100 * interval[0]:+.2f}, {100 * interval[1]:+.2f}]'
  return text


def _meaning(interval: Sequence[float] | None, count: int) -> str:
  if interval is None or not np.all(np.isfinite(interval)):
    return 'no interval'
  if interval[0] > 0:
    return f'Super-Sub ahead on these {count:,} test images'
  if interval[1] < 0:
    return f'Super-Sub behind on these {count:,} test images'
  return f'a tie on these {count:,} test images'


def _steps_of_supersub(compute: Mapping) -> str:
  """'generalist 60 + specialists 250' (+ the flat network it starts from, when it does)."""
  steps = compute['supersub_steps']
  parts = ([f"the {FLAT} it starts from {steps['vanilla']:,}"] if steps['vanilla'] else []) + [
      f"generalist {steps['superclass']:,}", f"specialists {steps['specialists']:,}"]
  return ' + '.join(parts)


def headline(report: Mapping) -> str:
  """The report's first line, its verdict: both arms' top-1, the difference in points with its 95% interval over the
  test images and what it means, the compute each arm got, the start they share, and where the interval over seeds
  lives. The flat arm is the compute-matched one (``vanilla_matched``) when the run has it and the vanilla network
  had less compute than Super-Sub."""
  r = report
  compute, matched = r.get('compute'), r.get('baselines', {}).get('vanilla_matched')
  total = compute['supersub_steps']['total'] if compute else None
  if matched and compute and compute['vanilla_steps'] < total:
    flat, gap, interval = matched['top1'], matched['supersub_minus'], matched.get('supersub_minus_interval')
    flat_steps, flat_name = matched['steps'], f'the {FLAT} trained as long (vanilla_matched)'
  else:
    flat, gap = r['vanilla']['top1'], r['supersub']['top1'] - r['vanilla']['top1']
    interval, flat_steps = r['supersub'].get('minus_vanilla_interval'), (compute or {}).get('vanilla_steps')
    flat_name = f'the {FLAT}'
  line = (f"Super-Sub {r['supersub']['top1']:.4f} vs {flat_name} {flat:.4f} top-1: {_points(gap, interval)} points "
          f"({_meaning(interval, r.get('test_count', 0))})")
  if compute:
    if flat_steps == total:
      line += f"; equal compute, {total:,} optimizer steps each at batch {compute['batch_size']}"
    else:
      line += f"; NOT equal compute: the {FLAT} {flat_steps:,} optimizer steps, Super-Sub {total:,}"
    line += f" (Super-Sub: {_steps_of_supersub(compute)})"
    if compute.get('start'):
      line += f"; both start from {compute['start']}"
  return line + f'; {SEEDS_NOTE}.'


def _matched_trained_as_long(r: Mapping) -> bool:
  """Whether the vanilla_matched baseline trained for exactly Super-Sub's total steps (a linked or reused stage may
  not have)."""
  matched, compute = r['baselines']['vanilla_matched'], r.get('compute')
  return not compute or matched['steps'] == compute['supersub_steps']['total']


def _baseline_rows(r: Mapping) -> list[tuple[str, str]]:
  baselines = r.get('baselines', {})
  compute, matched, head = r.get('compute'), baselines.get('vanilla_matched'), baselines.get('head_only')
  rows = []
  if compute:
    rows.append((f"optimizer steps at batch {compute['batch_size']}: {FLAT} vs Super-Sub",
                 f"{compute['vanilla_steps']:,} vs {compute['supersub_steps']['total']:,} "
                 f"({_steps_of_supersub(compute)})"))
  if matched:
    trained = (f"Super-Sub's {matched['steps']:,} steps" if _matched_trained_as_long(r)
               else f"{matched['steps']:,} steps (Super-Sub: {compute['supersub_steps']['total']:,})")
    rows += [(f'{FLAT} trained for {trained}, top-1', f"{matched['top1']:.4f}"),
             (f'Super-Sub - compute-matched {FLAT} (top-1 points)',
              _points(matched['supersub_minus'], matched.get('supersub_minus_interval')))]
  if head:
    rows += [("Super-Sub with head-only specialists (the generalist's features), top-1", f"{head['top1']:.4f}"),
             ('Super-Sub - head-only specialists (top-1 points)', f"{100 * head['supersub_minus']:+.2f}")]
  return rows


def _speed(images_per_s: float, batch: int, ms_range: Sequence[float] | None) -> str:
  """'859 img/s (812-901 over the timed calls)'; images/s is the batch over the mean seconds of a call."""
  text = f'{images_per_s:,.0f}'
  if ms_range and ms_range[0] != ms_range[1]:  # one timed call has no spread
    text += f' ({1e3 * batch / ms_range[1]:,.0f}-{1e3 * batch / ms_range[0]:,.0f})'
  return text


def _rule_rows(r: Mapping) -> list[tuple[str, str]]:
  """One row per decision rule other than the paper's: top-1, its gap to the flat network trained as long (or to
  the vanilla network), and what it costs."""
  rows = []
  for name, row in r.get('rules', {}).items():
    if name == 'hard':
      continue
    gap = (f'compute-matched {FLAT}', row['minus_vanilla_matched']) if 'minus_vanilla_matched' in row else (
        f'the {FLAT}', row['minus_vanilla'])
    speed = (f", {_speed(row['images_per_s'], row['batch_size'], row.get('ms_range'))} img/s"
             if 'images_per_s' in row else '')
    rows.append((f"rule {name}, top-1 ({row['specialists_per_image']} specialist(s) per image{speed})",
                 f"{row['top1']:.4f} ({100 * gap[1]:+.2f} against {gap[0]})"))
  return rows


# The paper's headline claims (Wen et al., arXiv 2201.08098), each with the report value that tests it.
PAPER_CLAIMS = (
    ('most errors of one network stay within the true superclass', 'most'),
    ('Super-Sub top-1 over one network trained on all subclasses', '+3.3 points'),
    ('storage of N specialists + generalist', '0.2N+1'),
    ('inference memory', 'that of one network'),
)


def paper_claims_rows(report: Mapping) -> list[tuple[str, str, str]]:
  """(claim, the paper's value, ours) for ``PAPER_CLAIMS``, from one report (one run: no interval)."""
  r = report
  gain = f"{100 * (r['supersub']['top1'] - r['vanilla']['top1']):+.2f} points"
  matched, compute = r.get('baselines', {}).get('vanilla_matched'), r.get('compute')
  if matched:
    gain += (f"; {100 * matched['supersub_minus']:+.2f} against one network trained "
             + ('as long' if _matched_trained_as_long(r) else f"for {matched['steps']:,} steps"))
  elif compute and compute['vanilla_steps'] >= compute['supersub_steps']['total']:
    gain += (f" at equal compute ({FLAT} {compute['vanilla_steps']:,} steps, Super-Sub "
             f"{compute['supersub_steps']['total']:,})")
  else:
    gain += '; not at equal compute (no vanilla_matched stage in this run)'
  mem, resident = r['memory'], r['memory'].get('params_resident')
  memory = (f"{mem['supersub_bytes'] / max(mem['single_bytes'], 1):.2f}x at batch {mem.get('batch_size', '?')} "
            '(compiled call)')
  if resident:
    memory += f"; parameters on device {resident['supersub_bytes'] / max(resident['single_bytes'], 1):.2f}x"
  ours = (f"{r['errors']['within_superclass_fraction']:.1%} of {r['errors']['errors']}", gain,
          f"{r['storage']['alpha']:.3f}N+1 (N={r['storage']['num_superclasses']})", memory)
  return [(claim, paper, value) for (claim, paper), value in zip(PAPER_CLAIMS, ours)]


def summary_rows(report: Mapping) -> list[tuple[str, str]]:
  """(metric, value) rows of the headline table (``headline`` is the line above it)."""
  r = report
  speed = r['throughput']
  largest = speed.get('by_batch', {}).get(str(speed.get('batch_size')), {})
  b = int(speed.get('batch_size', 1))
  rows = [
      (f"{FLAT} top-1 (one network over all subclasses: the 'vanilla' stage)", f"{r['vanilla']['top1']:.4f}"),
      ('generalist superclass top-1', f"{r['superclass']['top1']:.4f}"),
      ('Super-Sub top-1 (routed by the generalist)', f"{r['supersub']['top1']:.4f}"),
      ('Super-Sub top-1, oracle routing', f"{r['supersub']['oracle_top1']:.4f}"),
      *([(f'{FLAT} top-1, oracle routing (its best subclass of the true superclass)',
          f"{r['vanilla']['oracle_top1']:.4f}")] if 'oracle_top1' in r['vanilla'] else []),
      (f"Super-Sub top-1, top-2 routing (p<{r['supersub'].get('top2_threshold', 0):.2f}: "
       f"{r['supersub'].get('top2_second_fraction', 0):.1%} of images run 2 specialists)",
       f"{r['supersub']['top2_top1']:.4f}"),
      (f'Super-Sub - {FLAT} (top-1 points, 95% interval over the test images)',
       _points(r['supersub']['top1'] - r['vanilla']['top1'], r['supersub'].get('minus_vanilla_interval'))),
      *_baseline_rows(r),
      *_rule_rows(r),
      (f'{FLAT} errors within the true superclass', f"{r['errors']['within_superclass_fraction']:.1%} "
       f"of {r['errors']['errors']}"),
      ('storage (networks): Super-Sub vs naive N+1', f"{r['storage']['factor']:.3f} vs "
       f"{r['storage'].get('naive_factor', r['storage']['num_superclasses'] + 1)}"),
      ('alpha in alpha*N+1', f"{r['storage']['alpha']:.4f} (N={r['storage']['num_superclasses']})"),
      (f"inference memory at batch {r['memory'].get('batch_size', '?')}: {FLAT} vs Super-Sub",
       f"{_fmt_bytes(r['memory']['single_bytes'])} vs {_fmt_bytes(r['memory']['supersub_bytes'])}"),
      (f"throughput at batch {speed.get('batch_size', '?')} (img/s, fastest-slowest call; noisy): {FLAT} vs "
       'Super-Sub', f"{_speed(speed['single_ips'], b, largest.get('single_ms_range'))} vs "
       f"{_speed(speed['supersub_ips'], b, largest.get('supersub_ms_range'))}"),
  ]
  resident = r['memory'].get('params_resident')
  if resident:
    rows.append((f'parameters on device: {FLAT} vs Super-Sub', f"{_fmt_bytes(resident['single_bytes'])} vs "
                 f"{_fmt_bytes(resident['supersub_bytes'])}"))
  return rows


def table(rows: Sequence[tuple[str, str]]) -> str:
  width = max(len(a) for a, _ in rows)
  return '\n'.join(f'{a:<{width}}  {b}' for a, b in rows)


NOISY = ('Timing is noisy: on a shared or busy machine the same command moves images/s by tens of percent from run '
         'to run. Each number is the batch over the mean seconds of the timed calls, with the fastest and slowest '
         'call beside it; compare the models of one run, which took turns, rather than runs.')


def render_markdown(report: Mapping) -> str:
  lines = ['# Super-Sub evaluation report', '', f'**{headline(report)}**', '',
           f"Dataset `{report.get('dataset', '?')}`, hierarchy `{report.get('hierarchy', '?')}` "
           f"({report['storage']['num_superclasses']} superclasses, {report.get('num_subclasses', '?')} subclasses), "
           f"{report.get('test_count', 0):,} held-out images (split `{report.get('split', 'test')}`). The {FLAT} is "
           "one network trained on all subclasses: the stage `vanilla` of `config.stages` and of report.json.", '',
           '## The paper\'s claims beside this run', '', '| claim | paper | this run |', '|---|---|---|']
  lines += [f'| {a} | {b} | {c} |' for a, b, c in paper_claims_rows(report)]
  lines += ['', f'{SEEDS_NOTE[0].upper()}{SEEDS_NOTE[1:]}.', '',
            '## Summary', '', '| metric | value |', '|---|---|']
  lines += [f'| {a} | {b} |' for a, b in summary_rows(report)]
  per = report.get('per_superclass')
  if per:
    optional = [(key, label) for key, label in (('vanilla_oracle_top1', f'{FLAT} (oracle)'),
                                                ('vanilla_matched_top1', f'compute-matched {FLAT}'),
                                                ('head_only_top1', 'head-only Super-Sub')) if key in per[0]]
    lines += ['', '## Per superclass (subclass top-1 on the superclass\'s held-out images)', '',
              f'| # | superclass | subclasses | {FLAT} | ' + ''.join(f'{label} | ' for _, label in optional)
              + 'Super-Sub | specialist (oracle) | generalist routing |',
              '|---|---|---|---|---|---|---|' + '---|' * len(optional)]
    for row in per:
      extra = ''.join(f" {row[key]:.4f} |" for key, _ in optional)
      lines.append(f"| {row['index']} | {row['name']} | {row['num_subclasses']} | {row['vanilla_top1']:.4f} |{extra} "
                   f"{row['supersub_top1']:.4f} | {row['oracle_top1']:.4f} | {row['routing_top1']:.4f} |")
  storage = report['storage']
  rules = report.get('rules')
  if rules:
    matched = any('minus_vanilla_matched' in row for row in rules.values())
    timed = [row for row in rules.values() if 'images_per_s' in row]
    batch = timed[0]['batch_size'] if timed else None
    lines += ['', '## Decision rules', '', 'Every rule on the same networks (`supersub_jax.decide`): `hard` is the '
              "paper's; `soft:k` averages the router's top k; `hinton:k` is Hinton et al.'s combination (a mixture; `product:k` in older reports); `poe:k` the product of experts; `/flat` and "
              f"`/mean` route by the {FLAT}'s summed subclass probabilities, or by their mean with the "
              "generalist's." + (f' Images/s at batch {batch}, timed in the same measurement as the throughput '
                                 'table below (`hard` is its Super-Sub column).' if timed else ''), '',
              f'| rule | top-1 | minus {FLAT} | ' + (f'minus compute-matched {FLAT} | ' if matched else '')
              + 'specialists per image |' + (' images/s (fastest-slowest call) |' if timed else ''),
              '|---|---|---|---|' + '---|' * matched + '---|' * bool(timed)]
    for name, row in rules.items():
      cells = [name, f"{row['top1']:.4f}", f"{100 * row['minus_vanilla']:+.2f}"]
      if matched:
        cells.append(f"{100 * row['minus_vanilla_matched']:+.2f}" if 'minus_vanilla_matched' in row else '')
      cells.append(str(row['specialists_per_image']))
      if timed:
        cells.append(_speed(row['images_per_s'], row['batch_size'], row.get('ms_range')) if 'images_per_s' in row
                     else '')
      lines.append('| ' + ' | '.join(cells) + ' |')
  lines += ['', '## Storage', '',
            f"- base (generalist) {storage['base_bytes']:,} B; specialists {sum(storage['specialists_bytes']):,} B "
            f"in all (delta {storage.get('delta_bytes', 0):,} B, heads {storage.get('head_bytes', 0):,} B, "
            f"BatchNorm statistics {storage.get('batch_stats_bytes', 0):,} B)",
            f"- factor {storage['factor']:.3f} networks = alpha*N+1 with alpha {storage['alpha']:.4f}; naive N+1 = "
            f"{storage.get('naive_factor', storage['num_superclasses'] + 1)}"]
  mem, speed = report['memory'], report['throughput']
  lines += ['', '## Memory and throughput', '', f'- {NOISY}', f"- throughput: {speed.get('method', '')}",
            f"- memory: {mem.get('method', '')}", '']
  by_time, by_mem = speed.get('by_batch', {}), mem.get('by_batch', {})
  if by_time:
    lines += [f'| batch | {FLAT} img/s | Super-Sub img/s | ratio | {FLAT} ms (fastest-slowest) | Super-Sub ms '
              f'(fastest-slowest) | specialists per batch | {FLAT} memory | Super-Sub memory |',
              '|---|---|---|---|---|---|---|---|---|']

    def ms(t, who):
      spread = t.get(f'{who}_ms_range')
      return f"{t[f'{who}_ms']:.2f}" + (f' ({spread[0]:.2f}-{spread[1]:.2f})' if spread and spread[0] != spread[1]
                                         else '')

    for b, t in sorted(by_time.items(), key=lambda kv: int(kv[0])):
      m = by_mem.get(b, {})
      lines.append(f"| {b} | {t['single_ips']:,.1f} | {t['supersub_ips']:,.1f} | {t['ratio']:.3f} | "
                   f"{ms(t, 'single')} | {ms(t, 'supersub')} | {t['specialists_per_batch']:.1f} | "
                   f"{m.get('single_bytes', 0):,} B | {m.get('supersub_bytes', 0):,} B |")
  else:
    lines += [f"- {FLAT} {mem['single_bytes']:,} B, Super-Sub {mem['supersub_bytes']:,} B; {FLAT} "
              f"{speed['single_ips']:,.1f} img/s, Super-Sub {speed['supersub_ips']:,.1f} img/s"]
  resident = mem.get('params_resident')
  if resident:
    lines += ['', f"- parameters on device: {FLAT} {resident['single_bytes']:,} B; Super-Sub "
              f"{resident['supersub_bytes']:,} B = generalist {resident['generalist_bytes']:,} B + bank "
              f"{resident['bank_bytes']:,} B (exported: {mem.get('bank_export_bytes', 0):,} B) + one materialized "
              f"specialist {resident['specialist_bytes']:,} B"]
  plots = report.get('plots', [])
  if plots:
    lines += ['', '## Plots', ''] + [f'![{p}]({p})' for p in plots]
  return '\n'.join(lines) + '\n'


def write(report: dict, workdir: str, *, predictions: Mapping[str, np.ndarray] | None = None,
          hierarchy=None) -> dict[str, str]:
  """Writes report.json, report.md and, given the predictions and hierarchy, the PNG plots (``write_plots``) into
  ``workdir``; returns the paths of the two reports. ``report['plots']`` lists the PNGs."""
  validate(report)
  with files.staged(workdir) as stage:  # all of them or none: a full disk half-way leaves the old report whole
    if predictions is not None:
      report['plots'] = write_plots(predictions, hierarchy, report, stage)
    files.write_text(os.path.join(stage, 'report.json'), json.dumps(report, indent=2, default=float))
    files.write_text(os.path.join(stage, 'report.md'), render_markdown(report))
  return {'json': os.path.join(workdir, 'report.json'), 'md': os.path.join(workdir, 'report.md')}


def write_results(prefix: str, data: Any, table_md: str, plot: Callable[[Any, str], None] | None = None) -> None:
  """A benchmark's or study's results: ``<prefix>.json`` (``data``), ``<prefix>.md`` (``table_md``) and, with
  ``plot``, ``plot(data, '<prefix>.png')``, each written atomically; makes the folder.

  Rewriting after each finished row keeps what a long sweep measured if it is stopped part-way.
  """
  os.makedirs(os.path.dirname(prefix) or '.', exist_ok=True)
  files.write_text(prefix + '.json', json.dumps(data, indent=2, default=float))
  files.write_text(prefix + '.md', table_md.rstrip('\n') + '\n')
  if plot is not None:
    plot(data, prefix + '.png')
