"""evaluate.py on a tiny trained workdir: the report's schema, consistency and files."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from supersub_jax import evaluation
from supersub_jax import report as report_lib
from supersub_jax import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def evaluated(tiny_workdir, evaluated_workdir):
  """(config, workdir, the stages' results, the report) of the run's one evaluation (read-only: copy to change)."""
  config, _, results = tiny_workdir
  workdir, report = evaluated_workdir
  return config, workdir, results, report


def test_report_follows_schema_and_files_exist(evaluated):
  _, workdir, _, report = evaluated
  report_lib.validate(report)
  on_disk = json.load(open(os.path.join(workdir, 'report.json')))
  report_lib.validate(on_disk)
  for name in on_disk['plots'] + ['report.md']:
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  with open(os.path.join(workdir, on_disk['plots'][0]), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_every_key_the_report_module_documents_is_in_a_real_report(evaluated):
  # The schema's one home is report.py's docstring (the README points there): each documented stable key, with the
  # rules' placeholder filled by the paper's rule and the optional stages' keys present (this workdir has both).
  import re  # pylint: disable=g-import-not-at-top
  _, _, _, report = evaluated
  keys = re.findall(r'^``([a-z_0-9.<>]+)`` {2,}', report_lib.__doc__, re.M)  # the table's rows
  assert len(keys) >= 15
  for key in keys:
    node = report
    for part in key.replace('<rule>', 'hard').split('.'):
      assert isinstance(node, dict) and part in node, (key, part)
      node = node[part]


def test_report_agrees_with_the_training_stages(evaluated):
  _, _, results, report = evaluated
  # The same checkpoints evaluated by two code paths (train-time eval_step vs inference) agree.
  assert report['vanilla']['top1'] == pytest.approx(results['vanilla']['accuracy'])
  assert report['superclass']['top1'] == pytest.approx(results['superclass']['accuracy'])
  assert report['supersub']['oracle_top1'] == pytest.approx(results['specialists']['oracle_top1'])
  assert report['storage']['alpha'] == pytest.approx(results['specialists']['storage']['alpha'])
  assert report['storage']['num_superclasses'] == 3
  assert report['test_count'] == 28


def test_report_compares_with_the_compute_matched_vanilla(evaluated):
  _, _, results, report = evaluated
  baseline = report['baselines']['vanilla_matched']
  assert baseline['top1'] == pytest.approx(results['vanilla_matched']['accuracy'])  # inference = the stage's eval
  assert baseline['steps'] == report['compute']['supersub_steps']['total'] == 28
  assert baseline['supersub_minus'] == pytest.approx(report['supersub']['top1'] - baseline['top1'])
  assert all('vanilla_matched_top1' in row for row in report['per_superclass'])


def test_report_compares_with_head_only_specialists_on_the_same_routes(evaluated):
  _, _, _, report = evaluated
  head = report['baselines']['head_only']
  assert head['supersub_minus'] == pytest.approx(report['supersub']['top1'] - head['top1'])
  assert head['top1'] <= report['superclass']['top1'] + 1e-9  # routed: a wrong superclass is an error
  rows = report['per_superclass']
  total = sum(r['head_only_top1'] * r['test_count'] for r in rows) / sum(r['test_count'] for r in rows)
  assert head['top1'] == pytest.approx(total)


def test_report_gives_every_decision_rule_its_top1_cost_and_gaps(evaluated):
  _, _, _, report = evaluated
  rules = report['rules']
  assert list(rules) == ['hard', 'soft:2', 'hinton:2/mean']
  assert rules['hard']['top1'] == report['supersub']['top1']  # the paper's rule is the routed top-1
  for name, row in rules.items():
    assert row['specialists_per_image'] == (1 if name == 'hard' else 2)
    assert row['images_per_s'] > 0 and row['batch_size'] == 16
    assert row['ms_range'][0] <= row['ms'] <= row['ms_range'][1]
    assert row['minus_vanilla'] == pytest.approx(row['top1'] - report['vanilla']['top1'])
    assert row['minus_vanilla_matched'] == pytest.approx(
        row['top1'] - report['baselines']['vanilla_matched']['top1'])
  md = open(os.path.join(evaluated[1], 'report.md')).read()
  assert '## Decision rules' in md and '| hinton:2/mean |' in md


def test_top1_is_bounded_by_oracle_routing_for_supersub_and_the_flat_network(evaluated):
  _, _, _, report = evaluated
  # An image counts for Super-Sub only if the generalist routed it right: top-1 <= routing accuracy.
  assert report['supersub']['top1'] <= report['superclass']['top1'] + 1e-9
  assert report['supersub']['top1'] <= report['supersub']['oracle_top1'] + 1e-9
  assert 0 <= report['supersub']['top2_second_fraction'] <= 1
  # A right flat answer lies in the true superclass: knowing the superclass cannot lose it.
  assert report['vanilla']['top1'] <= report['vanilla']['oracle_top1'] + 1e-9


@pytest.mark.slow
def test_evaluate_py_reads_the_stored_config_and_warns_about_overrides(evaluated, tmp_path):
  workdir = str(tmp_path / 'workdir')
  shutil.copytree(evaluated[1], workdir)  # it writes a new report: the other tests read the fixture's
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'evaluate.py'), f'--workdir={workdir}',
                        '--config.evaluate.top2_threshold=0.5'], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  # Progress, stage by stage; the threshold changes only Super-Sub's predictions: the rest is read back.
  assert '[evaluate] stage 1/5' in out.stdout and '[evaluate] stage 5/5: report and plots' in out.stdout
  assert 'predictions of Super-Sub on the held-out split' in out.stdout
  assert 'kept: flat network, compute-matched flat network, head-only Super-Sub' in out.stdout
  assert 'Super-Sub top-1 (routed by the generalist)' in out.stdout
  assert 'alpha in alpha*N+1' in out.stdout
  assert '1 config field(s) differ' in out.stderr and 'evaluate.top2_threshold: 0.8 -> 0.5' in out.stderr


def test_evaluate_py_with_another_config_lists_the_differences_and_fails_in_one_line(evaluated):
  _, workdir, _, _ = evaluated
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'evaluate.py'), f'--workdir={workdir}',
                        f'--config={os.path.join(ROOT, "configs", "synthetic.py")}'], capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 1
  assert "model: 'resnet_tiny' -> 'resnet_small'" in out.stderr
  assert 'error: ' in out.stderr and 'was trained with other settings' in out.stderr
  assert "  model: 'resnet_tiny' -> 'resnet_small'" in out.stderr.split('error: ')[1]  # the error lists the field too
  assert 'Traceback' not in out.stderr


def test_inference_is_timed_on_distinct_held_out_batches_at_batch_1_and_a_large_batch(evaluated):
  config, _, _, report = evaluated
  speed, mem = report['throughput'], report['memory']
  # tiny_config times batch 1 and 16 (its held-out split has 28 images).
  assert sorted(speed['by_batch'], key=int) == ['1', '16'] and speed['batch_size'] == 16
  assert speed['single_ips'] == speed['by_batch']['16']['single_ips']
  for row in speed['by_batch'].values():
    assert row['ratio'] == pytest.approx(row['supersub_ips'] / row['single_ips'])
    assert 1 <= row['specialists_per_batch'] <= 3
    assert row['supersub_ms_range'][0] <= row['supersub_ms'] <= row['supersub_ms_range'][1]
  # One measurement behind both tables: the paper's rule is Super-Sub's own timed call at the largest batch.
  assert report['rules']['hard']['images_per_s'] == speed['supersub_ips']
  assert 'held-out' in speed['method'] or config.eval_split in speed['method']
  assert set(mem['by_batch']) == {'1', '16'} and mem['by_batch']['16']['supersub_bytes'] > 0
  resident = mem['params_resident']
  assert resident['supersub_bytes'] == (resident['generalist_bytes'] + resident['bank_bytes'] +
                                        resident['specialist_bytes'])
  # On device the bank keeps the exported encodings, but Elias-Fano positions (about 2 + log2(L/K) bits an entry)
  # become a bitmask or 8-bit indices: at the default density 0.05 with int4 codes that adds ~20% here.
  assert resident['bank_bytes'] <= 1.5 * mem['bank_export_bytes']


@pytest.fixture
def evaluated_copy(evaluated, tmp_path):
  """The evaluated workdir copied, with its config: for the tests that change what an evaluation reads."""
  config, workdir, _, report = evaluated
  copy = str(tmp_path / 'workdir')
  shutil.copytree(workdir, copy)
  return config.copy_and_resolve_references(), copy, report


def _fail(*args, **kwargs):
  raise AssertionError('called, though its result was kept')


def test_a_rerun_with_nothing_changed_returns_the_stored_report_and_loads_no_network(evaluated_copy, monkeypatch):
  config, workdir, report = evaluated_copy
  assert report['evaluation']['kept'] == []  # the fixture's first evaluation computed every part
  monkeypatch.setattr(workdir_lib, 'load_trained', _fail)
  again = evaluation.run(config, workdir)
  assert again['evaluation']['kept'] == ['report']
  assert again['supersub'] == report['supersub'] and again['throughput'] == report['throughput']


def test_a_changed_checkpoint_redoes_only_the_predictions_that_read_it(evaluated_copy, monkeypatch):
  config, workdir, report = evaluated_copy
  # A new metadata file for one head-only specialist: to the fingerprint, a changed checkpoint.
  directory = os.path.join(workdir, 'head_only', sorted(os.listdir(os.path.join(workdir, 'head_only')))[0])
  meta = os.path.join(directory, max(os.listdir(directory), key=lambda n: int(n) if n.isdigit() else -1), 'meta',
                      'metadata')
  stored = json.load(open(meta))
  json.dump({**stored, 'note': 'changed'}, open(meta, 'w'))
  monkeypatch.setattr(evaluation.measure, 'measure_inference', _fail)
  again = evaluation.run(config, workdir)
  assert again['evaluation']['kept'] == ['measurements', 'supersub', 'vanilla', 'vanilla_matched']
  assert again['evaluation']['fingerprints']['head_only'] != report['evaluation']['fingerprints']['head_only']
  assert again['baselines']['head_only'] == report['baselines']['head_only']  # the same arrays, predicted again
  assert again['throughput'] == report['throughput']


def test_a_changed_evaluate_field_redoes_only_what_depends_on_it_and_force_redoes_all(evaluated_copy,
                                                                                       monkeypatch):
  config, workdir, report = evaluated_copy
  calls = []
  fake = {'memory': report['memory'], 'throughput': report['throughput'],
          'rules': {key: {k: row[k] for k in ('images_per_s', 'batch_size', 'ms', 'ms_range')}
                    for key, row in report['rules'].items()}}
  monkeypatch.setattr(evaluation.measure, 'measure_inference', lambda *a, **k: calls.append('measured') or dict(fake))
  config.evaluate.benchmark_batches = 2  # a measurement setting: no prediction reads it
  again = evaluation.run(config, workdir)
  assert again['evaluation']['kept'] == ['head_only', 'supersub', 'vanilla', 'vanilla_matched']
  assert calls == ['measured']
  forced = evaluation.run(config, workdir, force=True)
  assert forced['evaluation']['kept'] == [] and calls == ['measured'] * 2
  assert forced['supersub'] == report['supersub'] and forced['vanilla'] == report['vanilla']


def test_the_verdict_rule_and_the_map_change_the_report_alone_and_put_the_run_on_the_map(evaluated_copy, monkeypatch,
                                                                                          tmp_path):
  config, workdir, report = evaluated_copy
  monkeypatch.setattr(evaluation.measure, 'measure_inference', _fail)
  steps = report['compute']['vanilla_steps']
  cell = {'specificity': int(config.synthetic.specificity), 'width': float(config.width), 'steps': steps,
          'runs': [[0, 0], [0, 1]], 'bases': [0], 'rules': {'hinton:2/mean': {'gap': 0.02, 'low': 0.01, 'high': 0.03}}}
  (tmp_path / 'map.json').write_text(json.dumps({'rows': [], 'summary': {'cells': [cell]}}))
  config.evaluate.verdict_rule = 'hinton:2/mean'
  config.evaluate.map_summary = str(tmp_path / 'map.json')
  again = evaluation.run(config, workdir)
  # No prediction and no measurement reads these fields: every part is kept, the report is rebuilt.
  assert again['evaluation']['kept'] == ['head_only', 'measurements', 'supersub', 'vanilla', 'vanilla_matched']
  row = again['rules']['hinton:2/mean']
  assert again['verdict_rule'] == 'hinton:2/mean' and row['top1'] == report['rules']['hinton:2/mean']['top1']
  assert again['map']['cell']['gap'] == 0.02 and again['map']['cell']['runs'] == 2
  md = open(os.path.join(workdir, 'report.md')).read()
  assert f"Super-Sub (rule hinton:2/mean) {row['top1']:.4f} vs the flat network" in md
  assert 'this cell +2.00 [+1.00, +3.00] points over 2 run(s) on 1 base network(s)' in md


def test_progress_gives_stage_k_of_n_and_an_eta_from_the_pace_after_the_compiling_first_step():
  lines, now = [], [0.0]
  progress = evaluation.Progress(3, clock=lambda: now[0], say=lines.append)
  progress.stage('predictions')
  for i, t in zip(range(1, 21), [10.0] + [1.0] * 19):
    now[0] += t
    progress.step(i, 20, 'batch')
  progress.done('20 batches')
  assert lines[0] == '[evaluate] stage 1/3: predictions'
  assert lines[1] == '[evaluate]   batch 1/20, first batch (compiles) took 10.0s'
  assert lines[2] == '[evaluate]   batch 2/20, ETA 18s'  # 1 s a batch after the first, 18 to go
  assert lines[-2] == '[evaluate]   batch 20/20, done' and lines[-1] == '[evaluate]   20 batches (29.0s)'
  assert len(lines) == 1 + 1 + 10 + 1  # the stage, the first batch, each tenth of the way (the last too), done
