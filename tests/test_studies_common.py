"""studies/common.py: the map's statistics on hand-built runs, against cell-mean algebra and scipy's t quantile; the
flat network's superclass read from its subclass logits, against hand-built cases and the softmax."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import numpy as np
import pytest
from scipy import stats

from studies import common


def _run(m, width, base, seed, flat, hard, oracle=0.95, flat_oracle=0.94):
  return {'regime': 'converged', 'extra': 0.065, 'steps': 310, 'seed': seed, 'base': base, 'specificity': m,
          'width': width, 'flat': flat, 'rules': {'hard': hard}, 'oracle': oracle, 'flat_oracle': flat_oracle}


def test_mean_interval_is_the_student_t_interval():
  # [1, 2, 3]: mean 2, sample std 1, t(0.975, df=2) = 4.302652729911275 (statistical tables).
  mean, low, high = common.mean_interval([1.0, 2.0, 3.0])
  half = 4.302652729911275 / np.sqrt(3)
  assert mean == 2.0 and low == pytest.approx(2 - half) and high == pytest.approx(2 + half)
  assert np.isnan(common.mean_interval([0.5])[1])


def test_the_interaction_model_on_a_two_by_two_grid_is_the_difference_of_differences_of_cell_means():
  rng = np.random.default_rng(0)
  cells = {(1, 0.25): 0.0, (10, 0.25): 0.02, (1, 1.0): -0.005, (10, 1.0): 0.001}
  m, w, y = [], [], []
  for (mm, ww), mean in cells.items():
    for _ in range(4):
      m.append(mm), w.append(ww), y.append(mean + 0.003 * rng.standard_normal())
  m, w, y = np.array(m), np.array(w), np.array(y)
  fit = common.interaction(m, w, y)
  means = {c: y[(m == c[0]) & (w == c[1])].mean() for c in cells}
  # Coding: m' = 1 at m = 10, w' = 1 at width 1.0 (log2 width scaled to [0, 1]).
  assert fit['intercept'][0] == pytest.approx(means[(1, 0.25)])
  assert fit['specificity'][0] == pytest.approx(means[(10, 0.25)] - means[(1, 0.25)])
  assert fit['width'][0] == pytest.approx(means[(1, 1.0)] - means[(1, 0.25)])
  assert fit['specificity x width'][0] == pytest.approx(
      means[(10, 1.0)] - means[(1, 1.0)] - means[(10, 0.25)] + means[(1, 0.25)])
  # The interval: pooled within-cell variance on 16 - 4 degrees of freedom; the interaction's standard error is that
  # of a contrast of four means of 4 runs, sqrt(4 / 4) sigma.
  pooled = sum(((y[(m == c[0]) & (w == c[1])] - means[c]) ** 2).sum() for c in cells) / 12
  half = stats.t.ppf(0.975, 12) * np.sqrt(pooled)
  estimate, low, high = fit['specificity x width']
  assert fit['dof'] == 12 and high - estimate == pytest.approx(half) and estimate - low == pytest.approx(half)


def test_a_grid_with_one_width_drops_the_width_terms_and_one_run_a_cell_leaves_no_interval():
  fit = common.interaction(np.array([1, 10, 1, 10]), np.array([1.0, 1.0, 1.0, 1.0]), np.array([0.0, 0.01, 0.002,
                                                                                               0.013]))
  assert set(fit) == {'dof', 'intercept', 'specificity'} and fit['dof'] == 2
  assert fit['specificity'][0] == pytest.approx(0.0105)
  single = common.interaction(np.array([1, 10]), np.array([1.0, 1.0]), np.array([0.0, 0.01]))
  assert single['dof'] == 0 and np.isnan(single['specificity'][1])


def test_map_summary_pairs_each_cell_over_its_runs_and_tables_show_every_cell():
  runs = [_run(1, 1.0, 0, s, 0.9, 0.9 + d) for s, d in enumerate((0.001, -0.002, 0.0))]
  runs += [_run(10, 1.0, b, 0, 0.8, 0.8 + d) for b, d in enumerate((0.01, 0.02))]
  summary = common.map_summary(runs)
  control, test = summary['cells']
  assert control['specificity'] == 1 and len(control['runs']) == 3 and test['bases'] == [0, 1]
  mean, low, high = common.mean_interval([0.001, -0.002, 0.0])
  assert control['rules']['hard']['gap'] == pytest.approx(mean) and control['rules']['hard']['low'] == pytest.approx(low)
  assert test['rules']['hard']['gap'] == pytest.approx(0.015)
  assert test['given_superclass']['gap'] == pytest.approx(0.01)  # 0.95 - 0.94 in every run
  [model] = summary['models']
  assert model['rule'] == 'hard' and model['runs'] == 5 and model['specificity'][0] == pytest.approx(0.015 + 1 / 3000)
  table = common.map_tables(runs)
  assert '| 310 | 1 | 1 | 3 | 0.9000 |' in table and '| 310 | 10 | 1 | 2 | 0.8000 | +1.50 [' in table


def test_given_superclass_takes_the_argmax_over_the_true_superclass_columns_only():
  sizes = (3, 2)
  # Image 0 (class 1, superclass 0): its best logit overall is class 4 (superclass 1), its best of 0-2 is class 1.
  # Image 1 (class 2): best of 0-2 is class 0, wrong. Image 2 (class 3, superclass 1): best of 3-4 is 3, right,
  # though class 0 is higher. Image 3 (class 4): best of 3-4 is 4, right.
  logits = np.array([[0.0, 1.0, 0.5, 0.2, 9.0],
                     [2.0, 0.0, 1.0, 0.0, 0.0],
                     [5.0, 0.0, 0.0, 1.0, 0.5],
                     [0.0, 0.0, 0.0, 0.1, 0.2]], np.float32)
  labels = np.array([1, 2, 3, 4])
  assert common.given_superclass(logits, labels, sizes) == [0.5, 1.0]


def test_given_superclass_of_random_logits_equals_a_loop_over_images():
  rng = np.random.default_rng(0)
  sizes = (4, 2, 3)
  labels = rng.integers(0, sum(sizes), 200)
  logits = rng.standard_normal((200, sum(sizes)))
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  right = np.zeros(len(sizes))
  count = np.zeros(len(sizes))
  for row, label in zip(logits, labels):
    s = int(np.searchsorted(np.cumsum(sizes), label, side='right'))
    count[s] += 1
    right[s] += starts[s] + int(np.argmax(row[starts[s]:starts[s] + sizes[s]])) == label
  np.testing.assert_allclose(common.given_superclass(logits, labels, sizes), right / count)


def test_superclass_level_sums_subclass_probabilities_and_counts_errors_that_name_the_morph_partner():
  # Ten superclasses (render's partner of s is s + 5 mod 10); superclass 0 has two subclasses (labels 0, 1), every
  # other one (labels 2..10 for superclasses 1..9).
  sizes = (2,) + (1,) * 9
  probs = np.full((4, 11), 1e-6)
  probs[0, [0, 1, 2]] = 0.3, 0.3, 0.4   # true 0: its two subclasses sum to 0.6 > 0.4, though label 2 is the argmax
  probs[1, 6] = 1.0                     # true 0, answered superclass 5: its morph partner
  probs[2, 2] = 1.0                     # true 1, right
  probs[3, 2] = 1.0                     # true 5, answered superclass 1: not its partner (0)
  labels = np.array([0, 1, 2, 6])
  level = common.superclass_level(np.log(probs), labels, sizes)
  assert level['top1'] == pytest.approx(0.5)
  assert level['partner_share'] == pytest.approx(0.5)
  assert level['per_superclass'][:2] == pytest.approx([0.5, 1.0]) and level['per_superclass'][5] == 0.0
  assert np.isnan(level['per_superclass'][2])  # no image of superclass 2


READOUT_SIZES = (3, 2, 1)


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.float64, (4, 6), elements=st.floats(-20, 20)))
def test_logsumexp_ranks_superclasses_by_their_summed_softmax_probability(logits):
  scores = common.superclass_readouts(logits, READOUT_SIZES)['logsumexp']
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  summed = np.stack([probs[:, :3].sum(-1), probs[:, 3:5].sum(-1), probs[:, 5]], -1)
  # log of the summed probability, up to the per-image log of the softmax's normaliser.
  offset = np.log(summed) - scores
  np.testing.assert_allclose(offset, offset[:, :1] * np.ones_like(offset), atol=1e-9)


def test_mean_plus_log_n_is_the_logsumexp_where_a_superclasss_subclasses_score_alike_and_below_it_elsewhere():
  alike = np.array([[1.0, 1.0, 1.0, -2.0, -2.0, 0.5]])
  pooled = common.superclass_readouts(alike, READOUT_SIZES)
  np.testing.assert_allclose(pooled['mean + log n'], pooled['logsumexp'], atol=1e-12)
  apart = np.array([[4.0, 0.0, 0.0, 3.0, -3.0, 0.5]])
  pooled = common.superclass_readouts(apart, READOUT_SIZES)
  assert (pooled['mean + log n'][:, :2] < pooled['logsumexp'][:, :2]).all()  # Jensen: strictly, unequal logits
  np.testing.assert_allclose(pooled['max'], [[4.0 - 4.0, 3.0 - 4.0, 0.5 - 4.0]])  # shifted by the row's max


def test_write_map_colours_the_figure_by_the_rule_asked_and_tables_every_rule(tmp_path):
  rows = []
  for seed in (0, 1):
    for m in (1, 10):
      row = _run(m, 1.0, 0, seed, flat=0.80, hard=0.10)
      row['rules']['hard/flat'] = 0.81 + 0.01 * seed
      rows.append(row)
  common.write_map(str(tmp_path / 'map'), rows, with_plot=True, rule='hard/flat')
  assert (tmp_path / 'map.png').stat().st_size > 0
  table = (tmp_path / 'map.md').read_text()
  assert '| hard | hard/flat |' in table and '-70.00' in table and '+1.50 [' in table
  with pytest.raises(ValueError, match="no cell has the rule 'poe:2'"):
    common.write_map(str(tmp_path / 'other'), rows, with_plot=True, rule='poe:2')


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float64, st.integers(2, 8), elements=st.floats(0, 1)),
       hnp.arrays(np.float64, st.integers(2, 8), elements=st.floats(0, 1)))
def test_welch_interval_is_scipys_unequal_variance_t_interval(a, b):
  diff, low, high = common.welch_interval(a, b)
  assert diff == pytest.approx(a.mean() - b.mean(), abs=1e-12)
  if min(a.var(), b.var()) > 1e-6:  # scipy warns of lost precision on a near-constant sample
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (low, high) == (pytest.approx(ci.low, abs=1e-9), pytest.approx(ci.high, abs=1e-9))


def test_the_capacity_comparison_pits_super_sub_at_one_width_against_flat_at_the_wider_one_alone(tmp_path):
  rows = [_run(10, 1.0, 0, s, flat=0.80, hard=0.83 + 0.01 * s) for s in range(3)]
  rows += [_run(10, 1.125, 0, s, flat=0.81 + 0.02 * s, hard=0.5) for s in range(2)]
  (c,) = common.capacity_comparison(rows, 1.0, 1.125)
  assert c['runs'] == (3, 2) and c['supersub'] == pytest.approx(0.84) and c['wide_flat'] == pytest.approx(0.82)
  assert c['gap'] == pytest.approx(0.02) and c['low'] < 0.02 < c['high']
  common.write_map(str(tmp_path / 'map'), rows, with_plot=True, capacity=(1.0, 1.125))  # the baseline under the map
  data = json.loads((tmp_path / 'map.json').read_text())
  assert [c['width'] for c in data['summary']['cells']] == [1.0]  # the wider width is a baseline, not a cell
  md = (tmp_path / 'map.md').read_text()
  assert '| 310 | 10 | 1 | 1.125 | hard | 3, 2 | 0.8400 | 0.8200 | +2.00 [' in md
  # Super-Sub at the wider width against its own flat network, paired: hard - flat = 0.5 - (0.81, 0.83).
  wide = common.mean_interval([0.5 - 0.81, 0.5 - 0.83])
  assert f'| 310 | 10 | 1.125 | 2 | 0.8200 | {common._points(*wide)} |' in md.split('Super-Sub at the wider width')[1]


def test_a_cell_on_two_bases_is_also_tabled_base_by_base_with_each_bases_own_interval():
  rows = [_run(10, 1.0, b, s, flat=0.80, hard=0.80 + 0.01 * (b + 1) + 0.001 * s) for b in (0, 1) for s in range(3)]
  rows += [_run(1, 1.0, 0, s, flat=0.90, hard=0.90) for s in range(2)]
  table = common.map_tables(rows)
  base0 = common.mean_interval([0.010, 0.011, 0.012])
  assert f'| 310 | 10 | 1 | 0 | 3 | {common._points(*base0)} |' in table
  assert '| 310 | 10 | 1 | 1 | 3 | +2.10 [' in table
  assert '| 310 | 1 | 1 | 0 |' not in table  # one base: only in the pooled table


def test_with_a_cell_of_the_grid_missing_the_interaction_is_left_out_and_the_main_effects_are_the_cell_differences():
  # Cells (m, w): (1, 1.0) gap 0, (10, 1.0) gap 1, (10, 0.25) gap 3 (points), two runs each, no noise.
  m = np.array([1, 1, 10, 10, 10, 10])
  w = np.array([1.0, 1.0, 1.0, 1.0, 0.25, 0.25])
  gap = np.array([0.0, 0.0, 1.0, 1.0, 3.0, 3.0])
  model = common.interaction(m, w, gap)
  assert 'specificity x width' not in model and model['dof'] == 3
  assert model['specificity'][0] == pytest.approx(1.0) and model['width'][0] == pytest.approx(-2.0)
  assert model['intercept'][0] == pytest.approx(2.0)  # width scaled so that 0.25 -> 0: the (m=1, w=0.25) cell's value
