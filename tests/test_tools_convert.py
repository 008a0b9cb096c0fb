"""tools/convert.py, the conversion command, run as a program: import-torchvision, export, network, bundle; one-line
errors, outputs kept out of the workdir's own files, each verb's help."""

import os
import subprocess
import sys

import numpy as np
import pytest

from supersub_jax import convert
from supersub_jax import models
from supersub_jax import weights
from tools import convert as convert_command

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, 'configs')


def _convert(*args, timeout=300, cwd=None):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
  return subprocess.run([sys.executable, '-m', 'tools.convert', *args], capture_output=True, text=True,
                        timeout=timeout, cwd=cwd, env=env)


def test_import_torchvision_cli_reproduces_the_reference_logits(tmp_path):
  output = str(tmp_path / 'resnet18_orbax')
  out = _convert('import-torchvision', '--arch=resnet18', '--width=0.125',
                 f'--input={FIXTURES}/torchvision_basic.safetensors', f'--output={output}')
  assert out.returncode == 0, out.stderr
  assert f'wrote {output}: resnet18' in out.stdout
  variables, meta = weights.load_orbax(output)
  assert meta['num_classes'] == 10 and meta['source_sha256'] == weights.file_sha256(
      f'{FIXTURES}/torchvision_basic.safetensors')
  with np.load(f'{FIXTURES}/torchvision_basic.npz') as ref:
    model = models.create_model('resnet18', 10, width=0.125)
    logits = np.asarray(model.apply(variables, ref['input_nchw'].transpose(0, 2, 3, 1), train=False))
    assert np.abs(logits - ref['logits']).max() / np.abs(ref['logits']).max() < 1e-4


@pytest.mark.slow
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path):
  weights_file = f'{FIXTURES}/torchvision_basic.safetensors'
  output = str(tmp_path / 'out')
  cases = {
      'wrong architecture': (['import-torchvision', '--arch=resnet50', f'--input={weights_file}'],
                             'does not fit ResNet'),
      'unknown architecture': (['import-torchvision', '--arch=vgg16', f'--input={weights_file}'],
                               'value should be one of'),
      'not a state dict': (['import-torchvision', '--arch=resnet18', f'--input={FIXTURES}/torchvision_basic.npz'],
                           'has no fc.weight'),
      'wrong file type': (['import-torchvision', '--arch=resnet18', f'--input={FIXTURES}/../conftest.py'],
                          "unknown weights file type '.py'"),
      'missing workdir': (['export', f'--workdir={tmp_path}/none', '--superclass=0', f'--config={CONFIGS}/synthetic.py'],
                          'No superclass checkpoint'),
      'no verb': ([], 'give one verb'),
  }
  for name, (args, message) in cases.items():
    out = _convert(*args, f'--output={output}')
    assert out.returncode != 0, name
    assert message in out.stderr, (name, out.stderr)
    assert 'Traceback' not in out.stderr, name
  assert os.listdir(tmp_path) == []


def test_an_output_among_the_workdirs_own_files_is_refused_in_one_line(tiny_workdir, tmp_path):
  _, workdir, _ = tiny_workdir
  before = {name: os.path.getmtime(os.path.join(workdir, name)) for name in os.listdir(workdir)}
  for verb, output in ((['bundle'], 'config.json'), (['export', '--superclass=0'], 'vanilla/exported')):
    out = _convert(*verb, f'--workdir={workdir}', f'--output={os.path.join(workdir, output)}')
    assert out.returncode == 1, (output, out.stderr[-3000:])
    assert 'Traceback' not in out.stderr
    assert 'is inside the workdir' in out.stderr.splitlines()[-1], (output, out.stderr)
  assert {name: os.path.getmtime(os.path.join(workdir, name)) for name in os.listdir(workdir)} == before
  for output in ('metrics.jsonl', 'report.md', 'report.json', '.lock', '.', 'plot.png', 'superclass/x', 'results.json'):
    with pytest.raises(ValueError, match='is inside the workdir'):
      convert.check_output_outside(os.path.join(workdir, output), workdir)
  for output in (f'{tmp_path}/a.msgpack', f'{workdir}/../outside.msgpack', f'{workdir}/new.msgpack'):  # allowed
    convert.check_output_outside(output, workdir)


def test_an_empty_path_flag_is_refused_in_one_line(tmp_path):
  from processes import run_together  # pylint: disable=g-import-not-at-top
  cases = ((['bundle', '--workdir=', f'--output={tmp_path}/b.msgpack'], 'workdir'),
           (['bundle', f'--workdir={tmp_path}', '--output='], 'output'),
           (['import-torchvision', '--arch=resnet18', '--input=', f'--output={tmp_path}/o'], 'input'))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
  outs = run_together([[sys.executable, '-m', 'tools.convert', *args] for args, _ in cases], env=env,
                      cwd=tmp_path, timeout=300)
  for (args, flag), (code, out) in zip(cases, outs):
    assert code == 1 and 'Traceback' not in out, out[-3000:]
    assert [l for l in out.splitlines() if l.startswith('error: ')][0].startswith(f'error: --{flag} is empty'), out


def test_without_output_a_conversion_writes_into_the_workdir_named_for_what_it_writes(tiny_workdir, tmp_path):
  assert convert.default_output('export', 'w', fmt='npz', superclass=2) == os.path.join('w', 'specialist2.npz')
  assert convert.default_output('network', 'w', fmt='orbax', stage='vanilla') == os.path.join('w', 'vanilla_orbax')
  assert convert.default_output('bundle', 'w') == os.path.join('w', 'supersub.msgpack')
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'workdir')
  shutil.copytree(tiny_workdir[1], workdir)  # it writes there: a copy of the shared workdir
  out = _convert('network', f'--workdir={workdir}', '--stage=vanilla', '--format=safetensors')
  assert out.returncode == 0, out.stderr[-3000:]
  assert os.path.getsize(os.path.join(workdir, 'vanilla.safetensors')) > 0
  assert f'wrote {workdir}/vanilla.safetensors' in out.stdout


def test_a_missing_workdir_is_named_with_the_command_that_makes_one(tmp_path):
  out = _convert('network', f'--workdir={tmp_path}/none', '--stage=vanilla')
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert f'error: --workdir={tmp_path}/none does not exist: train one first (python train.py' in out.stderr
  assert '--config=<the configs' not in out.stderr  # not the fix for a workdir that is not there
  assert os.listdir(tmp_path) == []


def test_each_verb_help_shows_an_example():
  for verb in convert_command.VERBS:
    out = _convert(verb, '--help')
    assert out.returncode == 0
    assert f'python -m tools.convert {verb} --' in out.stdout, verb
    assert '--output' in out.stdout
