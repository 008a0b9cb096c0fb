"""Faults as a hostile user meets them: real processes, real signals, damaged files, a full disk, two processes.

Every case runs the real entry points (train.py, evaluate.py) on tests/tiny_config.py in subprocesses; nothing on
the signal or save path is mocked.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import make_tiny_config, with_devices
from supersub_jax import checkpoint as ckpt
from supersub_jax import runtime
from supersub_jax import stages

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
  return stages.load_network(config, workdir, 'vanilla')


# ----------------------------------------------------------------------------------------------------------- 1. early


def test_bad_config_fails_before_training_with_one_error(tiny_data_dir, tmp_path):
  out = _run('train.py', tiny_data_dir, tmp_path / 'w', '--config.specialists.bits=3',
             '--config.specialists.density=1.5')
  assert out.returncode == 1
  message = _error_line(out)
  assert 'cannot run (2 problem(s))' in message and 'specialists.bits=3' in message
  assert not (tmp_path / 'w').exists()
  env = with_devices(2)
  out = _run('train.py', tiny_data_dir, tmp_path / 'w', '--config.batch_size=15', env=env)
  assert out.returncode == 1
  assert 'batch_size=15: not divisible by the 2 devices; use a multiple of 2, e.g. 14' in _error_line(out)


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


def test_sigterm_saves_exits_75_in_one_line_and_the_rerun_resumes(tiny_data_dir, tmp_path):
  workdir = tmp_path / 'w'
  flags = [*VANILLA_ONLY, '--config.vanilla.num_train_steps=400', '--config.checkpoint_every_steps=1000']
  proc = subprocess.Popen(_command('train.py', tiny_data_dir, workdir, *flags), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  _wait_for(proc, lambda line: 'step 4/400' in line)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == runtime.PREEMPTED_EXIT_CODE == 75
  assert 'Traceback' not in stderr
  [line] = [l for l in stderr.splitlines() if 'preempted' in l]
  saved = int(line.split('saved step ')[1].split(';')[0])
  assert ckpt.make_manager(str(workdir / 'vanilla')).all_steps() == [saved]
  out = _run('train.py', tiny_data_dir, workdir, *flags)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f'[vanilla] resuming from step {saved}' in out.stdout


def _find_tmp_step(directory):
  if not os.path.isdir(directory):
    return False
  return any('orbax-checkpoint-tmp' in name for name in os.listdir(directory))


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
  out = _run('train.py', tiny_data_dir, workdir, *flags)
  assert out.returncode == 0, (kills, out.stderr[-3000:])
  logged = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  train_steps = [r['step'] for r in logged if r['split'] == 'train']
  assert train_steps == sorted(set(train_steps))  # each step logged once, though runs were killed after logging
  assert any('tmp' in ' '.join(names) for moment, names in kills if moment == 'mid-save'), kills
  a = _vanilla_params(tiny_data_dir, str(reference), *flags[1:])
  b = _vanilla_params(tiny_data_dir, str(workdir), *flags[1:])
  for x, y in zip(jax.tree.leaves((a.params, a.batch_stats)), jax.tree.leaves((b.params, b.batch_stats))):
    np.testing.assert_array_equal(x, y)  # bit-equal to the run that was never killed


def test_corrupt_final_checkpoint_is_named_moved_aside_and_retrained(tiny_data_dir, tmp_path):
  workdir = tmp_path / 'w'
  flags = [*VANILLA_ONLY, '--config.max_to_keep=3']
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
    model = stages.make_model(config, 7)
    target = stages._abstract_state(config, model, 'vanilla')[0]  # pylint: disable=protected-access
    ckpt.restore(manager, target=target, step=step)
  out = _run('train.py', tiny_data_dir, tmp_path / 'skip', *flags, '--config.nonfinite=skip')
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'non-finite steps skipped' in out.stdout


def _mounted_tmpfs(path, size) -> bool:
  os.makedirs(path, exist_ok=True)
  return subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
                        capture_output=True).returncode == 0


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
