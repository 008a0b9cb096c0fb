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
