"""Tests of supersub_jax.report: metrics from predictions, the report.json schema and the report's files."""

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from supersub_jax import report
from test_report_text import _minimal_report


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


def test_write_puts_the_figures_beside_the_reports_and_lists_them(tmp_path):
  def figures(folder):  # writes into the staged folder that becomes the workdir's files
    with open(os.path.join(folder, 'a.png'), 'wb') as f:
      f.write(b'png')
    return ['a.png']

  paths = report.write(_minimal_report(), str(tmp_path), figures=figures)
  assert open(tmp_path / 'a.png', 'rb').read() == b'png'
  assert json.load(open(paths['json']))['plots'] == ['a.png']
  assert '![a.png](a.png)' in open(paths['md']).read()


def _two_superclass_predictions():
  truth = np.asarray([0, 1, 2, 2])
  return {'subclass': truth, 'superclass': np.asarray([0, 0, 1, 1]), 'vanilla': np.asarray([0, 0, 2, 1]),
          'generalist': np.asarray([0, 0, 1, 0]), 'supersub': np.asarray([0, 1, 2, 0]),
          'oracle': truth, 'top2': truth, 'second': np.asarray([0, 0, 0, 1]),
          'rule:hard/flat': np.asarray([0, 1, 2, 2])}


def test_each_rule_carries_its_paired_interval_and_the_verdict_rule_must_be_one_evaluated():
  from supersub_jax import hierarchy as hierarchy_lib  # pylint: disable=g-import-not-at-top
  h = hierarchy_lib.synthetic((2, 1))
  p = _two_superclass_predictions()
  r = report.build(p, h, dataset='synthetic', split='test', storage={}, compute={}, top2_threshold=0.8, cut='stem',
                   rules={'hard/flat': 1}, verdict_rule='hard/flat')
  row = r['rules']['hard/flat']
  assert r['verdict_rule'] == 'hard/flat' and row['top1'] == 1.0 and row['minus_vanilla'] == 0.5
  # Rule right minus flat right = [0, 1, 0, 1]: mean 0.5, sample std 1/sqrt(3), so 1.96 * (1/sqrt(3)) / 2.
  half = 1.96 * (1 / np.sqrt(3)) / 2
  assert row['minus_vanilla_interval'] == pytest.approx([0.5 - half, 0.5 + half])
  with pytest.raises(ValueError, match="verdict_rule 'soft:2/flat' is not among the rules evaluated"):
    report.build(p, h, dataset='synthetic', split='test', storage={}, compute={}, top2_threshold=0.8, cut='stem',
                 rules={'hard/flat': 1}, verdict_rule='soft:2/flat')


def _map_summary():
  def cell(m, width, steps, gap, runs, bases):
    return {'specificity': m, 'width': width, 'steps': steps, 'extra': steps / 2400, 'runs': runs, 'bases': bases,
            'rules': {'hard/flat': {'gap': gap, 'low': gap - 0.01, 'high': gap + 0.01}}}
  return {'cells': [cell(10, 1.0, 581, 0.011, [[0, 0], [0, 1], [1, 0]], [0, 1]),
                    cell(1, 1.0, 581, -0.001, [[0, 0], [0, 1]], [0]),
                    cell(10, 0.25, 581, 0.008, [[0, 1]], [0]),
                    cell(1, 1.0, 310, 0.5, [[0, 0]], [0])]}


def test_map_cell_finds_the_runs_cell_and_the_control_of_the_same_width_and_steps():
  found = report.map_cell(_map_summary(), specificity=10, width=1.0, steps=581, rule='hard/flat')
  assert found['cell'] == {'specificity': 10, 'width': 1.0, 'steps': 581, 'runs': 3, 'bases': [0, 1], 'gap': 0.011,
                           'low': pytest.approx(0.001), 'high': pytest.approx(0.021)}
  assert found['control']['gap'] == -0.001 and found['control']['runs'] == 2  # not the 310-step control
  assert found['setting'] == {'specificity': 10, 'width': 1.0, 'steps': 581} and found['rule'] == 'hard/flat'
  # Another budget, width or rule is not this run's cell.
  assert report.map_cell(_map_summary(), specificity=10, width=1.0, steps=600, rule='hard/flat')['cell'] is None
  assert report.map_cell(_map_summary(), specificity=10, width=0.5, steps=581, rule='hard/flat')['control'] is None
  assert report.map_cell(_map_summary(), specificity=10, width=1.0, steps=581, rule='hard')['cell'] is None
  # The map's capacity comparison of this cell and rule, when it has one.
  capacity = [{'specificity': 10, 'width': 1.0, 'wide': 1.125, 'steps': 581, 'rule': 'hard/flat', 'runs': [10, 2],
               'gap': -0.004, 'low': -0.01, 'high': 0.002},
              {'specificity': 10, 'width': 1.0, 'wide': 1.125, 'steps': 581, 'rule': 'soft:2/flat', 'runs': [10, 2],
               'gap': 0.5, 'low': 0.4, 'high': 0.6}]
  assert report.map_cell(_map_summary(), specificity=10, width=1.0, steps=581, rule='hard/flat')['wider'] is None
  assert report.map_cell(_map_summary(), specificity=10, width=1.0, steps=581, rule='hard/flat',
                         capacity=capacity)['wider'] == {'wide': 1.125, 'runs': [10, 2], 'gap': -0.004, 'low': -0.01,
                                                         'high': 0.002}
