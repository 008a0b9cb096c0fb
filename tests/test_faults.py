"""Faults as a hostile user meets them: real processes, real signals, damaged files, a full disk, a read-only disk,
two runs on one workdir, two processes of one run.

Every case runs the real entry points (train.py, evaluate.py, python -m tools.convert) on
tests/tiny_config.py in subprocesses; nothing on the signal, lock or save path is mocked. Tests that write into a
workdir or the data copy the session's shared ones first.
"""

import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import make_tiny_config, with_devices
from processes import default_sigint, run_together
from supersub_jax import checkpoint as ckpt
from supersub_jax import runtime
from supersub_jax import setup_of
from supersub_jax import stages
from supersub_jax import workdir as workdir_lib
from supersub_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'tests', 'tiny_config.py')
VANILLA_ONLY = ['--config.stages=("vanilla",)']


def _command(script, data_dir, workdir, *flags):
  return [sys.executable, os.path.join(ROOT, script), f'--config={TINY}:{data_dir}', f'--workdir={workdir}', *flags]


def _run(script, data_dir, workdir, *flags, env=None, timeout=600):
  return subprocess.run(_command(script, data_dir, workdir, *flags), capture_output=True, text=True, env=env,
                        timeout=timeout)


def _error_line(out) -> str:
  """The one line an entry point prints for a handled error (absl's warnings aside); asserts no traceback."""
  assert 'Traceback' not in out.stderr, out.stderr[-3000:]
  lines = [l for l in out.stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1, out.stderr[-3000:]
  return out.stderr[out.stderr.index('error: '):]


def _vanilla_params(data_dir, workdir, *overrides):
  config = make_tiny_config(data_dir)
  for o in overrides:
    field, value = o[len('--config.'):].split('=')
    node = config
    *parents, leaf = field.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(value)
  return workdir_lib.load_network(config, workdir, 'vanilla', setup_of.build(config))


# ----------------------------------------------------------------------------------------------------------- 1. early


def test_bad_config_fails_before_training_with_one_error(tiny_data_dir, tmp_path):
  bad = {'specialists.bits': '3', 'specialists.density': '1.5', 'image_size': '0', 'vanilla.learning_rate': '-0.1',
         'specialists.mask_update_every': '0', 'log_every_steps': '0', 'checkpoint_every_steps': '0',
         'evaluate.benchmark_batch_sizes': '(0,)', 'batch_size': '0', 'evaluate.top2_threshold': '1.5'}
  out = _run('train.py', tiny_data_dir, tmp_path / 'runs' / 'w', *[f'--config.{k}={v}' for k, v in bad.items()])
  assert out.returncode == 1
  message = _error_line(out)
  assert f'cannot run ({len(bad)} problem(s))' in message
  for field, value in bad.items():
    assert f'{field}={value}' in message, field
  assert 'batch_size=0: use a positive multiple of the 1 devices' in message
  assert not (tmp_path / 'runs').exists()  # nothing written, not even the workdir
  env = with_devices(2)
  out = _run('train.py', tiny_data_dir, tmp_path / 'w', '--config.batch_size=15', env=env)
  assert out.returncode == 1
  assert 'batch_size=15: not divisible by the 2 devices; use a multiple of 2, e.g. 14' in _error_line(out)


def test_an_empty_or_missing_workdir_is_one_error_and_writes_nothing_into_the_current_folder(tiny_data_dir,
                                                                                          tmp_path):
  train = [sys.executable, os.path.join(ROOT, 'train.py'), f'--config={TINY}:{tiny_data_dir}']
  cases = [(train + ['--workdir='], 'empty'), (train, 'missing'),  # convert: test_convert
           ([sys.executable, os.path.join(ROOT, 'evaluate.py'), '--workdir=  '], 'empty')]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
  outs = run_together([command for command, _ in cases], env=env, cwd=tmp_path, timeout=300)
  for (command, state), (code, out) in zip(cases, outs):
    assert code == 1 and 'Traceback' not in out, (command, out[-3000:])
    assert [l for l in out.splitlines() if l.startswith('error: ')] == [
        f'error: --workdir is {state}' + (' (\'\'; an unset shell variable?)' if command[-1] == '--workdir=' else
                                          " ('  '; an unset shell variable?)" if state == 'empty' else '') +
        ': pass a path, e.g. --workdir=runs/demo.'], (command, out[-3000:])
  assert os.listdir(tmp_path) == []


def test_config_errors_on_the_command_line_are_one_line_without_a_traceback(tiny_workdir, tmp_path):
  _, trained, _ = tiny_workdir
  syntax, raises = tmp_path / 'syntax.py', tmp_path / 'raises.py'
  syntax.write_text('def get_config():\n  return (\n')
  raises.write_text('def get_config():\n  raise RuntimeError("no such preset")\n')
  cases = [
      ([os.path.join(ROOT, 'train.py'), f'--config={TINY}', '--config.specialists.foo=1'],
       "error: --config.specialists.foo=1: the config has no field 'foo'"),
      ([os.path.join(ROOT, 'evaluate.py'), '--config.foo=1'], "error: --config.foo=1: the config has no field 'foo'"),
      (['-m', 'tools.convert', 'bundle', f'--output={tmp_path}/b.msgpack', '--config.foo=1'],
       "error: --config.foo=1: the config has no field 'foo'"),
      ([os.path.join(ROOT, 'train.py'), f'--config={syntax}'],
       f"error: --config={syntax} could not be loaded: SyntaxError: '(' was never closed ({syntax}, line 2)"),
      (['-m', 'tools.convert', 'bundle', f'--output={tmp_path}/b.msgpack', f'--config={raises}'],
       f'error: --config={raises} could not be loaded: RuntimeError: no such preset ({raises}, line 2)'),
      ([os.path.join(ROOT, 'train.py'), f'--config={tmp_path}/missing.py'],
       f'error: --config={tmp_path}/missing.py could not be read: [Errno 2] No such file or directory'),
  ]
  outs = run_together([[sys.executable, *args, f'--workdir={trained}'] for args, _ in cases], cwd=ROOT,
                      timeout=300)
  for (args, expected), (code, out) in zip(cases, outs):
    assert code == 1, (args, out[-3000:])
    assert 'Traceback' not in out, out[-3000:]
    errors = [l for l in out.splitlines() if l.startswith('error: ')]
    assert len(errors) == 1 and errors[0].startswith(expected), (args, out[-3000:])
  assert sorted(os.listdir(tmp_path)) == ['raises.py', 'syntax.py']


def test_sizes_that_cannot_fit_and_an_empty_stage_list_are_one_error_before_anything_compiles(tiny_data_dir,
                                                                                             tmp_path):
  cases = {'image_size': ('--config.image_size=100000', 'image_size=100000, batch_size=16: training needs at least'),
           'batch': ('--config.batch_size=1000000', 'image_size=16, batch_size=1000000: training needs at least'),
           'stages': ('--config.stages=()', 'stages=(): nothing to train')}
  start = time.monotonic()
  outs = run_together([_command('train.py', tiny_data_dir, tmp_path / name, flag) for name, (flag, _) in cases.items()],
                      timeout=120)
  assert time.monotonic() - start < 60  # refused up front, not after compiling (or swapping)
  for (name, (_, expected)), (code, out) in zip(cases.items(), outs):
    assert code == 1 and 'Traceback' not in out, out[-3000:]
    assert expected in out, (name, out[-3000:])
    assert not (tmp_path / name).exists()  # nothing written, not even config.json


# ---------------------------------------------------------------------------------------------- 2. settings mixed


def test_changed_settings_are_refused_on_resume_and_on_load(tiny_workdir):
  config, workdir, _ = tiny_workdir
  summary = os.path.join(workdir, 'specialists', 'summary.json')
  before = open(summary).read()
  stored_config = open(os.path.join(workdir, 'config.json')).read()
  out = _run('train.py', config.data_dir, workdir, '--config.specialists.density=0.5',
             '--config.vanilla.num_train_steps=4')
  assert out.returncode == 1
  message = _error_line(out)
  assert 'specialists.density: 0.05 -> 0.5 (checkpoints of specialists, head_only)' in message
  assert 'vanilla.num_train_steps: 6 -> 4 (checkpoints of vanilla, vanilla_matched)' in message
  assert 'fresh --workdir' in message
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'evaluate.py'), f'--workdir={workdir}',
                        '--config.specialists.bits=8'], capture_output=True, text=True, timeout=600)
  assert out.returncode == 1 and 'specialists.bits: 4 -> 8' in _error_line(out)
  # Nothing was rewritten: the specialists' summary and the stored config are those of the run that made them.
  assert open(summary).read() == before
  assert open(os.path.join(workdir, 'config.json')).read() == stored_config


