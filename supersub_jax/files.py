"""Files written whole or not at all, and arrays read back within the bytes present.

The one atomic-write helper every output of the project goes through, and ``load_npz``, the one reader of ``.npz``
files (label caches, torchvision weights), which checks every array's declared size before allocating it.

``atomic_write(path)`` hands out a file opened on a temporary name beside ``path``; when the block ends normally the
data is flushed to disk and the temporary file is renamed over ``path`` (a rename within one directory is atomic on
POSIX), so a reader sees the old file or the new one, never half of one. When the block raises -- an error, or the
KeyboardInterrupt / SystemExit that a SIGINT or SIGTERM becomes -- the temporary file is removed. Only a kill that
gives no chance to clean up (SIGKILL, power loss) leaves one behind, named ``.<name>.tmp-<pid>-<random>``; the next
write of the same path removes those whose process is gone. Once a SIGINT or SIGTERM has asked the process to stop
(``interrupts.Interrupted``), no write is committed any more. The file gets the mode ``open()`` would give it
(0666 less the umask), not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import os
import shutil
import tempfile
import zipfile
from typing import IO, Any, Callable, Iterator

import numpy as np

from supersub_jax import interrupts


# What a full disk (or quota, or a failing one) raises while a file is written.
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


class WriteError(OSError):
  """A file could not be written (a full disk, a quota, an I/O error); the message names it and the fix, and the
  previous file, if any, is kept. ``errno`` is the OS's."""

  def __str__(self) -> str:
    return str(self.strerror)


def write_error(path: str, e: OSError) -> WriteError:
  """``e``, met while writing ``path``, as a ``WriteError`` naming the path."""
  fix = 'free space on its disk' if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else 'check its disk'
  return WriteError(e.errno, f'{path} could not be written ({e.strerror or e}): {fix} and rerun; the previous '
                             'file, if any, is kept.')


def require_space(path: str, nbytes: int) -> None:
  """Raises ``WriteError`` (ENOSPC) when the disk of ``path`` (or of its nearest existing folder) has less than
  ``nbytes`` free: a write that cannot fit is refused before it starts."""
  folder = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(folder):
    folder = os.path.dirname(folder)
  free = shutil.disk_usage(folder).free
  if free < nbytes:
    raise WriteError(errno.ENOSPC, f'{path} could not be written (No space left on device: it needs about '
                                   f'{nbytes / 2**20:,.2f} MiB, {free / 2**20:,.2f} MiB are free): free space on its '
                                   'disk and rerun; the previous file, if any, is kept.')


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


