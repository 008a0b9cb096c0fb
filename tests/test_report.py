"""Tests of supersub_jax.report: metrics from predictions and the report.json schema."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from supersub_jax import report


def _minimal_report():
  return {
      'vanilla': {'top1': 0.5}, 'superclass': {'top1': 0.9},
      'supersub': {'top1': 0.55, 'oracle_top1': 0.6, 'top2_top1': 0.56},
      'errors': {'within_superclass_fraction': 0.8, 'errors': 10},
      'storage': {'factor': 1.9, 'alpha': 0.09, 'num_superclasses': 10, 'base_bytes': 100,
                  'specialists_bytes': [9] * 10},
      'memory': {'single_bytes': 1000, 'supersub_bytes': 1200},
      'throughput': {'single_ips': 100.0, 'supersub_ips': 50.0},
  }


def test_error_breakdown_within_and_across():
  label_to_superclass = np.array([0, 0, 1, 1, 1])
  true = np.array([0, 1, 2, 3, 4, 0])
  pred = np.array([1, 1, 3, 0, 4, 0])  # errors: 0->1 (within), 2->3 (within), 3->0 (across)
  out = report.error_breakdown(pred, true, label_to_superclass)
  assert out == {'errors': 3, 'within_superclass': 2, 'across_superclass': 1,
                 'within_superclass_fraction': pytest.approx(2 / 3), 'error_rate': pytest.approx(0.5)}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=40))
def test_confusion_matrix_counts_every_pair(pairs):
  true, pred = (np.array(x) for x in zip(*pairs))
  cm = report.confusion_matrix(pred, true, 6)
  assert cm.sum() == len(pairs)
  assert np.trace(cm) == int(np.sum(pred == true))


def test_per_superclass_accuracy():
  pred = np.array([0, 1, 2, 2])
  true = np.array([0, 0, 2, 3])
  sup = np.array([0, 0, 1, 1])
  assert report.per_superclass_accuracy(pred, true, sup, 3)[:2] == [0.5, 0.5]
  assert np.isnan(report.per_superclass_accuracy(pred, true, sup, 3)[2])


def test_schema_accepts_a_full_report_and_names_missing_keys(tmp_path):
  full = _minimal_report()
  report.validate(full)
  paths = report.write(full, str(tmp_path))
  assert json.load(open(paths['json']))['storage']['alpha'] == 0.09
  assert 'Super-Sub' in open(paths['md']).read()
  broken = _minimal_report()
  del broken['supersub']['top2_top1']
  broken['memory']['single_bytes'] = 1.5
  with pytest.raises(ValueError) as err:
    report.validate(broken)
  assert 'supersub.top2_top1: missing' in str(err.value)
  assert 'memory.single_bytes' in str(err.value)


def test_report_md_opens_with_the_papers_claims_and_shows_both_baselines_gaps(tmp_path):
  full = _minimal_report()
  full['compute'] = {'vanilla_steps': 1200, 'batch_size': 128,
                     'supersub_steps': {'vanilla': 1200, 'superclass': 300, 'specialists': 950, 'total': 2450}}
  full['baselines'] = {'vanilla_matched': {'top1': 0.9, 'steps': 2450, 'supersub_minus': -0.0125},
                       'head_only': {'top1': 0.7, 'supersub_minus': 0.1875}}
  md = open(report.write(full, str(tmp_path))['md']).read()
  claims = md.index("## The paper's claims beside this run")
  assert claims < md.index('## Summary')
  assert '| Super-Sub top-1 over one network trained on all subclasses | +3.3 points |' in md
  assert '-1.25 against one network trained as long' in md
  assert '| storage of N specialists + generalist | 0.2N+1 | 0.090N+1 (N=10) |' in md
  assert "| flat network trained for Super-Sub's 2,450 steps, top-1 | 0.9000 |" in md
  assert '1,200 vs 2,450 (the flat network it starts from 1,200 + generalist 300 + specialists 950)' in md
  assert '| Super-Sub - head-only specialists (top-1 points) | +18.75 |' in md


def test_headline_names_both_arms_the_compute_the_start_the_gap_its_meaning_and_the_seeds_interval():
  r = _minimal_report()
  r['test_count'] = 3800
  r['supersub']['minus_vanilla_interval'] = [0.01, 0.09]
  r['compute'] = {'vanilla_steps': 310, 'batch_size': 128, 'start': 'net.safetensors (config.init)',
                  'supersub_steps': {'vanilla': 0, 'superclass': 60, 'specialists': 250, 'total': 310}}
  line = report.headline(r)
  assert line.startswith('Super-Sub 0.5500 vs the flat network 0.5000 top-1: +5.00 [+1.00, +9.00] points '
                         '(Super-Sub ahead on these 3,800 test images); equal compute, 310 optimizer steps each at '
                         'batch 128 (Super-Sub: generalist 60 + specialists 250); both start from net.safetensors')
  assert 'vanilla' not in line.replace('vanilla_matched', '') and '0 vanilla' not in line
  assert 'docs/benchmarks.md' in line  # where the interval over seeds lives
  r['supersub']['minus_vanilla_interval'] = [-0.01, 0.09]
  assert '(a tie on these 3,800 test images)' in report.headline(r)
  r['compute']['vanilla_steps'] = 100
  assert 'NOT equal compute: the flat network 100 optimizer steps, Super-Sub 310' in report.headline(r)
  # With a compute-matched flat network, the verdict is against it.
  r['baselines'] = {'vanilla_matched': {'top1': 0.6, 'steps': 310, 'supersub_minus': -0.05,
                                        'supersub_minus_interval': [-0.08, -0.02]}}
  assert report.headline(r).startswith('Super-Sub 0.5500 vs the flat network trained as long (vanilla_matched) '
                                       '0.6000 top-1: -5.00 [-8.00, -2.00] points (Super-Sub behind')


def test_report_md_leads_with_the_headline_and_leaves_out_empty_columns_and_shows_timing_spread(tmp_path):
  r = _minimal_report()
  r['rules'] = {'hard': {'top1': 0.55, 'minus_vanilla': 0.05, 'specialists_per_image': 1, 'images_per_s': 50.0,
                         'batch_size': 16, 'ms_range': [200.0, 400.0]}}
  r['throughput'].update({'batch_size': 16, 'by_batch': {'16': {
      'single_ips': 100.0, 'supersub_ips': 50.0, 'ratio': 0.5, 'single_ms': 160.0, 'supersub_ms': 320.0,
      'single_ms_range': [150.0, 170.0], 'supersub_ms_range': [200.0, 400.0], 'specialists_per_batch': 2.0}}})
  md = open(report.write(r, str(tmp_path))['md']).read()
  lines = md.splitlines()
  assert lines[2] == f'**{report.headline(r)}**'  # the verdict, under the title
  assert 'compute-matched' not in md.split('## Decision rules')[1].split('##')[0]  # no all-empty column
  assert '| hard | 0.5500 | +5.00 | 1 | 50 (40-80) |' in md  # 16 images / 0.4 s .. / 0.2 s
  assert '| 16 | 100.0 | 50.0 | 0.500 | 160.00 (150.00-170.00) | 320.00 (200.00-400.00) |' in md
  assert 'Timing is noisy' in md
  assert 'vanilla top-1' not in md and 'single vs' not in md


def test_baseline_rows_give_both_step_counts_when_the_matched_network_trained_longer():
  r = _minimal_report()
  r['compute'] = {'vanilla_steps': 1200, 'batch_size': 128,
                  'supersub_steps': {'vanilla': 1200, 'superclass': 300, 'specialists': 880, 'total': 2380}}
  r['baselines'] = {'vanilla_matched': {'top1': 0.9, 'steps': 2450, 'supersub_minus': -0.0125}}
  rows = dict(report._baseline_rows(r))  # pylint: disable=protected-access
  assert rows['flat network trained for 2,450 steps (Super-Sub: 2,380), top-1'] == '0.9000'


@pytest.mark.parametrize('vanilla_steps,matched,matched_steps,expected', [
    (1200, None, None, '; not at equal compute (no vanilla_matched stage in this run)'),
    (2450, None, None, ' at equal compute (flat network 2,450 steps, Super-Sub 2,450)'),
    (1200, -0.0125, 2450, '; -1.25 against one network trained as long'),
    (1200, -0.0125, 2500, '; -1.25 against one network trained for 2,500 steps'),  # e.g. a linked, longer stage
])
def test_papers_gain_claim_says_whether_the_vanilla_network_had_equal_compute(vanilla_steps, matched, matched_steps,
                                                                             expected):
  r = _minimal_report()
  r['compute'] = {'vanilla_steps': vanilla_steps, 'batch_size': 128,
                  'supersub_steps': {'vanilla': 0, 'superclass': 1200, 'specialists': 1250, 'total': 2450}}
  if matched is not None:
    r['baselines'] = {'vanilla_matched': {'top1': 0.9, 'steps': matched_steps, 'supersub_minus': matched}}
  gain = dict((claim, ours) for claim, _, ours in report.paper_claims_rows(r))[report.PAPER_CLAIMS[1][0]]
  expected_gain = 100 * (r['supersub']['top1'] - r['vanilla']['top1'])
  assert gain == f'{expected_gain:+.2f} points' + expected


def test_per_superclass_gain_plot_draws_one_panel_per_baseline_with_points_and_intervals(tmp_path, monkeypatch):
  import matplotlib.axes  # pylint: disable=g-import-not-at-top
  calls = []
  bar = matplotlib.axes.Axes.bar
  monkeypatch.setattr(matplotlib.axes.Axes, 'bar', lambda self, *a, **k: calls.append((self, a, k)) or bar(self, *a, **k))
  mean = np.asarray([0.02, -0.01, 0.0])
  gains = {'vanilla': np.stack([mean, mean - 0.01, mean + 0.03]), 'head-only': np.stack([mean + 0.2] * 3)}
  path = str(tmp_path / 'gain.png')
  report.plot_per_superclass_gain(['a', 'b', 'c'], gains, path)
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
  report.plot_per_superclass(['a', 'b'], series, [100, 400], path)
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
  report.plot_per_superclass(['a', 'b'], {'flat network': [1.0, 0.9]}, [20, 20], str(tmp_path / 'p.png'),
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
  report.plot_routing(cm, ['a', 'b'], supersub_top1=[0.7, 0.9], routing_top1=[0.8, 0.9], path=path)
  assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  np.testing.assert_allclose(shown[0], [[0.8, 0.2], [0.1, 0.9]])
  (within_label, within), (misrouted_label, misrouted) = bars
  assert within_label.startswith('wrong subclass, right specialist') and misrouted_label.startswith('misrouted')
  np.testing.assert_allclose(within, [0.1, 0.0], atol=1e-12)  # routed right but wrong: 0.8 - 0.7, 0.9 - 0.9
  np.testing.assert_allclose(misrouted, [0.2, 0.1])


def test_build_computes_every_accuracy_from_the_predictions():
  from supersub_jax import hierarchy as hierarchy_lib  # pylint: disable=g-import-not-at-top
  h = hierarchy_lib.synthetic((2, 1))  # labels 0, 1 in superclass 0; 2 in superclass 1
  truth = np.asarray([0, 1, 2, 2])
  p = {'subclass': truth, 'superclass': np.asarray([0, 0, 1, 1]),
       'vanilla': np.asarray([0, 0, 2, 1]),  # errors: 1 -> 0 (within), 2 -> 1 (across)
       'generalist': np.asarray([0, 0, 1, 0]), 'supersub': np.asarray([0, 1, 2, 0]),
       'oracle': np.asarray([0, 1, 2, 2]), 'top2': np.asarray([0, 1, 2, 2]), 'second': np.asarray([0, 0, 0, 1]),
       'vanilla_matched': np.asarray([0, 1, 2, 1]),
       'vanilla_oracle': np.asarray([0, 0, 2, 2]), 'vanilla_matched_oracle': np.asarray([0, 1, 2, 2])}
  r = report.build(p, h, dataset='synthetic', split='test', storage={}, compute={}, top2_threshold=0.8, cut='stem',
                   matched_steps=7)
  assert r['vanilla']['top1'] == 0.5 and r['vanilla']['superclass_top1'] == 0.75
  assert r['superclass']['top1'] == 0.75 and r['supersub']['top1'] == 0.75 and r['supersub']['oracle_top1'] == 1.0
  assert r['supersub']['top2_second_fraction'] == 0.25 and r['supersub']['top1_minus_vanilla'] == 0.25
  assert r['errors']['within_superclass'] == 1 and r['errors']['across_superclass'] == 1
  assert r['vanilla']['oracle_top1'] == 0.75  # the flat network within the true superclass: 3 of 4
  assert [row['vanilla_oracle_top1'] for row in r['per_superclass']] == [0.5, 1.0]
  assert r['baselines']['vanilla_matched'] == {'top1': 0.75, 'supersub_minus': 0.0, 'steps': 7, 'oracle_top1': 1.0,
                                              'supersub_minus_interval': [0.0, 0.0]}  # right on the same images
  # Paired per image: Super-Sub right minus flat right = [0, 1, 0, 0]: mean 0.25, sample std 0.5, so 1.96 * 0.25.
  assert r['supersub']['minus_vanilla_interval'] == pytest.approx([0.25 - 0.49, 0.25 + 0.49])
  assert [row['vanilla_top1'] for row in r['per_superclass']] == [0.5, 0.5]
  assert [row['routing_top1'] for row in r['per_superclass']] == [1.0, 0.5]
