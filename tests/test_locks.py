"""supersub_jax.locks: one writer per workdir or output, a lock that dies with its process, refusals that name the
holder, and a failed start that leaves nothing behind."""

import os
import signal
import subprocess
import sys
import time

import pytest

from supersub_jax import locks

_HOLD_AND_WAIT = '''
import sys, time
from supersub_jax import locks
with locks.hold_workdir(sys.argv[1], program='holder.py', writes='things'):
  print('held', flush=True)
  time.sleep(600)
'''


def test_a_second_holder_is_refused_with_the_first_ones_name_pid_and_host(tmp_path):
  with locks.hold_workdir(str(tmp_path), program='train.py', writes='checkpoints'):
    with pytest.raises(locks.LockedError) as info:
      with locks.hold_workdir(str(tmp_path), program='evaluate.py', writes='reports'):
        pass
  message = str(info.value)
  assert f'{tmp_path} is in use by train.py (pid {os.getpid()} on host ' in message
  assert 'since ' in message and 'or use another --workdir' in message
  assert os.listdir(tmp_path) == []  # released: the lock file goes with its holder
  with locks.hold_workdir(str(tmp_path), program='train.py', writes='checkpoints'):
    pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
  proc = subprocess.Popen([sys.executable, '-c', _HOLD_AND_WAIT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline() == 'held\n'
    with pytest.raises(locks.LockedError, match=f'holder.py \\(pid {proc.pid} '):
      with locks.hold_workdir(str(tmp_path), program='evaluate.py', writes='reports'):
        pass
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert os.path.exists(tmp_path / locks.LOCK_FILE)  # SIGKILL gave it no chance to clean up, and that is fine
  with locks.hold_workdir(str(tmp_path), program='train.py', writes='checkpoints'):
    assert str(os.getpid()) in (tmp_path / locks.LOCK_FILE).read_text()


def test_a_start_that_fails_under_the_lock_removes_the_folders_it_made(tmp_path):
  workdir = tmp_path / 'runs' / 'new'
  with pytest.raises(ValueError, match='refused'):
    with locks.hold_workdir(str(workdir), program='train.py', writes='checkpoints'):
      assert workdir.is_dir()
      raise ValueError('refused by the preflight')
  assert os.listdir(tmp_path) == []
  with locks.hold_workdir(str(workdir), program='train.py', writes='checkpoints'):
    (workdir / 'config.json').write_text('{}')
  assert os.listdir(workdir) == ['config.json']  # what the run wrote stays, the lock goes


def test_a_workdir_made_by_another_process_meanwhile_is_used_and_left_in_place(tmp_path, monkeypatch):
  workdir = tmp_path / 'w'
  real_makedirs = os.makedirs

  def other_process_first(path, *args, **kwargs):  # the other process of a multi-process run wins the race
    real_makedirs(path)
    raise FileExistsError(17, 'File exists', path)

  monkeypatch.setattr(locks.os, 'makedirs', other_process_first)
  with locks.hold_workdir(str(workdir), program='train.py', writes='checkpoints'):
    assert workdir.is_dir()
  assert workdir.is_dir()  # not ours to remove, even though the block wrote nothing


def test_a_reader_of_a_missing_workdir_creates_nothing(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    with locks.hold_workdir(str(tmp_path / 'nope'), program='evaluate.py', writes='reports', create=False):
      pass
  assert os.listdir(tmp_path) == []


def test_an_unwritable_workdir_is_named_at_once(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  with pytest.raises(locks.NotWritableError, match=f'{blocker}/w cannot be written .*train.py writes checkpoints'):
    with locks.hold_workdir(str(blocker / 'w'), program='train.py', writes='checkpoints'):
      pass


def test_an_output_is_locked_beside_it_and_the_lock_goes_with_the_writer(tmp_path):
  output = tmp_path / 'supersub.msgpack'
  with locks.hold_output(str(output), program='convert bundle'):
    assert os.listdir(tmp_path) == ['.supersub.msgpack.lock']
    with pytest.raises(locks.LockedError, match='--output=.*supersub.msgpack is in use by convert bundle'):
      with locks.hold_output(str(output), program='convert bundle'):
        pass
    output.write_bytes(b'x')
  assert os.listdir(tmp_path) == ['supersub.msgpack']
  with pytest.raises(FileNotFoundError, match='create it first'):
    with locks.hold_output(str(tmp_path / 'missing' / 'x.npz'), program='convert export'):
      pass


def test_a_lock_file_replaced_while_opening_is_taken_again(tmp_path, monkeypatch):
  # A holder that ends unlinks its file: a run that opened it just before must not believe it holds the new one.
  real_flock = locks.fcntl.flock
  calls = []

  def flock_then_replace(fd, op):
    real_flock(fd, op)
    if not calls:
      calls.append(fd)
      os.unlink(tmp_path / locks.LOCK_FILE)  # as the previous holder's release does
  monkeypatch.setattr(locks.fcntl, 'flock', flock_then_replace)
  with locks.hold_workdir(str(tmp_path), program='train.py', writes='checkpoints'):
    assert calls and str(os.getpid()) in (tmp_path / locks.LOCK_FILE).read_text()


def test_a_dangling_symlink_workdir_is_named_as_one_not_as_unwritable(tmp_path):
  link = tmp_path / 'runs'
  link.symlink_to(tmp_path / 'unmounted' / 'runs')
  for create in (True, False):
    with pytest.raises(FileNotFoundError, match=f'{link} is a symbolic link to {tmp_path}/unmounted/runs, which does '
                                                'not exist'):
      with locks.hold_workdir(str(link), program='train.py', writes='x', create=create):
        pass
  assert os.listdir(tmp_path) == ['runs'] and not (tmp_path / 'unmounted').exists()


def test_a_second_builder_of_one_data_dir_waits_for_the_first(tmp_path):
  holder = subprocess.Popen([sys.executable, '-c', f'''
import fcntl, os, time
fd = os.open({str(tmp_path / locks.BUILD_LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print('held', flush=True)
time.sleep(1.5)
'''], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    start = time.monotonic()
    with locks.building(str(tmp_path), 'a dataset'):
      waited = time.monotonic() - start
  finally:
    holder.kill()
    holder.wait()
  assert waited > 0.5
