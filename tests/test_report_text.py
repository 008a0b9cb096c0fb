"""Tests of supersub_jax.report_text: the headline, the terminal table and report_text.md."""

import pytest

from supersub_jax import report_text


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


def test_report_md_opens_with_the_papers_claims_and_shows_both_baselines_gaps():
  full = _minimal_report()
  full['compute'] = {'vanilla_steps': 1200, 'batch_size': 128,
                     'supersub_steps': {'vanilla': 1200, 'superclass': 300, 'specialists': 950, 'total': 2450}}
  full['baselines'] = {'vanilla_matched': {'top1': 0.9, 'steps': 2450, 'supersub_minus': -0.0125},
                       'head_only': {'top1': 0.7, 'supersub_minus': 0.1875}}
  md = report_text.render_markdown(full)
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
  line = report_text.headline(r)
  assert line.startswith('Super-Sub 0.5500 vs the flat network 0.5000 top-1: +5.00 [+1.00, +9.00] points '
                         '(Super-Sub ahead on these 3,800 test images); equal compute, 310 optimizer steps each at '
                         'batch 128 (Super-Sub: generalist 60 + specialists 250); both start from net.safetensors')
  assert 'vanilla' not in line.replace('vanilla_matched', '') and '0 vanilla' not in line
  assert 'docs/benchmarks.md' in line  # where the interval over seeds lives
  r['supersub']['minus_vanilla_interval'] = [-0.01, 0.09]
  assert '(a tie on these 3,800 test images)' in report_text.headline(r)
  r['compute']['vanilla_steps'] = 100
  assert 'NOT equal compute: the flat network 100 optimizer steps, Super-Sub 310' in report_text.headline(r)
  # With a compute-matched flat network, the verdict is against it.
  r['baselines'] = {'vanilla_matched': {'top1': 0.6, 'steps': 310, 'supersub_minus': -0.05,
                                        'supersub_minus_interval': [-0.08, -0.02]}}
  assert report_text.headline(r).startswith('Super-Sub 0.5500 vs the flat network trained as long (vanilla_matched) '
                                       '0.6000 top-1: -5.00 [-8.00, -2.00] points (Super-Sub behind')


def test_report_md_leads_with_the_headline_and_leaves_out_empty_columns_and_shows_timing_spread():
  r = _minimal_report()
  r['rules'] = {'hard': {'top1': 0.55, 'minus_vanilla': 0.05, 'specialists_per_image': 1, 'images_per_s': 50.0,
                         'batch_size': 16, 'ms_range': [200.0, 400.0]}}
  r['throughput'].update({'batch_size': 16, 'by_batch': {'16': {
      'single_ips': 100.0, 'supersub_ips': 50.0, 'ratio': 0.5, 'single_ms': 160.0, 'supersub_ms': 320.0,
      'single_ms_range': [150.0, 170.0], 'supersub_ms_range': [200.0, 400.0], 'specialists_per_batch': 2.0}}})
  md = report_text.render_markdown(r)
  lines = md.splitlines()
  assert lines[2] == f'**{report_text.headline(r)}**'  # the verdict, under the title
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
  rows = dict(report_text._baseline_rows(r))  # pylint: disable=protected-access
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
  gain = dict((claim, ours) for claim, _, ours in report_text.paper_claims_rows(r))[report_text.PAPER_CLAIMS[1][0]]
  expected_gain = 100 * (r['supersub']['top1'] - r['vanilla']['top1'])
  assert gain == f'{expected_gain:+.2f} points' + expected


def test_headline_reports_the_configured_verdict_rule_with_its_own_interval():
  r = _minimal_report()
  r['test_count'] = 3800
  r['compute'] = {'vanilla_steps': 581, 'batch_size': 128, 'start': 'base.safetensors (config.init)',
                  'supersub_steps': {'vanilla': 0, 'superclass': 1, 'specialists': 580, 'total': 581}}
  r['rules'] = {'hard/flat': {'top1': 0.5079, 'minus_vanilla': 0.0079, 'minus_vanilla_interval': [0.002, 0.0138],
                              'specialists_per_image': 1}}
  r['verdict_rule'] = 'hard/flat'
  assert report_text.headline(r).startswith(
      'Super-Sub (rule hard/flat) 0.5079 vs the flat network 0.5000 top-1: +0.79 [+0.20, +1.38] points (Super-Sub '
      'ahead on these 3,800 test images); equal compute, 581 optimizer steps each')
  md = report_text.render_markdown({**r, 'storage': {**r['storage'], 'num_superclasses': 10}})
  assert '+0.79 points (rule hard/flat)' in md  # the paper's gain claim, under the same rule
  # The generalist's routes, which this verdict does not use, are labelled as such.
  assert "| generalist superclass top-1 (not the router of the verdict's rule, hard/flat) | 0.9000 |" in md
  r['verdict_rule'] = 'hard'
  assert report_text.headline(r).startswith('Super-Sub 0.5500 vs the flat network 0.5000')


def test_map_line_names_the_cell_and_quotes_the_map_here_and_in_the_control_cell():
  where = {'rule': 'hard/flat', 'source': 'docs/results/map.json',
           'setting': {'specificity': 10, 'width': 1.0, 'steps': 581},
           'cell': {'runs': 7, 'bases': [0, 1], 'gap': 0.0107, 'low': 0.0071, 'high': 0.0142},
           'control': {'runs': 3, 'bases': [0], 'gap': -0.0004, 'low': -0.0041, 'high': 0.0034}}
  line = report_text.map_line({'map': where})
  assert line == ("This run is the cell specificity 10, width 1, 581 steps an arm (each superclass's subclasses "
                  'differ by a cue kind only it uses) of the map docs/results/map.json: Super-Sub (hard/flat) minus the '
                  'flat network there, paired 95% intervals: this cell +1.07 [+0.71, +1.42] points over 7 run(s) on '
                  '2 base network(s); the control cell (specificity 1, the same width and steps) -0.04 [-0.41, +0.34] '
                  'points over 3 run(s) on 1 base network(s).')
  assert 'not on the map' in report_text.map_line({'map': {**where, 'cell': None}})
  wider = {'wide': 1.125, 'runs': [10, 2], 'gap': -0.0041, 'low': -0.0102, 'high': 0.0020}
  assert report_text.map_line({'map': {**where, 'wider': wider}}).endswith(
      '; against a flat network of width 1.125 (about as many stored parameters as Super-Sub, its own base networks, '
      'the same steps) -0.41 [-1.02, +0.20] points (Welch, 10 and 2 runs).')
  assert report_text.map_line({}) is None
  md = report_text.render_markdown({**_minimal_report(), 'map': where})
  assert md.index(line) < md.index('## Summary')
