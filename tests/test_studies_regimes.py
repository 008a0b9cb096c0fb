"""studies/regimes.py's summaries on hand-built runs: paired differences, their Student-t intervals (scipy's t
quantile as the reference), the oracle bound and the equal-compute check."""

import numpy as np
import pytest
from scipy import stats

from studies import common
from studies import regimes


def _report(flat, rules, oracle, flat_oracle=None, steps=100, flat_steps=100):
  vanilla = {'top1': flat, 'superclass_top1': 0.98}
  if flat_oracle is not None:
    vanilla['oracle_top1'] = flat_oracle
  return {'vanilla': vanilla, 'superclass': {'top1': 0.97},
          'compute': {'supersub_steps': {'total': steps}, 'vanilla_steps': flat_steps, 'batch_size': 8},
          'supersub': {'oracle_top1': oracle},
          'rules': {name: {'top1': top1, 'images_per_s': 1.0} for name, top1 in rules.items()}}


def _rows(dustbin_has_oracle=False):
  flats, hards, softs = [0.90, 0.92, 0.91], [0.89, 0.925, 0.90], [0.91, 0.93, 0.92]
  oracles, flat_oracles = [0.95, 0.96, 0.955], [0.94, 0.965, 0.95]
  rows = []
  for seed in range(3):
    rows.append(common.row('converged', 0.5, seed, False, _report(
        flats[seed], {'hard': hards[seed], 'soft:2': softs[seed]}, oracles[seed], flat_oracles[seed]), 1000, 0.9))
    rows.append(common.row('converged', 0.5, seed, True, _report(
        flats[seed], {'hard': hards[seed] - 0.01, 'soft:2': softs[seed]}, oracles[seed] - 0.01,
        flat_oracles[seed] if dustbin_has_oracle else None), 1000, 0.9))
  return rows


def _t_interval(diffs):
  d = np.asarray(diffs)
  half = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
  return d.mean(), d.mean() - half, d.mean() + half


def test_summarise_pairs_each_rule_with_the_same_seeds_flat_network_and_gives_the_t_interval():
  summary = regimes.summarise(_rows())
  by = {(s['dustbin'], s['rule']): s for s in summary}
  assert set(by) == {(False, 'hard'), (False, 'soft:2'), (True, 'hard'), (True, 'soft:2')}
  hard = by[(False, 'hard')]
  np.testing.assert_allclose(hard['per_seed'], [-0.01, 0.005, -0.01], atol=1e-12)
  np.testing.assert_allclose((hard['minus_flat'], hard['low'], hard['high']), _t_interval([-0.01, 0.005, -0.01]))
  np.testing.assert_allclose(by[(True, 'hard')]['per_seed'], [-0.02, -0.005, -0.02], atol=1e-12)
  assert hard['seeds'] == 3 and hard['flat'] == pytest.approx(0.91)


def test_oracle_summary_is_specialists_minus_flat_given_the_superclass_over_the_seeds_that_have_it():
  rows = _rows()
  [only] = regimes.oracle_summary(rows)  # dustbin rows have no flat oracle yet: left out, not zero
  assert (only['dustbin'], only['seeds']) == (False, [0, 1, 2])
  np.testing.assert_allclose(only['per_seed'], [0.01, -0.005, 0.005], atol=1e-12)
  np.testing.assert_allclose((only['minus_flat'], only['low'], only['high']), _t_interval([0.01, -0.005, 0.005]))
  assert '+0.33 [' in regimes.oracle_table([only])


def test_shared_flat_oracle_gives_a_dustbin_run_its_siblings_flat_network_and_nothing_across_seeds():
  rows = _rows()
  rows = [r for r in rows if not (r['seed'] == 2 and not r['dustbin'])]  # seed 2's sibling has not finished
  shared = regimes.shared_flat_oracle(rows)
  dustbin = {r['seed']: r['flat_oracle'] for r in shared if r['dustbin']}
  assert dustbin == {0: 0.94, 1: 0.965, 2: None}
  assert all(r['flat_oracle'] is None for r in rows if r['dustbin'])  # a copy: the study's rows are left as read
  _, _, oracle = regimes.summaries(rows)  # what the study prints and writes: shared before summarising
  with_dustbin = [s for s in oracle if s['dustbin']]
  np.testing.assert_allclose(with_dustbin[0]['per_seed'], [0.0, -0.015], atol=1e-12)


def test_row_refuses_arms_of_unequal_compute():
  with pytest.raises(ValueError, match='not equal compute'):
    common.row('converged', 0.5, 0, False, _report(0.9, {'hard': 0.9}, 0.95, steps=100, flat_steps=90), 1000)


def test_wide_table_says_one_seed_instead_of_an_interval():
  rows = [r for r in _rows() if r['seed'] == 0]
  text = regimes.wide_table(regimes.summarise(rows))
  assert '(one seed)' in text and 'nan' not in text
