"""Prepares the datasets as TFDS array_record files, without TensorFlow.

    python -m supersub_jax.data.prepare --dataset=synthetic --data_dir=DIR
    python -m supersub_jax.data.prepare --dataset=cifar100 --data_dir=DIR [--manual_dir=M]
    python -m supersub_jax.data.prepare --dataset=imagenet2012 --data_dir=DIR --manual_dir=M

TFDS's own `cifar100` and `imagenet2012` generators call TensorFlow (`tf.io.gfile` to read the
archives, `tf.image` to encode CIFAR's numpy images and to repair ImageNet's few CMYK/PNG files).
The builders below subclass them and replace only those steps (plain file I/O and pillow), so
features, names, versions, splits and file layout are the stock ones: the prepared data is read by
the stock builders (`tfds.builder('imagenet2012', data_dir=DIR)`), as `sources.load_source` does.

After writing the records, `prepare` also scans every split's labels once (see
`sources.cached_labels`), so that the first training run does not pay for it.
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as _imagenet_lib
from tensorflow_datasets.image_classification import cifar as _cifar_lib

from supersub_jax.data import synthetic

DATASETS: tuple[str, ...] = ('synthetic', 'cifar100', 'imagenet2012')

_IMAGENET_TARS = {'train': 'ILSVRC2012_img_train.tar', 'validation': 'ILSVRC2012_img_val.tar'}
_CIFAR100_URL = 'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz'
_CIFAR100_ARCHIVE = 'cifar-100-binary.tar.gz'


def prepare_command(dataset: str, data_dir: str | os.PathLike,
                    manual_dir: str | os.PathLike | None = None) -> str:
  """The shell command that prepares `dataset` in `data_dir` (quoted in error messages)."""
  command = (f'python -m supersub_jax.data.prepare --dataset={dataset} '
             f'--data_dir={os.fspath(data_dir)}')
  if dataset == 'imagenet2012':
    command += f' --manual_dir={os.fspath(manual_dir) if manual_dir else "<dir with ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar>"}'
  elif manual_dir:
    command += f' --manual_dir={os.fspath(manual_dir)}'
  return command


def _png_bytes(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='png')
  return buffer.getvalue()


def _to_rgb_jpeg(data: bytes) -> bytes:
  """Re-encodes an image (CMYK JPEG, PNG) as an RGB JPEG, as TFDS's own generator does."""
  with Image.open(io.BytesIO(data)) as image:
    buffer = io.BytesIO()
    image.convert('RGB').save(buffer, format='jpeg', quality=100)
  return buffer.getvalue()


class Cifar100NoTF(_cifar_lib.Cifar100, skip_registration=True):
  """TFDS `cifar100` generated without TensorFlow.

  Reads `cifar-100-binary.tar.gz` from `manual_dir` when it is there, else downloads it.
  """

  name = 'cifar100'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Optional: put {_CIFAR100_ARCHIVE} ({_CIFAR100_URL}) in manual_dir to skip the download.')

  def _split_generators(self, dl_manager):
    try:
      manual = os.path.join(dl_manager.manual_dir, _CIFAR100_ARCHIVE)
    except AssertionError:  # TFDS: no manual_dir given, or it is empty.
      manual = None
    archive = manual if manual and os.path.exists(manual) else dl_manager.download(_CIFAR100_URL)
    info = self._cifar_info
    members: dict[str, bytes] = {}
    with tarfile.open(os.fspath(archive), 'r:*') as tar:
      for member in tar:
        if member.isfile() and member.name.startswith(info.prefix):
          members[member.name[len(info.prefix):]] = tar.extractfile(member).read()
    missing = [f for f in info.train_files + info.test_files + info.label_files
               if f not in members]
    if missing:
      raise FileNotFoundError(f'{archive} lacks {missing} under {info.prefix}; is it the '
                              f'CIFAR-100 binary version ({_CIFAR100_URL})?')
    for key, names_file in zip(info.label_keys, info.label_files):
      self.info.features[key].names = [n for n in members[names_file].decode().split('\n') if n]
    return {
        'train': self._generate_examples('train_', [members[f] for f in info.train_files]),
        'test': self._generate_examples('test_', [members[f] for f in info.test_files]),
    }

  def _generate_examples(self, split_prefix: str, blobs: Sequence[bytes]):
    # Same records and keys as the stock generator; images PNG-encoded by pillow.
    label_keys = self._cifar_info.label_keys
    record_size = len(label_keys) + 3072
    index = 0
    for blob in blobs:
      rows = np.frombuffer(blob, np.uint8).reshape(-1, record_size)
      images = rows[:, len(label_keys):].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
      for labels, image in zip(rows[:, :len(label_keys)], images):
        record: dict[str, Any] = {k: int(v) for k, v in zip(label_keys, labels)}
        record['id'] = f'{split_prefix}{index:05d}'
        record['image'] = _png_bytes(np.ascontiguousarray(image))
        yield index, record
        index += 1


