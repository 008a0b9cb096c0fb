"""Tests of supersub_jax.data.label_cache: where a split's labels are cached, and the check a cache must pass."""

import io
import os
import types

import numpy as np

from supersub_jax.data import label_cache


def test_a_label_cache_whose_header_states_another_shape_is_refused_before_its_data_is_read(tmp_path):
  import tracemalloc  # pylint: disable=g-import-not-at-top
  import zipfile  # pylint: disable=g-import-not-at-top
  cache = tmp_path / 'train.npz'
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(header, {'descr': '<i8', 'fortran_order': False, 'shape': (25 * 10**6,)})
  with zipfile.ZipFile(cache, 'w', zipfile.ZIP_DEFLATED) as z, z.open('label.npy', 'w', force_zip64=True) as f:
    f.write(header.getvalue())
    for _ in range(50):  # 200 MB of zeros in a file of about 200 KB
      f.write(bytes(4 * 10**6))
  assert os.path.getsize(cache) < 10**6
  tracemalloc.start()
  try:
    assert label_cache.read(str(cache), ('label',), 30) is None
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 10 * 2**20, peak  # the 200 MB were never unpacked
  np.savez(cache, label=np.arange(30), other=np.arange(30))
  assert label_cache.read(str(cache), ('label',), 30) is None
  np.savez(cache, label=np.arange(30))
  np.testing.assert_array_equal(label_cache.read(str(cache), ('label',), 30)['label'], np.arange(30))


def test_written_labels_read_back_from_one_file_per_config_version_and_split(tmp_path):
  builder = types.SimpleNamespace(name='cifar100', builder_config=None, version='3.0.2')
  path = label_cache.path_of(builder, 'train[:90%]', tmp_path)
  assert path == os.path.join(tmp_path, 'supersub_labels', 'cifar100', 'default', '3.0.2', 'train_90_.npz')
  labels = {'label': np.arange(12, dtype=np.int64) % 5, 'coarse_label': np.arange(12, dtype=np.int64) % 2}
  label_cache.write(path, labels)  # makes the folders
  back = label_cache.read(path, ('label', 'coarse_label'), 12, num_classes={'label': 5, 'coarse_label': 2})
  assert set(back) == set(labels) and all(np.array_equal(back[k], v) for k, v in labels.items())
  assert label_cache.read(path, ('label', 'coarse_label'), 12, num_classes={'label': 4}) is None  # a label of 4
