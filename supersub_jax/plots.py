"""The figures: the report's PNG plots, the studies' and benchmarks' figure writer, the synthetic sample grid.

The one module of the package that imports matplotlib (lazily, with the Agg backend: no display needed), so that the
report, the studies' statistics and the data stay free of it. Every PNG is written atomically (``save_figure``).
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from supersub_jax import files
from supersub_jax.data import render
from supersub_jax.report import confusion_matrix
from supersub_jax.report_text import FLAT


def _pyplot():
  """matplotlib.pyplot on the Agg backend (files only), imported on first use: importing it costs about a second."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


PLOTS = ('confusion_superclass.png', 'confusion_largest_superclass.png', 'per_superclass.png',
         'routing_supersub.png')


def write_plots(p: Mapping[str, np.ndarray], hierarchy, report: Mapping, workdir: str) -> list[str]:
  """The report's PNGs (``PLOTS``) from the predictions ``p`` (as in ``report.build``); returns their file names."""
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
  plt = _pyplot()
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
  plt = _pyplot()
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
  plt = _pyplot()
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
  plt = _pyplot()
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
  plt = _pyplot()
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


def save_grid_png(path: str | os.PathLike, grid: np.ndarray, row_labels: list[list[int]],
                  sizes: Sequence[int]) -> None:
  """Writes the sample grid from ``render.sample_grid`` as a PNG, one titled row per superclass."""
  plt = _pyplot()
  rows, cols = grid.shape[:2]
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.15), squeeze=False)
  for s in range(rows):
    for c in range(cols):
      ax = axes[s, c]
      ax.imshow(grid[s, c], interpolation='nearest')
      ax.set_xticks([])
      ax.set_yticks([])
      if row_labels[s][c] >= 0:
        ax.set_title(f'label {row_labels[s][c]}', fontsize=6, pad=2)
      else:
        ax.axis('off')
    axes[s, 0].set_ylabel(f'{s}: {render.SHAPE_FAMILIES[s]}\n{render.TEXTURES[s % len(render.TEXTURES)]}, '
                          f'{sizes[s]} sub', fontsize=7)
  fig.tight_layout(pad=0.3)
  with files.atomic_write(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=110)
  plt.close(fig)