# ---------------------------------------------------------------------------------------------------- 3. faults


def _wait_for(proc, predicate, timeout=300):
  """Reads the process's stdout line by line until ``predicate(line)``; returns what it read."""
  seen = []
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    seen.append(line)
    if predicate(line):
      return seen
  proc.kill()
  raise AssertionError('never saw the expected line:\n' + ''.join(seen[-50:]))


@pytest.mark.slow
def test_one_run_per_workdir_sigterm_saves_exits_75_and_the_rerun_resumes_until_sigint(tiny_data_dir, tmp_path):
  workdir = tmp_path / 'w'
  flags = [*VANILLA_ONLY, '--config.vanilla.num_train_steps=100000', '--config.checkpoint_every_steps=100000']
  proc = subprocess.Popen(_command('train.py', tiny_data_dir, workdir, *flags), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  _wait_for(proc, lambda line: 'step 4/100000' in line)
  stored_config = (workdir / 'config.json').read_text()
  # While it trains, a second train.py (other settings, which used to rewrite config.json) and evaluate.py are
  # refused at once, in one line that names the holder.
  for rc, output in run_together([
      _command('train.py', tiny_data_dir, workdir, *flags, '--config.seed=1'),
      [sys.executable, os.path.join(ROOT, 'evaluate.py'), f'--workdir={workdir}']], timeout=300):
    assert rc == 1 and 'Traceback' not in output, output[-3000:]
    assert f'error: {workdir} is in use by train.py (pid {proc.pid} on host ' in output
  assert (workdir / 'config.json').read_text() == stored_config
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == runtime.PREEMPTED_EXIT_CODE == 75
  assert 'Traceback' not in stderr
  [line] = [l for l in stderr.splitlines() if 'preempted' in l]
  saved = int(line.split('saved step ')[1].split(';')[0])
  assert ckpt.make_manager(str(workdir / 'vanilla')).all_steps() == [saved]
  # The rerun takes the lock its predecessor held, resumes, and stops in one line on SIGINT (saved steps kept).
  with default_sigint():
    proc = subprocess.Popen(_command('train.py', tiny_data_dir, workdir, *flags), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  _wait_for(proc, lambda line: f'[vanilla] resuming from step {saved}' in line)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 130 and 'Traceback' not in stderr, stderr[-3000:]
  assert 'interrupted by SIGINT' in stderr
  assert ckpt.make_manager(str(workdir / 'vanilla')).all_steps() == [saved]
  assert not (workdir / '.lock').exists()


def _find_tmp_step(directory):
  if not os.path.isdir(directory):
    return False
  return any('orbax-checkpoint-tmp' in name for name in os.listdir(directory))


@pytest.mark.slow
def test_kill_9_at_any_moment_even_mid_save_leaves_a_restorable_checkpoint(tiny_data_dir, tmp_path):
  flags = [*VANILLA_ONLY, '--config.vanilla.num_train_steps=24', '--config.checkpoint_every_steps=3']
  reference = tmp_path / 'uninterrupted'
  assert _run('train.py', tiny_data_dir, reference, *flags).returncode == 0
  workdir = tmp_path / 'killed'
  kills = []
  for moment in ('mid-save', 'step 8', 'mid-save'):
    proc = subprocess.Popen(_command('train.py', tiny_data_dir, workdir, *flags), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if moment == 'mid-save':  # poll for orbax's temporary step directory and kill while it exists
      deadline = time.monotonic() + 300
      while proc.poll() is None and not _find_tmp_step(workdir / 'vanilla') and time.monotonic() < deadline:
        time.sleep(0.001)
    else:
      _wait_for(proc, lambda line, m=moment: f'{m}/24' in line)
    proc.kill()
    proc.wait()
    kills.append((moment, sorted(os.listdir(workdir / 'vanilla')) if (workdir / 'vanilla').exists() else []))
  out = _run('train.py', tiny_data_dir, workdir, *flags)  # the killed runs' lock died with them
  assert out.returncode == 0, (kills, out.stderr[-3000:])
  logged = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  train_steps = [r['step'] for r in logged if r['split'] == 'train']
  assert train_steps == sorted(set(train_steps))  # each step logged once, though runs were killed after logging
  assert any('tmp' in ' '.join(names) for moment, names in kills if moment == 'mid-save'), kills
  a = _vanilla_params(tiny_data_dir, str(reference), *flags[1:])
  b = _vanilla_params(tiny_data_dir, str(workdir), *flags[1:])
  for x, y in zip(jax.tree.leaves((a.params, a.batch_stats)), jax.tree.leaves((b.params, b.batch_stats))):
    np.testing.assert_array_equal(x, y)  # bit-equal to the run that was never killed


@pytest.mark.slow
def test_corrupt_final_checkpoint_is_named_moved_aside_and_retrained(tiny_data_dir, tmp_path):
  workdir = tmp_path / 'w'
  flags = [*VANILLA_ONLY, '--config.max_to_keep=3', '--config.checkpoint_every_steps=2']
  assert _run('train.py', tiny_data_dir, workdir, *flags).returncode == 0
  state_files = [os.path.join(r, f) for r, _, fs in os.walk(workdir / 'vanilla' / '6' / 'state') for f in fs
                 if os.sep + 'd' + os.sep in os.path.join(r, f)]
  with open(max(state_files, key=os.path.getsize), 'r+b') as f:  # 64 bytes overwritten in the state's data
    f.seek(100)
    f.write(b'\xff' * 64)
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'evaluate.py'), f'--workdir={workdir}'],
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 1
  message = _error_line(out)
  assert f'{workdir}/vanilla/6' in out.stderr and 'vanilla is not finished' in message
  out = _run('train.py', tiny_data_dir, workdir, *flags)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f'{workdir}/vanilla/6/state' in out.stderr and 'restored step 4 instead' in out.stderr
  assert '[vanilla] resuming from step 4' in out.stdout
  assert sorted(os.listdir(workdir / 'vanilla')) == ['2', '4', '6', '6.corrupt-0']


@pytest.mark.slow
def test_non_finite_step_stops_before_any_save_and_skip_goes_on(tiny_data_dir, tmp_path):
  flags = [*VANILLA_ONLY, '--config.vanilla.learning_rate=1e6', '--config.vanilla.num_train_steps=10',
           '--config.log_every_steps=7', '--config.checkpoint_every_steps=5']
  out = _run('train.py', tiny_data_dir, tmp_path / 'stop', *flags)
  assert out.returncode == 1
  message = _error_line(out)
  assert 'became non-finite between step' in message and '--config.nonfinite=skip' in message
  manager = ckpt.make_manager(str(tmp_path / 'stop' / 'vanilla'))
  for step in manager.all_steps():  # whatever was saved reads back finite
    config = make_tiny_config(tiny_data_dir)
    model = setup_of.make_model(config, 7)
    target = stages._abstract_state(config, model, 'vanilla')[0]  # pylint: disable=protected-access
    ckpt.restore(manager, target=target, step=step)
  out = _run('train.py', tiny_data_dir, tmp_path / 'skip', *flags, '--config.nonfinite=skip')
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'non-finite steps skipped' in out.stdout


def _mounted_tmpfs(path, size) -> bool:
  os.makedirs(path, exist_ok=True)
  return subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
                        capture_output=True).returncode == 0