def _umask() -> int:
  """The process's umask, read without changing it where the OS tells it (Linux); else set and restored."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('Umask:'):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


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
  try:
    fd, tmp = tempfile.mkstemp(prefix=f'.{name}.tmp-{os.getpid()}-', dir=directory)
  except OSError as e:
    raise (write_error(path, e) if e.errno in _DISK_ERRNOS else e) from e
  try:
    # mkstemp makes the file 0600 whatever the umask; an output is for others too (a colleague, a serving process),
    # with the mode open() would give it.
    os.fchmod(fd, 0o666 & ~_umask())
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    interrupts.raise_if_interrupted()  # an interrupt that Python dropped on its way must still stop the write
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    if isinstance(e, OSError) and not isinstance(e, WriteError) and e.errno in _DISK_ERRNOS:
      raise write_error(path, e) from e
    raise


def write_text(path: str | os.PathLike, text: str) -> None:
  """``text`` into ``path``, atomically."""
  with atomic_write(path) as f:
    f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> int:
  """``data`` into ``path``, atomically; returns its size. Refused before anything is written when it cannot fit."""
  require_space(os.fspath(path), len(data) + 4096)
  with atomic_write(path, 'wb') as f:
    f.write(data)
  return len(data)


@contextlib.contextmanager
def staged(directory: str | os.PathLike) -> Iterator[str]:
  """``with staged(directory) as stage:`` write several files into ``stage``; they move into ``directory``
  together when the block ends, or none does (the stage is removed) when it raises: a full disk half-way through a
  report leaves the old report and no new plot beside it. The stage, ``.staged-<pid>-<random>`` in ``directory``,
  is left only by a kill without clean-up; the next stage there removes those whose process is gone."""
  directory = os.path.abspath(os.fspath(directory))
  for stale in glob.glob(os.path.join(glob.escape(directory), '.staged-*')):
    try:
      pid = int(os.path.basename(stale).split('-')[1])
    except (IndexError, ValueError):
      continue
    if not _pid_alive(pid):
      shutil.rmtree(stale, ignore_errors=True)
  try:
    stage = tempfile.mkdtemp(prefix=f'.staged-{os.getpid()}-', dir=directory)
  except OSError as e:
    raise (write_error(directory, e) if e.errno in _DISK_ERRNOS else e) from e
  try:
    yield stage
    interrupts.raise_if_interrupted()
    for name in sorted(os.listdir(stage)):  # renames within one file system: they take no space
      os.replace(os.path.join(stage, name), os.path.join(directory, name))
  except WriteError as e:  # named by the file it was meant to be, not by the stage's
    raise WriteError(e.errno, str(e).replace(stage, directory)) from e
  finally:
    shutil.rmtree(stage, ignore_errors=True)


# Deflate expands at most about 1032:1 (a run of zeros); a member that claims more than that of its compressed bytes
# claims bytes the file does not hold.
_MAX_DEFLATE_RATIO = 1032


class ArrayFileError(ValueError):
  """An array file is damaged or claims more data than it holds; the message names the file and the array."""


def write_results(prefix: str, data: Any, table_md: str, plot: Callable[[Any, str], None] | None = None) -> None:
  """A benchmark's or study's results: ``<prefix>.json`` (``data``), ``<prefix>.md`` (``table_md``) and, with
  ``plot``, ``plot(data, '<prefix>.png')``, each written atomically; makes the folder.

  Rewriting after each finished row keeps what a long sweep measured if it is stopped part-way.
  """
  os.makedirs(os.path.dirname(prefix) or '.', exist_ok=True)
  write_text(prefix + '.json', json.dumps(data, indent=2, default=float))
  write_text(prefix + '.md', table_md.rstrip('\n') + '\n')
  if plot is not None:
    plot(data, prefix + '.png')


def _npy_header(f, version) -> tuple[tuple[int, ...], bool, np.dtype]:
  if version == (1, 0):
    return np.lib.format.read_array_header_1_0(f)
  if version == (2, 0):
    return np.lib.format.read_array_header_2_0(f)
  raise ValueError(f'.npy format version {version} is not supported (1.0 or 2.0 are)')


def load_npz(path: str | os.PathLike, *, max_bytes: int, max_elements: int | None = None,
             check: Callable[[str, tuple[int, ...], np.dtype], None] | None = None) -> dict[str, np.ndarray]:
  """{name: array} of an ``.npz`` file, every size checked against the bytes present and against absolute caps
  before anything is decompressed or allocated.

  ``numpy.load`` allocates whatever shape a member's header declares, then reads: a damaged or hostile header of
  10^12 elements ends in a MemoryError (or, under memory overcommit, in the kernel's OOM killer). Here each header is
  read first (``numpy.lib.format``) and its shape times its item size must be the member's size in the zip, which
  must be bytes the file holds (stored, or compressed at most as far as deflate can). Deflate's ratio alone still
  lets a 4 MB file of zeros claim 4 GB, so the caller states the most it expects: ``max_bytes`` (all arrays
  together) and ``max_elements`` (likewise); ``check(name, shape, dtype)`` may refuse a member by its header (raise
  ValueError), before its data is read. Object arrays are refused (no pickle). Raises ``ArrayFileError`` naming the
  file and the member, or FileNotFoundError.
  """
  path = os.fspath(path)
  present = os.path.getsize(path)
  try:
    with zipfile.ZipFile(path) as z:
      members = z.infolist()
      if sum(m.compress_size for m in members) > present:
        raise ValueError(f'its members claim {sum(m.compress_size for m in members):,} bytes, the file has '
                         f'{present:,}')
      headers, total_bytes, total_elements = [], 0, 0
      for m in members:  # every header first: nothing is decompressed before all sizes are known and allowed
        name = m.filename[:-4] if m.filename.endswith('.npy') else m.filename
        with z.open(m) as f:
          version = np.lib.format.read_magic(f)
          shape, _, dtype = _npy_header(f, version)
          header = f.tell()
        if dtype.hasobject:
          raise ValueError(f'{name!r} holds Python objects (pickles), which are not read')
        nbytes = math.prod(shape) * dtype.itemsize
        if header + nbytes != m.file_size:
          raise ValueError(f'{name!r} declares {dtype}{list(shape)} ({nbytes:,} bytes) but holds '
                           f'{m.file_size - header:,} bytes')
        if m.compress_type != zipfile.ZIP_STORED and m.file_size > _MAX_DEFLATE_RATIO * m.compress_size + 4096:
          raise ValueError(f'{name!r} claims {m.file_size:,} bytes from {m.compress_size:,} compressed bytes')
        total_bytes += nbytes
        total_elements += math.prod(shape)
        if total_bytes > max_bytes:
          raise ValueError(f'its arrays declare {total_bytes:,} bytes up to {name!r} ({dtype}{list(shape)}), more '
                           f'than the {max_bytes:,} such a file may hold')
        if max_elements is not None and total_elements > max_elements:
          raise ValueError(f'its arrays declare {total_elements:,} elements up to {name!r} ({dtype}{list(shape)}), '
                           f'more than the {max_elements:,} such a file may hold')
        if check is not None:
          check(name, tuple(shape), dtype)
        headers.append((m, name))
      out = {}
      for m, name in headers:
        with z.open(m) as f:
          out[name] = np.lib.format.read_array(f, allow_pickle=False)
      return out
  except (ValueError, OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, KeyError) as e:
    if isinstance(e, FileNotFoundError):
      raise
    raise ArrayFileError(f'{path} is not a readable .npz file: {e}') from e