class Imagenet2012NoTF(_imagenet_lib.Builder, skip_registration=True):
  """TFDS `imagenet2012` (train and validation) generated without TensorFlow."""

  name = 'imagenet2012'

  def _split_generators(self, dl_manager):
    paths = {split: os.path.join(dl_manager.manual_dir, tar)
             for split, tar in _IMAGENET_TARS.items()}
    present = {split: path for split, path in paths.items() if os.path.exists(path)}
    if not present:
      raise FileNotFoundError(
          f'imagenet2012 needs a manual download: put {" and ".join(_IMAGENET_TARS.values())} '
          f'(from https://image-net.org/download-images) in manual_dir={dl_manager.manual_dir}.')
    splits = {}
    if 'train' in present:
      splits['train'] = self._generate_train(present['train'])
    if 'validation' in present:
      splits['validation'] = self._generate_validation(present['validation'])
    return splits

  def _fix_image(self, image_fname: str, image) -> io.BytesIO | Any:
    if image_fname in _imagenet_lib.CMYK_IMAGES or image_fname in _imagenet_lib.PNG_IMAGES:
      return io.BytesIO(_to_rgb_jpeg(image.read()))
    return image

  def _generate_train(self, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    # The train tar holds one tar per class, 'n01440764.tar', ...
    with open(path, 'rb') as outer_file, tarfile.open(fileobj=outer_file, mode='r|') as outer:
      for member in outer:
        if not member.isfile():
          continue
        label = os.path.basename(member.name)[:-len('.tar')]
        inner_bytes = io.BytesIO(outer.extractfile(member).read())
        with tarfile.open(fileobj=inner_bytes, mode='r|') as inner:
          for image_member in inner:
            if not image_member.isfile():
              continue
            image_fname = os.path.basename(image_member.name)
            image = self._fix_image(image_fname, inner.extractfile(image_member))
            yield image_fname, {'file_name': image_fname, 'image': image, 'label': label}

  def _generate_validation(self, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    labels_path = tfds.core.tfds_path(_imagenet_lib.imagenet_common._VALIDATION_LABELS_FNAME)  # pylint: disable=protected-access
    labels = labels_path.read_text().strip().splitlines()
    with tarfile.open(path, mode='r:') as tar:
      # Labels are listed in the alphabetical order of the file names.
      names = sorted(m.name for m in tar.getmembers() if m.isfile())
      label_of = dict(zip(names, labels))
      for member in tar:
        if member.isfile():
          fname = os.path.basename(member.name)
          yield fname, {'file_name': fname, 'image': tar.extractfile(member),
                        'label': label_of[member.name]}


_BUILDERS = {'cifar100': Cifar100NoTF, 'imagenet2012': Imagenet2012NoTF}


def prepare(dataset: str, data_dir: str | os.PathLike, *,
            manual_dir: str | os.PathLike | None = None, scan_labels: bool = True,
            **synthetic_kwargs) -> tfds.core.DatasetBuilder:
  """Writes `dataset` into `data_dir` as array_record (no-op if already there).

  Args:
    dataset: one of DATASETS.
    data_dir: TFDS data directory.
    manual_dir: where manually downloaded archives are (required for imagenet2012).
    scan_labels: also cache every split's labels (see `sources.cached_labels`).
    **synthetic_kwargs: knobs of `synthetic.build_synthetic` (synthetic only).

  Returns:
    The prepared builder.
  """
  from supersub_jax.data import sources  # pylint: disable=g-import-not-at-top  (cycle)
  data_dir = os.fspath(data_dir)
  if dataset == 'synthetic':
    builder = synthetic.build_synthetic(data_dir, **synthetic_kwargs)
  elif dataset in _BUILDERS:
    if synthetic_kwargs:
      raise TypeError(f'{sorted(synthetic_kwargs)} are synthetic-dataset knobs; '
                      f'{dataset} takes none.')
    if dataset == 'imagenet2012' and not manual_dir:
      raise ValueError('imagenet2012 needs --manual_dir=<dir with ILSVRC2012_img_train.tar and '
                       'ILSVRC2012_img_val.tar>.')
    builder = _BUILDERS[dataset](data_dir=data_dir)
    if not builder.is_prepared():
      builder.download_and_prepare(
          file_format='array_record',
          download_config=tfds.download.DownloadConfig(
              manual_dir=os.fspath(manual_dir) if manual_dir else None,
              # Statistics would need TensorFlow and are not used.
              compute_stats=tfds.download.ComputeStatsMode.SKIP))
  else:
    raise ValueError(f'unknown dataset {dataset!r}; choose one of {DATASETS}.')
  if scan_labels:
    for split in builder.info.splits:
      sources.cached_labels(builder, split, data_dir)
  return builder


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog='python -m supersub_jax.data.prepare',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--dataset', required=True, choices=DATASETS)
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--manual_dir', default=None)
  parser.add_argument('--image_size', type=int, default=None, help='synthetic only')
  parser.add_argument('--train_per_class', type=int, default=None, help='synthetic only')
  parser.add_argument('--test_per_class', type=int, default=None, help='synthetic only')
  parser.add_argument('--seed', type=int, default=None, help='synthetic only')
  parser.add_argument('--sizes', default=None, help='synthetic only, e.g. 12,6,4,3')
  args = parser.parse_args(argv)
  knobs = {k: getattr(args, k) for k in ('image_size', 'train_per_class', 'test_per_class', 'seed')
           if getattr(args, k) is not None}
  if args.sizes:
    knobs['sizes'] = tuple(int(x) for x in args.sizes.split(','))
  start = time.perf_counter()
  try:
    builder = prepare(args.dataset, args.data_dir, manual_dir=args.manual_dir, **knobs)
  except (ValueError, TypeError, FileNotFoundError) as e:
    parser.error(str(e))
  splits = ', '.join(f'{name}={info.num_examples}' for name, info in builder.info.splits.items())
  print(f'{builder.name} prepared at {builder.data_dir} ({splits}) in '
        f'{time.perf_counter() - start:.1f} s')


if __name__ == '__main__':
  main()