@pytest.mark.slow
def test_disk_full_while_saving_is_one_error_and_keeps_the_last_good_step(tiny_data_dir, tmp_path):
  disk = tmp_path / 'small_disk'
  if not _mounted_tmpfs(disk, '900k'):
    pytest.skip('mounting a tmpfs is not permitted here (needs root / CAP_SYS_ADMIN)')
  try:
    workdir = disk / 'w'
    flags = [*VANILLA_ONLY, '--config.vanilla.num_train_steps=40', '--config.checkpoint_every_steps=1',
             '--config.max_to_keep=1000']
    out = _run('train.py', tiny_data_dir, workdir, *flags)
    assert out.returncode == 1
    assert 'No space left on device' in _error_line(out)
    steps = ckpt.make_manager(str(workdir / 'vanilla')).all_steps()
    assert steps and max(steps) < 40
    moved = tmp_path / 'moved'
    subprocess.run(['cp', '-r', str(workdir), str(moved)], check=True)
  finally:
    subprocess.run(['umount', str(disk)], check=False)
  out = _run('train.py', tiny_data_dir, moved, *flags)  # with room again, it resumes from the last good step
  assert out.returncode == 0, out.stderr[-3000:]
  assert f'[vanilla] resuming from step {max(steps)}' in out.stdout


