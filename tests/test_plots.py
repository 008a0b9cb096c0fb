"""Tests of supersub_jax.plots: the report's figures and the synthetic sample grid."""

import numpy as np
import pytest

from supersub_jax import plots


def test_per_superclass_gain_plot_draws_one_panel_per_baseline_with_points_and_intervals(tmp_path, monkeypatch):
  import matplotlib.axes  # pylint: disable=g-import-not-at-top
  calls = []
  bar = matplotlib.axes.Axes.bar
  monkeypatch.setattr(matplotlib.axes.Axes, 'bar', lambda self, *a, **k: calls.append((self, a, k)) or bar(self, *a, **k))
  mean = np.asarray([0.02, -0.01, 0.0])
  gains = {'vanilla': np.stack([mean, mean - 0.01, mean + 0.03]), 'head-only': np.stack([mean + 0.2] * 3)}
  path = str(tmp_path / 'gain.png')
  plots.plot_per_superclass_gain(['a', 'b', 'c'], gains, path)
  assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  assert len(calls) == 2 and calls[0][0] is not calls[1][0]  # one panel each
  ax, (_, heights, _), kwargs = calls[0]
  np.testing.assert_allclose(heights, [2, -1, 0])  # points
  np.testing.assert_allclose(kwargs['yerr'], [[1, 1, 1], [3, 3, 3]])  # below and above the mean, in points
  assert ax.get_title() == 'Super-Sub - vanilla' and calls[1][0].get_title() == 'Super-Sub - head-only'


def test_per_superclass_plot_zooms_on_the_bars_and_keeps_the_legend_off_them(tmp_path, monkeypatch):
  import matplotlib.figure  # pylint: disable=g-import-not-at-top
  saved = []
  savefig = matplotlib.figure.Figure.savefig
  monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', lambda self, *a, **k: saved.append(self) or savefig(self, *a, **k))
  series = {'vanilla': [0.91, 0.95], 'Super-Sub': [0.93, 0.97]}
  path = str(tmp_path / 'per.png')
  plots.plot_per_superclass(['a', 'b'], series, [100, 400], path)
  assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  [ax] = saved[0].axes
  low, high = ax.get_ylim()
  # The lowest bar minus its 95% binomial half-width, 0.91 - 1.96 sqrt(0.91 * 0.09 / 100) = 0.854, floored to the
  # 0.05 grid, less 0.02: differences of two points fill a visible part of the axis.
  assert low == pytest.approx(0.83) and high == 1.0
  legend = ax.get_legend()
  assert legend is not None and legend.get_bbox_to_anchor().y0 >= ax.bbox.y1 - 1  # above the axes


def test_per_superclass_plot_is_titled_labelled_explained_and_its_whiskers_stay_in_0_1(tmp_path, monkeypatch):
  import matplotlib.axes  # pylint: disable=g-import-not-at-top
  import matplotlib.figure  # pylint: disable=g-import-not-at-top
  bars, saved = [], []
  bar, savefig = matplotlib.axes.Axes.bar, matplotlib.figure.Figure.savefig
  monkeypatch.setattr(matplotlib.axes.Axes, 'bar', lambda self, *a, **k: bars.append(k['yerr']) or bar(self, *a, **k))
  monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', lambda self, *a, **k: saved.append(self) or savefig(self, *a, **k))
  plots.plot_per_superclass(['a', 'b'], {'flat network': [1.0, 0.9]}, [20, 20], str(tmp_path / 'p.png'),
                             title='the title', note='what the bars are')
  below, above = bars[0]
  half = 1.96 * np.sqrt(0.9 * 0.1 / 20)
  assert 0.9 + half > 1  # the interval would run off the top...
  np.testing.assert_allclose(below, [0.0, half])  # (1.0 has no binomial spread)
  np.testing.assert_allclose(above, [0.0, 0.1])  # ...so it stops at 1
  fig = saved[0]
  assert fig._suptitle.get_text() == 'the title'  # pylint: disable=protected-access
  assert fig.axes[0].get_xlabel() == 'superclass (held-out images)'
  assert any(t.get_text() == 'what the bars are' for t in fig.texts)
  assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ['a\n(20)', 'b\n(20)']


def test_routing_plot_shows_the_generalists_confusion_and_splits_each_superclasss_errors(tmp_path, monkeypatch):
  import matplotlib.axes  # pylint: disable=g-import-not-at-top
  shown, bars = [], []
  imshow, barh = matplotlib.axes.Axes.imshow, matplotlib.axes.Axes.barh
  monkeypatch.setattr(matplotlib.axes.Axes, 'imshow', lambda self, x, **k: shown.append(x) or imshow(self, x, **k))
  monkeypatch.setattr(matplotlib.axes.Axes, 'barh', lambda self, y, w, **k: bars.append((k['label'], w)) or barh(
      self, y, w, **k))
  cm = np.asarray([[8, 2], [1, 9]])  # rows: true superclass; columns: where the generalist routed it
  path = str(tmp_path / 'routing.png')
  plots.plot_routing(cm, ['a', 'b'], supersub_top1=[0.7, 0.9], routing_top1=[0.8, 0.9], path=path)
  assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  np.testing.assert_allclose(shown[0], [[0.8, 0.2], [0.1, 0.9]])
  (within_label, within), (misrouted_label, misrouted) = bars
  assert within_label.startswith('wrong subclass, right specialist') and misrouted_label.startswith('misrouted')
  np.testing.assert_allclose(within, [0.1, 0.0], atol=1e-12)  # routed right but wrong: 0.8 - 0.7, 0.9 - 0.9
  np.testing.assert_allclose(misrouted, [0.2, 0.1])


def test_sample_grid_png_has_one_titled_row_per_superclass(tmp_path, monkeypatch):
  import matplotlib.figure  # pylint: disable=g-import-not-at-top
  saved = []
  savefig = matplotlib.figure.Figure.savefig
  monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', lambda self, *a, **k: saved.append(self) or savefig(self, *a, **k))
  grid = np.zeros((2, 3, 4, 4, 3), np.uint8)
  path = str(tmp_path / 'grid.png')
  plots.save_grid_png(path, grid, [[0, 1, -1], [2, -1, -1]], (2, 1))
  assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  axes = np.asarray(saved[0].axes).reshape(2, 3)
  assert [ax.get_title() for ax in axes[0]] == ['label 0', 'label 1', '']  # an empty cell has no title
  assert axes[0, 0].get_ylabel().startswith('0: disc') and axes[1, 0].get_ylabel().startswith('1: square')
  assert not axes[0, 2].axison and axes[0, 1].axison
