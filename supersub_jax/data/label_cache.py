"""The label cache of a prepared split: every record's source labels in one .npz, so that relabelling and
filtering for any hierarchy never read a record (`sources.cached_labels` scans the records and fills it).

A cache is trusted only once it passes its check (`read`); a damaged or stale one is rebuilt, never fatal.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from supersub_jax import files


def path_of(builder: tfds.core.DatasetBuilder, split: str, data_dir: str | os.PathLike) -> str:
  """`<data_dir>/supersub_labels/<name>/<config>/<version>/<split>.npz`: one file per builder config, version and
  split."""
  config = builder.builder_config.name if builder.builder_config else 'default'
  safe_split = re.sub(r'[^A-Za-z0-9_.-]+', '_', split)
  return os.path.join(os.fspath(data_dir), 'supersub_labels', builder.name, config,
                      str(builder.version), f'{safe_split}.npz')


_SPOT_CHECKS = 8  # records read back to check a label cache against (images not decoded)


def read(path: str, keys: Sequence[str], count: int, *, num_classes: Mapping[str, int] | None = None,
         records=None) -> dict[str, np.ndarray] | None:
  """The labels cached at `path` if they pass their check (the keys, int [count] each, within `num_classes` of
  each key, and equal to the labels of a few of `records`), else None with a warning: a damaged or stale cache is
  rebuilt, never trusted nor fatal."""
  def check(name, shape, dtype):  # each array's header, before its data is decompressed
    if name not in keys:
      raise ValueError(f'array {name!r}, expected only {sorted(keys)}')
    if shape != (count,) or not np.issubdtype(dtype, np.integer) or dtype.itemsize > 8:
      raise ValueError(f'{name!r} is {dtype}{list(shape)}, expected int[{count}]')

  try:
    labels = files.load_npz(path, max_bytes=8 * count * len(keys), max_elements=count * len(keys), check=check)
    if set(labels) != set(keys):
      raise ValueError(f'keys {sorted(labels)}, expected {sorted(keys)}')
    for k, n in (num_classes or {}).items():
      bad = (labels[k] < 0) | (labels[k] >= n)
      if n and bad.any():
        raise ValueError(f'{int(bad.sum())} {k!r} value(s) outside [0, {n}), e.g. {int(labels[k][bad][0])}')
    if records is not None and count:  # an overwritten cache (all zeros, another split's) has the right shape
      spots = sorted({int(i) for i in np.linspace(0, count - 1, min(count, _SPOT_CHECKS))})
      try:
        found = [{k: int(example[k]) for k in keys} for example in records.__getitems__(spots)]
      except Exception:  # pylint: disable=broad-except  (damaged records: reading them reports it, naming the file)
        found = None
      for i, example in zip(spots, found or ()):
        for k in keys:
          if example[k] != int(labels[k][i]):
            raise ValueError(f'record {i} has {k!r} {example[k]}, the cache {int(labels[k][i])}')
    return labels
  except Exception as e:  # pylint: disable=broad-except  (zipfile, numpy and OS errors alike mean: rebuild it)
    logging.warning('Label cache %s fails its check (%s: %s); rebuilding it.', path, type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else '')
    return None


def write(path: str, labels: Mapping[str, np.ndarray]) -> None:
  """Saves the labels (int64 [num_records] each) at `path`, making its folder."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  # Several processes may scan at once; readers never see a partial file.
  with files.atomic_write(path, 'wb') as f:
    np.savez(f, **labels)