@pytest.mark.slow
def test_a_full_disk_outside_checkpoint_saves_is_one_line_naming_the_path_and_leaves_nothing_behind(
    tiny_workdir, evaluated_workdir, tmp_path):
  _, trained, _ = tiny_workdir
  disk = tmp_path / 'small_disk'
  if not _mounted_tmpfs(disk, '256m'):
    pytest.skip('mounting a tmpfs is not permitted here (needs root / CAP_SYS_ADMIN)')
  try:
    workdir = disk / 'w'
    # An evaluated workdir without its report.json: evaluate.py keeps its predictions and measurements (no compile)
    # and meets the full disk writing the report again.
    shutil.copytree(evaluated_workdir[0], workdir)
    (workdir / 'report.json').unlink()
    (workdir / 'report.md').write_text('the previous report')
    before = sorted(os.listdir(workdir))
    with open(disk / 'filler', 'wb') as f:  # the disk full but for 40 KiB: the locks fit, the outputs do not
      f.write(bytes(shutil.disk_usage(disk).free - (40 << 10)))
    outputs = {'bundle': disk / 'b.msgpack', 'export': disk / 'exp', 'evaluate': workdir / 'report.md'}
    outs = run_together([
        [sys.executable, '-m', 'tools.convert', 'bundle', f'--workdir={trained}', f'--output={disk}/b.msgpack'],
        [sys.executable, '-m', 'tools.convert', 'export', f'--workdir={trained}', '--superclass=0',
         '--format=orbax', f'--output={disk}/exp'],
        [sys.executable, os.path.join(ROOT, 'evaluate.py'), f'--workdir={workdir}']], cwd=ROOT, timeout=300)
    for (name, path), (code, out) in zip(outputs.items(), outs):
      assert code == 1 and 'Traceback' not in out, (name, out[-3000:])
      [line] = [l for l in out.splitlines() if l.startswith('error: ')]
      assert 'No space left on device' in line and 'free space on its disk' in line, (name, line)
      assert str(path.parent if name == 'evaluate' else path) in line, (name, line)
    assert sorted(os.listdir(disk)) == ['filler', 'w']  # no partial output, no temporary folder, no lock
    # The old report stays; what evaluate.py may leave is its cache of parts it finished, each whole (atomic).
    assert set(os.listdir(workdir)) - set(before) <= {'evaluation'} and set(before) <= set(os.listdir(workdir))
    assert (workdir / 'report.md').read_text() == 'the previous report'
    for part in (workdir / 'evaluation').glob('*') if (workdir / 'evaluation').exists() else ():
      assert part.suffix in ('.npz', '.json') and not part.name.startswith('.'), part
      if part.suffix == '.npz':
        np.load(part).files  # a whole zip: its directory reads
      else:
        json.loads(part.read_text())
  finally:
    subprocess.run(['umount', str(disk)], check=False)


