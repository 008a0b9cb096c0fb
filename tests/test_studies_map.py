"""studies/map.py's resume: a committed run summary is reused only for the dataset version it was made on."""

import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_summary_is_reused_only_on_its_own_dataset_version(tmp_path):
  from supersub_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  runs = tmp_path / 'runs'
  runs.mkdir()
  # The pilot's name (no version: dataset 2.0.0) and a current one, for two seeds of the same cell.
  (runs / 'm10_w0.25_b0_E0.129_s0.json').write_text(json.dumps({'extra_flag': None, 'flat': 0.5}))
  (runs / f'm10_w0.25_b0_E0.129_s1_v{synthetic.VERSION}.json').write_text(
      json.dumps({'extra_flag': None, 'flat': 0.7, 'dataset_version': synthetic.VERSION}))
  (runs / f'm10_w0.25_b0_E0.129_s11_v{synthetic.VERSION}.json').write_text(
      json.dumps({'extra_flag': None, 'flat': 0.9, 'dataset_version': synthetic.VERSION}))
  child = textwrap.dedent(f'''
      import json
      from absl import flags
      from studies import map as study
      flags.FLAGS(['map', '--workdir={tmp_path / "w"}', '--runs_dir={runs}', '--notrain'])
      print(json.dumps([study.run_one(10, 0.25, 0, None, s) for s in (0, 1)]))
      print(study.cell_dir(10, 0.25, 0))
  ''')
  out = subprocess.run([sys.executable, '-c', child], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  stale, current = json.loads(lines[0])
  assert stale is None  # 2.0.0's summary is not this version's: with --notrain, nothing to give
  assert current['flat'] == 0.7  # seed 1's own summary, not seed 11's
  assert lines[1] == str(tmp_path / 'w' / f'v{synthetic.VERSION}' / 'm10_w0.25' / 'base0')


def test_a_variant_reads_only_its_own_summaries_and_shares_stages_only_with_a_finished_run(tmp_path):
  from supersub_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  runs = tmp_path / 'runs'
  runs.mkdir()
  v = synthetic.VERSION
  (runs / f'm10_w1_b0_E0.2_s1_v{v}.json').write_text(json.dumps({'extra_flag': 0.25, 'flat': 0.8, 'dataset_version': v}))
  (runs / f'm10_w1_b0_head_init_E0.2_s2_v{v}.json').write_text(
      json.dumps({'extra_flag': 0.25, 'flat': 0.6, 'dataset_version': v}))
  # One process (the flags are set between the calls): the untagged study, the variant, then the variant training
  # with shared stages whose untagged run never finished, which is refused before anything trains.
  child = textwrap.dedent(f'''
      import json, os
      from absl import flags
      from studies import map as study
      flags.FLAGS(['map', '--workdir={tmp_path / "w"}', '--runs_dir={runs}', '--notrain'])
      print(json.dumps([study.run_one(10, 1.0, 0, 0.25, s) for s in (1, 2)]))
      flags.FLAGS.tag = 'head_init'
      print(json.dumps([study.run_one(10, 1.0, 0, 0.25, s) for s in (1, 2)]))
      print(study.summary_path(10, 1.0, 0, 0.2, 3, study._TAG.value))
      flags.FLAGS.train = True
      flags.FLAGS.share_stages = ['vanilla', 'superclass']
      folder = study.cell_dir(10, 1.0, 0)
      os.makedirs(folder)
      open(os.path.join(folder, 'base.safetensors'), 'w').close()
      open(os.path.join(folder, 'base.json'), 'w').write('{{"path": "x", "steps": 2400}}')
      study.run_one(10, 1.0, 0, 0.25, 5)
  ''')
  out = subprocess.run([sys.executable, '-c', child], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT))
  lines = out.stdout.splitlines()
  assert [r and r['flat'] for r in json.loads(lines[0])] == [0.8, None], out.stderr
  assert [r and r['flat'] for r in json.loads(lines[1])] == [None, 0.6]
  assert lines[2] == str(runs / f'm10_w1_b0_head_init_E0.2_s3_v{v}.json')
  assert out.returncode != 0 and 'is not a finished run: run this cell, E and seed without --tag' in out.stderr
