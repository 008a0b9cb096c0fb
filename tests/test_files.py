"""supersub_jax.files: a file is written whole or not at all."""

import io
import math
import os
import shutil
import stat
import zipfile
import subprocess
import sys

import numpy as np
import pytest

from supersub_jax import files
from supersub_jax import interrupts


def test_atomic_write_replaces_the_file_whole(tmp_path):
  path = tmp_path / 'report.json'
  files.write_text(path, 'old')
  with files.atomic_write(path) as f:
    f.write('new, ')
    assert path.read_text() == 'old'  # readers see the old file until the block ends
    f.write('complete')
  assert path.read_text() == 'new, complete'
  assert os.listdir(tmp_path) == ['report.json']
  assert files.write_bytes(tmp_path / 'b.bin', b'\x00\x01') == 2 and (tmp_path / 'b.bin').read_bytes() == b'\x00\x01'


@pytest.mark.parametrize('error', [ValueError, KeyboardInterrupt, SystemExit])
def test_a_block_that_raises_leaves_the_old_file_and_no_temporary(tmp_path, error):
  path = tmp_path / 'report.md'
  files.write_text(path, 'old')
  with pytest.raises(error):
    with files.atomic_write(path) as f:
      f.write('half')
      raise error()
  assert path.read_text() == 'old' and os.listdir(tmp_path) == ['report.md']


def test_temporaries_of_dead_processes_are_swept_and_a_live_ones_kept(tmp_path):
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
  stale = tmp_path / f'.x.json.tmp-{int(dead.stdout)}-abc'
  live = tmp_path / f'.x.json.tmp-{os.getppid()}-def'  # our parent runs
  other = tmp_path / f'.y.json.tmp-{int(dead.stdout)}-ghi'  # another file's: not ours to touch
  for p in (stale, live, other):
    p.write_text('partial')
  files.write_text(tmp_path / 'x.json', '{}')
  assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, 'x.json'])


def test_only_whole_file_modes_are_accepted(tmp_path):
  with pytest.raises(ValueError, match="mode 'w' or 'wb'"):
    with files.atomic_write(tmp_path / 'a', 'a'):
      pass


def test_nothing_is_committed_once_an_interrupt_is_pending(tmp_path, monkeypatch):
  # A SIGINT whose exception Python dropped (raised in a gc callback) must still keep the file as it was.
  path = tmp_path / 'report.md'
  files.write_text(path, 'old')
  monkeypatch.setattr(interrupts, '_pending', 2)
  with pytest.raises(interrupts.Interrupted):
    files.write_text(path, 'new')
  assert path.read_text() == 'old' and os.listdir(tmp_path) == ['report.md']


def test_npz_arrays_are_checked_against_the_bytes_present_before_they_are_read(tmp_path):
  import io  # pylint: disable=g-import-not-at-top
  import zipfile  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  np.savez(tmp_path / 'ok.npz', a=np.arange(3), b=np.ones((2, 2), np.float32))
  loaded = files.load_npz(tmp_path / 'ok.npz', max_bytes=100)
  assert sorted(loaded) == ['a', 'b'] and loaded['b'].shape == (2, 2)
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(header, {'descr': '<f4', 'fortran_order': False, 'shape': (10**12,)})
  for compression, padding in ((zipfile.ZIP_STORED, 16), (zipfile.ZIP_DEFLATED, 10**6)):
    with zipfile.ZipFile(tmp_path / 'hostile.npz', 'w', compression) as z:  # 4 TB declared
      z.writestr('fc.weight.npy', header.getvalue() + bytes(padding))
    with pytest.raises(files.ArrayFileError, match=r"hostile.npz .*'fc.weight' declares float32\[1000000000000\]"):
      files.load_npz(tmp_path / 'hostile.npz', max_bytes=10**15)
  np.savez(tmp_path / 'objects.npz', a=np.array([{}], object))
  with pytest.raises(files.ArrayFileError, match='objects.npz.*pickles'):
    files.load_npz(tmp_path / 'objects.npz', max_bytes=100)