def _bind_read_only(source, target) -> bool:
  """``target`` becomes a read-only view of ``source`` (a read-only disk: root ignores file permissions)."""
  os.makedirs(target, exist_ok=True)
  if subprocess.run(['mount', '--bind', str(source), str(target)], capture_output=True).returncode:
    return False
  if subprocess.run(['mount', '-o', 'remount,bind,ro', str(target)], capture_output=True).returncode:
    subprocess.run(['umount', str(target)], check=False)
    return False
  return True


def test_a_read_only_workdir_is_refused_at_once_naming_the_folder(tiny_workdir, tmp_path):
  config, workdir, _ = tiny_workdir
  read_only = tmp_path / 'read_only'
  if not _bind_read_only(workdir, read_only):
    pytest.skip('bind-mounting read-only is not permitted here (needs root / CAP_SYS_ADMIN)')
  try:
    results = run_together([
        _command('train.py', config.data_dir, read_only, '--config.stages=("vanilla", "superclass")'),
        [sys.executable, os.path.join(ROOT, 'evaluate.py'), f'--workdir={read_only}']], timeout=300)
  finally:
    subprocess.run(['umount', str(read_only)], check=False)
  for (rc, output), program in zip(results, ('train.py', 'evaluate.py')):
    assert rc == 1 and 'Traceback' not in output, output[-3000:]
    assert f'error: {read_only} cannot be written (Read-only file system): {program} writes' in output
    assert '[vanilla]' not in output  # refused before any work


