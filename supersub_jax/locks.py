"""One writer at a time: an OS lock on a workdir (train.py, evaluate.py) or on an output (convert).

Two runs writing one workdir interleave their checkpoints, metrics and config.json (orbax deletes the other's steps,
a resumed run trains the same steps twice, one run's config.json describes the other's checkpoints), and two
conversions to one ``--output`` race on its temporary files. So a writer holds a lock for its whole run::

  with locks.hold_workdir(workdir, program='train.py', writes='its checkpoints, metrics and config.json'):
    ...

The lock is ``fcntl.flock`` on a file (``<workdir>/.lock``, or ``.<name>.lock`` beside an output). The kernel
releases it when its process ends, however it ends (SIGKILL and power loss included), so a killed run never leaves
a stale lock: a file left behind by one is simply locked again. The file records its holder (program, host, pid,
start time, command line) so that a refused run can say who holds the folder. Readers (``convert export`` and
``bundle`` reading a workdir, ``load_bundle``) take no lock: they read finished checkpoints, which orbax writes
into a temporary directory and renames.

Several processes (``jax.distributed``) share one lock: process 0 takes it and tells the others, through a
collective, whether the run may go on, so that all stop together when it is refused.

Taking the lock is also the first write of a run, so it is where an unwritable workdir is found: at once, with the
folder named, before any work.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from typing import Iterator

from absl import logging

from supersub_jax import files

LOCK_FILE = '.lock'
_HOLDER_BYTES = 4096  # the holder's description, as read back by a refused run
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # file systems without flock (some FUSE mounts)


class LockedError(OSError):
  """Another live process holds the lock; the message names it (program, host, pid, start time) and the fix.

  An OSError, as the entry points report bad input (``cli.USER_ERRORS``); its one argument is the message."""


class NotWritableError(OSError):
  """The folder a run writes into cannot be written; the message names it and what the run writes there."""


def _holder_text(program: str) -> str:
  return json.dumps({'program': program, 'host': socket.gethostname(), 'pid': os.getpid(),
                     'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
                     'command': ' '.join([os.path.basename(sys.executable)] + sys.argv)})


def _describe_holder(fd: int) -> str:
  """'train.py (pid 123 on host h, since 2026-...: python train.py ...)' from the lock file, as far as it reads."""
  try:
    holder = json.loads(os.pread(fd, _HOLDER_BYTES, 0).decode())
    return (f'{holder["program"]} (pid {holder["pid"]} on host {holder["host"]}, since {holder["started"]}: '
            f'{holder["command"]})')
  except (OSError, ValueError, KeyError, TypeError):  # written at this very moment, or by a version without it
    return 'another process (it has not recorded itself yet)'


def _open_locked(lock_path: str, program: str, what: str, fix: str) -> int:
  """Opens and locks ``lock_path`` (created if missing) and records the holder; returns the descriptor.

  Raises ``LockedError`` when a live process holds it. A holder that ends unlinks the file; a descriptor opened on
  the unlinked file would lock nothing that others see, so the lock is retaken until the locked file is the one at
  ``lock_path``.
  """
  for _ in range(100):
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _describe_holder(fd)
      os.close(fd)
      raise LockedError(f'{what} is in use by {holder}. One run at a time: wait for it to end (or stop it), then '
                        f'rerun; {fix}') from None
    except OSError as e:
      os.close(fd)
      if e.errno in _NO_LOCKS:
        logging.warning('%s: this file system has no locks (%s); nothing stops a second run on it.', lock_path,
                        e.strerror)
        return -1
      raise
    try:
      same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
    except FileNotFoundError:
      same = False
    if same:
      # Written in place, not with files.atomic_write: the lock lives on this very file; a new file renamed over it
      # would be a second lock that another run could take.
      os.ftruncate(fd, 0)
      os.pwrite(fd, _holder_text(program).encode(), 0)
      return fd
    os.close(fd)
  raise LockedError(f'{what}: could not take its lock {lock_path} (it keeps being replaced).')


def _release(fd: int, lock_path: str) -> None:
  if fd < 0:
    return
  with contextlib.suppress(OSError):
    os.unlink(lock_path)  # while still locked: a run that opened it meanwhile sees it gone and retakes a new one
  os.close(fd)


def _not_writable(folder: str, e: OSError, program: str, writes: str) -> NotWritableError:
  return NotWritableError(f'{folder} cannot be written ({e.strerror}): {program} writes {writes} there. Make it '
                          'writable, or copy it to a writable place and pass that instead.')


@contextlib.contextmanager
def _hold(lock_path: str, *, program: str, what: str, fix: str, writes: str,
          created: tuple[str, ...] = ()) -> Iterator[None]:
  """Holds the lock at ``lock_path`` for the block (process 0 of several; the others learn the outcome).

  ``created``: the folders made for the lock, deepest first; each is removed again if the block leaves it empty, so
  that a run that fails before writing anything leaves nothing behind.
  """
  import jax  # pylint: disable=g-import-not-at-top  (only the multi-process case needs it)
  multiprocess = jax.process_count() > 1
  fd, refusal = -1, None
  try:
    if not multiprocess or jax.process_index() == 0:
      try:
        fd = _open_locked(lock_path, program, what, fix)
      except LockedError as e:
        refusal = e
      except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
          refusal = _not_writable(os.path.dirname(lock_path), e, program, writes)
        elif e.errno in (errno.ENOSPC, errno.EDQUOT):
          refusal = files.write_error(lock_path, e)
        else:
          refusal = e
    if multiprocess:
      refusal = _agree(refusal)
    if refusal is not None:
      raise refusal
    yield
  finally:
    _release(fd, lock_path)
    for folder in created:
      try:
        os.rmdir(folder)
      except OSError:  # not empty: the run wrote into it, and it stays (with the folders above it)
        break


def _agree(refusal: OSError | None) -> OSError | None:
  """Process 0's outcome, on every process: the others raise its message too instead of waiting in a collective."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  message = np.zeros(_HOLDER_BYTES, np.uint8)
  if refusal is not None:
    text = str(refusal).encode()[:_HOLDER_BYTES - 1]
    message[:len(text)] = np.frombuffer(text, np.uint8)
  message = np.asarray(multihost_utils.broadcast_one_to_all(message))
  if refusal is not None or not message.any():
    return refusal
  return LockedError(f'(from process 0) {bytes(message).rstrip(bytes(1)).decode(errors="replace")}')


