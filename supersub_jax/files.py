"""Files written whole or not at all: the one atomic-write helper every output of the project goes through.

``atomic_write(path)`` hands out a file opened on a temporary name beside ``path``; when the block ends normally the
data is flushed to disk and the temporary file is renamed over ``path`` (a rename within one directory is atomic on
POSIX), so a reader sees the old file or the new one, never half of one. When the block raises -- an error, or the
KeyboardInterrupt / SystemExit that a SIGINT or SIGTERM becomes -- the temporary file is removed. Only a kill that
gives no chance to clean up (SIGKILL, power loss) leaves one behind, named ``.<name>.tmp-<pid>-<random>``; the next
write of the same path removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from typing import IO, Iterator


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  return True


def _sweep_stale(directory: str, name: str) -> None:
  """Removes temporary files of ``name`` left by processes that no longer run."""
  for stale in glob.glob(os.path.join(glob.escape(directory), f'.{glob.escape(name)}.tmp-*')):
    try:
      pid = int(os.path.basename(stale)[len(name) + 6:].split('-')[0])
    except ValueError:
      continue
    if not _pid_alive(pid):
      with contextlib.suppress(OSError):
        os.remove(stale)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = 'w') -> Iterator[IO]:
  """``with atomic_write(path, 'w' | 'wb') as f:`` write ``f``; ``path`` appears, complete, when the block ends.

  The parent directory must exist. Raises whatever the block raises, after removing the temporary file.
  """
  if mode not in ('w', 'wb'):
    raise ValueError(f"atomic_write writes whole files: mode 'w' or 'wb', not {mode!r}.")
  path = os.fspath(path)
  directory, name = os.path.split(os.path.abspath(path))
  _sweep_stale(directory, name)
  fd, tmp = tempfile.mkstemp(prefix=f'.{name}.tmp-{os.getpid()}-', dir=directory)
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def write_text(path: str | os.PathLike, text: str) -> None:
  """``text`` into ``path``, atomically."""
  with atomic_write(path) as f:
    f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> int:
  """``data`` into ``path``, atomically; returns its size."""
  with atomic_write(path, 'wb') as f:
    f.write(data)
  return len(data)