def _damage_records(data_dir: str) -> list[str]:
  """Flips a byte every KiB in the first 80% of each array_record file of the tiny config's dataset (every record,
  not the files' index); other builds that tests left in the shared data folder are not the tiny config's."""
  damaged = []
  name = synthetic.config_name(**setup_of.dataset_kwargs(make_tiny_config(data_dir)))
  for root, _, names in os.walk(os.path.join(data_dir, 'supersub_synthetic', name)):
    for name in names:
      if '.array_record' in name:
        path = os.path.join(root, name)
        size = os.path.getsize(path)
        with open(path, 'r+b') as f:
          for offset in range(1024, int(size * 0.8), 1024):
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))
        damaged.append(path)
  return damaged


@pytest.mark.slow
def test_damaged_records_are_named_with_the_rebuild_command_and_a_damaged_label_cache_is_rebuilt(
    tiny_data_dir, tiny_workdir, tmp_path):
  _, trained, _ = tiny_workdir
  data_dir = str(tmp_path / 'data')
  shutil.copytree(tiny_data_dir, data_dir)
  damaged = _damage_records(data_dir)
  evaluated = str(tmp_path / 'evaluated')
  shutil.copytree(trained, evaluated)
  workdir = tmp_path / 'w'
  train_out, evaluate_out = run_together([
      _command('train.py', data_dir, workdir, *VANILLA_ONLY),
      [sys.executable, os.path.join(ROOT, 'evaluate.py'), f'--workdir={evaluated}', f'--config.data_dir={data_dir}']],
      timeout=300)
  for (rc, output), split in ((train_out, 'train'), (evaluate_out, 'test')):
    assert rc == 1 and 'Traceback' not in output, output[-3000:]
    [line] = [l for l in output.splitlines() if l.startswith('error: ')]
    [path] = [p for p in damaged if f'-{split}.array_record' in p]
    assert line.startswith(f'error: {path} is damaged: record') and f'of synthetic/{split}' in line
    assert f'python -m tools.prepare --dataset=synthetic --data_dir={data_dir} --image_size=16' in line
  # The dataset rebuilt (its good files back) and its label cache damaged: the corrected command runs, with other
  # settings than the config.json its failed start left (no checkpoint backs that one), and rebuilds the cache.
  for path in damaged:
    shutil.copyfile(path.replace(data_dir, tiny_data_dir), path)
  [cache] = [os.path.join(r, n) for r, _, ns in os.walk(os.path.join(data_dir, 'supersub_labels')) for n in ns
             if n == 'train.npz']
  with open(cache, 'r+b') as f:  # inside the first array's bytes: its CRC-32 fails
    f.seek(os.path.getsize(cache) // 3)
    f.write(b'\xff' * 16)
  out = _run('train.py', data_dir, workdir, *VANILLA_ONLY, '--config.seed=1')
  assert out.returncode == 0, out.stderr[-3000:]
  assert f'Label cache {cache} fails its check' in out.stderr and 'rebuilding it' in out.stderr
  assert json.loads((workdir / 'config.json').read_text())['seed'] == 1
  assert sorted(np.load(cache)) == ['label', 'superclass']


def _wait_for_lock(proc, path, timeout=300):
  """Waits until ``proc`` holds the lock at ``path`` (its pid recorded there): its run has begun its work."""
  deadline = time.monotonic() + timeout
  while not (os.path.exists(path) and f'"pid": {proc.pid}' in open(path).read()):
    if proc.poll() is not None or time.monotonic() > deadline:
      proc.kill()
      raise AssertionError(f'{path} never held:\n' + proc.communicate()[1][-3000:])
    time.sleep(0.05)


@pytest.mark.slow
def test_sigint_and_sigterm_stop_evaluate_and_convert_in_one_line_leaving_no_partial_file(tiny_workdir, tmp_path):
  _, trained, _ = tiny_workdir
  runs = []
  for signum in (signal.SIGINT, signal.SIGTERM):
    workdir = tmp_path / signal.Signals(signum).name
    shutil.copytree(trained, workdir)
    (workdir / 'report.md').write_text('the previous report')
    runs.append((signum, workdir / '.lock', workdir, [sys.executable, os.path.join(ROOT, 'evaluate.py'),
                                                      f'--workdir={workdir}']))
  bundle = tmp_path / 'supersub.msgpack'  # convert only reads the workdir: the shared one
  runs.append((signal.SIGTERM, tmp_path / '.supersub.msgpack.lock', tmp_path,
               [sys.executable, '-m', 'tools.convert', 'bundle', f'--workdir={trained}', f'--output={bundle}']))
  with default_sigint():
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for *_, command in runs]
  for proc, (signum, lock, _, _) in zip(procs, runs):
    _wait_for_lock(proc, lock)
    proc.send_signal(signum)
  for proc, (signum, _, folder, _) in zip(procs, runs):
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum], stderr[-3000:]
    assert 'Traceback' not in stderr
    assert f'interrupted by {signal.Signals(signum).name}: stopped' in stderr
    assert not [n for n in os.listdir(folder) if '.tmp' in n or n.endswith('.lock')]
  for _, _, workdir, _ in runs[:2]:
    assert (workdir / 'report.md').read_text() == 'the previous report'
  assert not bundle.exists()