@contextlib.contextmanager
def hold_workdir(workdir: str, *, program: str, writes: str, create: bool = True) -> Iterator[None]:
  """Holds ``<workdir>/.lock`` for a run of ``program`` that writes ``writes`` into ``workdir``.

  With ``create``, a missing workdir is made (and removed again if the run leaves it empty); without, a missing
  workdir is a FileNotFoundError. Raises ``LockedError`` (another run holds it) or ``NotWritableError``.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  created = []
  if os.path.islink(workdir) and not os.path.exists(workdir):  # "make it writable" would not help
    raise FileNotFoundError(f'{workdir} is a symbolic link to {os.readlink(workdir)}, which does not exist: create '
                            'that folder (a disk not mounted?), or pass another --workdir.')
  if not os.path.isdir(workdir):
    if not create:
      raise FileNotFoundError(f'{workdir} does not exist: pass the --workdir that train.py trained.')
    folder = workdir
    while not os.path.exists(folder):
      created.append(folder)
      folder = os.path.dirname(folder)
    try:
      os.makedirs(workdir)
    except FileExistsError as e:
      # Another process of the same multi-process run made it between the check and here: it is not ours to remove.
      if not os.path.isdir(workdir):
        raise _not_writable(workdir, e, program, writes) from e
      created = []
    except OSError as e:
      raise _not_writable(workdir, e, program, writes) from e
  with _hold(os.path.join(workdir, LOCK_FILE), program=program, what=workdir, writes=writes, created=tuple(created),
             fix='or use another --workdir.'):
    yield


@contextlib.contextmanager
def hold_output(output: str, *, program: str) -> Iterator[None]:
  """Holds ``.<name>.lock`` beside ``output`` (a file, or an orbax directory) while ``program`` writes it.

  Raises FileNotFoundError if the folder of ``output`` does not exist, ``LockedError`` or ``NotWritableError``.
  """
  output = os.path.abspath(os.path.expanduser(output))
  folder, name = os.path.split(output)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'--output={output}: its folder {folder} does not exist; create it first.')
  with _hold(os.path.join(folder, f'.{name}.lock'), program=program, what=f'--output={output}', writes=name,
             fix='or choose another --output.'):
    yield


BUILD_LOCK_FILE = '.supersub_build.lock'


@contextlib.contextmanager
def building(data_dir: str, what: str) -> Iterator[None]:
  """Holds ``<data_dir>/.supersub_build.lock`` while this process builds ``what`` there, waiting for another process
  that holds it: two runs preparing one fresh data_dir would otherwise race on TFDS's rename of its
  ``incomplete.*`` folder. The caller checks again, under the lock, whether the other one built it meanwhile.

  The file stays (a data_dir is shared and long-lived; removing it would let a third process lock another file).
  """
  os.makedirs(data_dir, exist_ok=True)
  path = os.path.join(data_dir, BUILD_LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.warning('%s: another process is building %s there; waiting for it to finish.', data_dir, what)
      fcntl.flock(fd, fcntl.LOCK_EX)  # a signal still interrupts the wait (its handler raises)
    except OSError as e:
      if e.errno not in _NO_LOCKS:
        raise
      logging.warning('%s: this file system has no locks (%s); two processes building %s at once may fail.',
                      data_dir, e.strerror, what)
    yield
  finally:
    os.close(fd)
