"""Prepares the datasets as TFDS array_record files, without TensorFlow: `prepare(dataset, data_dir, ...)`, the one
function that builds each dataset (its command: `python -m tools.prepare`, whose docstring describes each dataset).

After writing the records, `prepare` also scans every split's labels once (see `sources.cached_labels`), so that
the first training run does not pay for it. A preparation that fails leaves data_dir as it was.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil

import tensorflow_datasets as tfds

from supersub_jax import locks
from supersub_jax.data import builders
from supersub_jax.data import sources
from supersub_jax.data import synthetic


def prepare(dataset: str, data_dir: str | os.PathLike, *,
            manual_dir: str | os.PathLike | None = None, scan_labels: bool = True, max_side: int = 0,
            jpeg_quality: int = 90, **synthetic_kwargs) -> tfds.core.DatasetBuilder:
  """Writes `dataset` into `data_dir` as array_record (no-op if already there).

  Args:
    dataset: one of `sources.DATASETS`.
    data_dir: TFDS data directory.
    manual_dir: where manually downloaded archives are (required for imagenet2012).
    scan_labels: also cache every split's labels (see `sources.cached_labels`).
    max_side, jpeg_quality: imagenet2012 only: > 0 writes the store capped at max_side pixels on the longer side,
      re-encoded at jpeg_quality (`builders.capped_imagenet`); 0, the JPEGs as distributed.
    **synthetic_kwargs: knobs of `synthetic.build_synthetic` (synthetic only).

  Returns:
    The prepared builder.
  """
  data_dir = os.fspath(data_dir)
  if max_side and dataset != 'imagenet2012':
    raise ValueError(f'max_side={max_side} caps imagenet2012\'s JPEGs; {dataset} takes none.')
  if dataset == 'synthetic':
    builder = synthetic.build_synthetic(data_dir, **synthetic_kwargs)
  elif dataset in builders.BUILDERS:
    if synthetic_kwargs:
      raise TypeError(f'{sorted(synthetic_kwargs)} are synthetic-dataset knobs; '
                      f'{dataset} takes none.')
    if dataset == 'imagenet2012' and not manual_dir:
      raise ValueError('imagenet2012 needs --manual_dir=<dir with ILSVRC2012_img_train.tar and '
                       'ILSVRC2012_img_val.tar>.')
    name = builders.BUILDERS[dataset].name
    if not glob.glob(os.path.join(glob.escape(data_dir), name, '**', 'dataset_info.json'), recursive=True):
      builders.check_download(dataset, manual_dir)  # nothing prepared: fail now, before TFDS makes any folder
    builder = (builders.capped_imagenet(data_dir, max_side, jpeg_quality) if max_side
               else builders.BUILDERS[dataset](data_dir=data_dir))
    if not builder.is_prepared():
      with _as_it_was_on_failure(data_dir, name), locks.building(data_dir, dataset):
        builder = (builders.capped_imagenet(data_dir, max_side, jpeg_quality) if max_side  # another process may
                   else builders.BUILDERS[dataset](data_dir=data_dir))                    # have prepared it
        if not builder.is_prepared():
          builders.check_download(dataset, manual_dir)
          builder.download_and_prepare(
              file_format='array_record',
              download_config=tfds.download.DownloadConfig(
                  manual_dir=os.fspath(manual_dir) if manual_dir else None,
                  # Statistics would need TensorFlow and are not used.
                  compute_stats=tfds.download.ComputeStatsMode.SKIP))
  else:
    raise ValueError(f'unknown dataset {dataset!r}; choose one of {sources.DATASETS}.')
  if scan_labels:
    for split in builder.info.splits:
      sources.cached_labels(builder, split, data_dir)
  return builder


@contextlib.contextmanager
def _as_it_was_on_failure(data_dir: str, name: str):
  """On an exception, removes what preparing ``name`` added to ``data_dir`` -- the dataset's folder, TFDS's
  downloads folder, the build lock, data_dir itself -- where each did not exist before (a partial download or an
  empty folder would otherwise stay behind)."""
  lock = os.path.join(data_dir, locks.BUILD_LOCK_FILE)  # locks.building's, made for this build
  made = [p for p in (data_dir, os.path.join(data_dir, name), os.path.join(data_dir, 'downloads'), lock)
          if not os.path.exists(p)]
  try:
    yield
  except BaseException:
    for path in reversed(made):  # the lock and sub-folders first, data_dir last
      if path == lock:
        if os.path.exists(lock):
          os.remove(lock)
      else:
        shutil.rmtree(path, ignore_errors=True)
    raise