@pytest.mark.slow
def test_a_signal_as_the_work_ends_or_after_it_gives_one_line_or_a_clean_exit_never_a_silent_death(
    tiny_data_dir, tiny_workdir, tmp_path):
  # Python restores a handled signal's default action as it shuts down, and jax's teardown goes on after that: a
  # signal in the half second after the work killed the process with no line. Each run here gets its signal a
  # moment after its last line: it ends interrupted, in one line (130/143), or finished, ignoring it (0).
  _, trained, _ = tiny_workdir  # (evaluate.py ends through the same cli.run as these)
  bundle = ['-m', 'tools.convert', 'bundle', f'--workdir={trained}']
  runs = [(signal.SIGTERM, 0.0, [*bundle, f'--output={tmp_path / "b0.msgpack"}'], 'wrote '),
          (signal.SIGINT, 0.2, [*bundle, f'--output={tmp_path / "b1.msgpack"}'], 'wrote '),
          (signal.SIGTERM, 0.5, [*bundle, f'--output={tmp_path / "b2.msgpack"}'], 'wrote '),
          (signal.SIGINT, 0.1, ['-m', 'tools.prepare', '--dataset=synthetic', f'--data_dir={tiny_data_dir}',
                                '--image_size=16', '--train_per_class=16', '--test_per_class=4', '--sizes=3,2,2'],
           'build time')]
  env = dict(os.environ, PYTHONUNBUFFERED='1')  # each line as it is printed

  def run(proc, signum, delay, last):  # in a thread per process: each signal goes at its own moment
    try:
      stdout = ''
      while last not in stdout:
        line = proc.stdout.readline()
        assert line, (stdout, proc.communicate()[1][-3000:])
        stdout += line
      time.sleep(delay)
      proc.send_signal(signum)
      start = time.monotonic()
      _, stderr = proc.communicate(timeout=60)
      return proc.returncode, time.monotonic() - start, stderr
    finally:
      proc.kill()
      proc.communicate()

  with default_sigint():
    procs = [subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT, env=env) for _, _, args, _ in runs]
  with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
    results = list(pool.map(lambda pr: run(pr[0], pr[1][0], pr[1][1], pr[1][3]), zip(procs, runs)))
  for (signum, delay, _, _), (code, took, stderr) in zip(runs, results):
    assert took < 15 and 'Traceback' not in stderr, (delay, took, stderr[-3000:])
    stopped = [l for l in stderr.splitlines() if l.startswith('interrupted by')]
    assert (code == 0 and not stopped) or (
        code == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum] and len(stopped) == 1), (delay, code, stderr[-3000:])