@pytest.mark.parametrize('umask', [0o022, 0o077, 0o002])
def test_a_written_file_has_the_mode_open_would_give_it(tmp_path, umask):
  previous = os.umask(umask)
  try:
    files.write_text(tmp_path / 'report.md', 'x')
    with open(tmp_path / 'reference', 'w') as f:  # the independent reference: what open() gives
      f.write('x')
  finally:
    os.umask(previous)
  assert stat.S_IMODE(os.stat(tmp_path / 'report.md').st_mode) == stat.S_IMODE(os.stat(tmp_path / 'reference').st_mode)
  assert stat.S_IMODE(os.stat(tmp_path / 'report.md').st_mode) == 0o666 & ~umask


def _zeros_npz(path, name, shape, dtype=np.int64):
  """An .npz of one member of zeros, deflated: a few hundred KB that unpack to ``shape``'s bytes."""
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(header, {'descr': np.dtype(dtype).str, 'fortran_order': False,
                                                'shape': shape})
  zeros, left = bytes(1 << 22), math.prod(shape) * np.dtype(dtype).itemsize
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as z, z.open(f'{name}.npy', 'w', force_zip64=True) as f:
    f.write(header.getvalue())
    while left:
      f.write(zeros[:min(left, len(zeros))])
      left -= min(left, len(zeros))


def test_npz_sizes_over_the_callers_caps_are_refused_before_anything_is_decompressed(tmp_path, monkeypatch):
  path = tmp_path / 'zeros.npz'
  _zeros_npz(path, 'label', (25 * 10**6,))  # 200 MB of zeros, within deflate's ratio of its ~200 KB
  assert os.path.getsize(path) < 10**6
  read = []
  monkeypatch.setattr(np.lib.format, 'read_array', lambda *a, **k: read.append(a))
  with pytest.raises(files.ArrayFileError, match=r"zeros.npz .*200,000,000 bytes up to 'label' \(int64\[25000000\]\)"
                     r", more than the 1,000,000"):
    files.load_npz(path, max_bytes=10**6)
  with pytest.raises(files.ArrayFileError, match=r'25,000,000 elements .* more than the 1,000'):
    files.load_npz(path, max_bytes=10**9, max_elements=1000)

  def check(name, shape, dtype):
    raise ValueError(f'{name!r} is {dtype}{list(shape)}, expected int[10]')

  with pytest.raises(files.ArrayFileError, match=r"'label' is int64\[25000000\], expected int\[10\]"):
    files.load_npz(path, max_bytes=10**9, check=check)
  assert read == []  # refused by the headers alone


def test_staged_files_move_in_together_or_not_at_all(tmp_path):
  (tmp_path / 'report.md').write_text('old')
  with pytest.raises(files.WriteError, match=f'{tmp_path}/report.md could not be written \\(No space left on device'):
    with files.staged(tmp_path) as stage:
      files.write_bytes(os.path.join(stage, 'plot.png'), b'png')
      with files.atomic_write(os.path.join(stage, 'report.md')) as f:
        raise OSError(28, 'No space left on device')  # what a full disk raises from f.write
  assert sorted(os.listdir(tmp_path)) == ['report.md'] and (tmp_path / 'report.md').read_text() == 'old'
  with files.staged(tmp_path) as stage:
    files.write_text(os.path.join(stage, 'report.md'), 'new')
    files.write_bytes(os.path.join(stage, 'plot.png'), b'png')
  assert sorted(os.listdir(tmp_path)) == ['plot.png', 'report.md'] and (tmp_path / 'report.md').read_text() == 'new'


def test_a_write_that_cannot_fit_is_refused_before_it_starts(tmp_path):
  free = shutil.disk_usage(tmp_path).free
  with pytest.raises(files.WriteError, match=f'{tmp_path}/big could not be written \\(No space left on device: it '
                                             'needs about'):
    files.require_space(str(tmp_path / 'big'), free + (1 << 30))
  assert os.listdir(tmp_path) == []


def test_write_results_writes_the_json_the_table_and_the_plot_under_the_prefix_making_its_folder(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  drawn = []
  prefix = str(tmp_path / 'new' / 'sweep')
  files.write_results(prefix, {'rows': [1, 2.5]}, '| a |\n\n', lambda data, path: drawn.append((data, path)))
  assert json.load(open(prefix + '.json')) == {'rows': [1, 2.5]}
  assert open(prefix + '.md').read() == '| a |\n'  # one final newline
  assert drawn == [({'rows': [1, 2.5]}, prefix + '.png')]