def test_a_hostile_npz_header_is_one_error_naming_the_file_not_a_memory_error(tmp_path):
  import io  # pylint: disable=g-import-not-at-top
  import zipfile  # pylint: disable=g-import-not-at-top
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(header, {'descr': '<f4', 'fortran_order': False, 'shape': (10**6, 10**6)})
  hostile = tmp_path / 'resnet18.npz'
  with zipfile.ZipFile(hostile, 'w') as z:
    z.writestr('fc.weight.npy', header.getvalue() + bytes(64))
  out = subprocess.run([sys.executable, '-m', 'tools.convert', 'import-torchvision', '--arch=resnet18',
                        f'--input={hostile}', f'--output={tmp_path / "out"}'], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
  assert out.returncode == 1
  assert f"{hostile} is not a readable .npz file: 'fc.weight' declares float32[1000000, 1000000]" in _error_line(out)
  assert os.listdir(tmp_path) == ['resnet18.npz']


# -------------------------------------------------------------------------------------------- several processes


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _two_processes(data_dir, workdir, port, *flags):
  env = with_devices(2)
  distributed = ['--config.distributed.enabled=True', f'--config.distributed.coordinator_address=127.0.0.1:{port}',
                 '--config.distributed.num_processes=2', '--config.distributed.cpu_collectives=gloo',
                 # gloo's rendezvous gives up after 30 s: a process that loads a program from the cache while its
                 # peer compiles it can be that late.
                 "--config.compilation_cache_dir=''"]
  return [_command('train.py', data_dir, workdir, *distributed, f'--config.distributed.process_id={i}', *flags)
          for i in range(2)], env


@pytest.mark.slow
def test_two_processes_build_the_data_once_and_stop_together_on_one_sigterm(tmp_path):
  data_dir = tmp_path / 'fresh_data'  # both processes start on an empty data_dir: process 0 builds, 1 waits
  flags = [*VANILLA_ONLY, '--config.vanilla.num_train_steps=400', '--config.checkpoint_every_steps=1000']
  commands, env = _two_processes(data_dir, tmp_path / 'w', _free_port(), *flags)
  procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for c in commands]
  try:
    _wait_for(procs[0], lambda line: 'step 4/400' in line)
    procs[1].send_signal(signal.SIGTERM)  # only one process is told
    outputs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, o in zip(procs, outputs):
    assert p.returncode == runtime.PREEMPTED_EXIT_CODE, o[-3000:]
  saved = [int(o.split('saved step ')[1].split(';')[0]) for o in outputs]
  assert saved[0] == saved[1]
  assert ckpt.make_manager(str(tmp_path / 'w' / 'vanilla')).all_steps() == [saved[0]]
  assert not [n for n in os.listdir(data_dir / 'supersub_synthetic') if 'incomplete' in n]
  # The same command again resumes both from the saved step (seen, then stopped: training on to step 400 would
  # only cost time).
  commands, env = _two_processes(data_dir, tmp_path / 'w', _free_port(), *flags)
  procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for c in commands]
  try:
    _wait_for(procs[0], lambda line: f'[vanilla] resuming from step {saved[0]}' in line)
    # Both processes step on together: process 0 logs a step after the saved one.
    _wait_for(procs[0], lambda line: (m := re.search(r'\[vanilla\] step (\d+)/400', line)) and int(m[1]) > saved[0])
  finally:
    for p in procs:
      p.kill()
      p.communicate()
