"""TFDS's `cifar100` and `imagenet2012` builders, generated without TensorFlow.

TFDS's own generators call TensorFlow (`tf.io.gfile` to read the archives, `tf.image` to encode CIFAR's numpy
images and to repair ImageNet's few CMYK/PNG files). The builders below subclass them and replace only those steps
(plain file I/O and pillow), so features, names, versions, splits and file layout are the stock ones: the prepared
data is read by the stock builders (`tfds.builder('imagenet2012', data_dir=DIR)`), as `sources.load_source` does.

They live in this module, not in the `prepare` command's, because TFDS looks builders up by their module's package
(a class defined in `__main__` fails with "'__main__' is not a package").
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import tarfile
import threading
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import simplejpeg
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as _imagenet_lib
from tensorflow_datasets.image_classification import cifar as _cifar_lib

IMAGENET_TARS = {'train': 'ILSVRC2012_img_train.tar', 'validation': 'ILSVRC2012_img_val.tar'}
_CIFAR100_URL = 'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz'
_CIFAR100_ARCHIVE = 'cifar-100-binary.tar.gz'


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


class DownloadUnavailableError(FileNotFoundError):
  """A dataset needs a file that is neither in manual_dir nor downloadable now."""


def _unreachable(url: str, timeout: float) -> str | None:
  """Why ``url`` cannot be fetched now (one line), or None when it answers. Honours the proxy settings of the
  environment (``HTTPS_PROXY``), as the download would; gives up after ``timeout`` seconds, name lookup included."""
  answer: list[str | None] = ['no answer within %g s' % timeout]

  def probe():
    try:
      with urllib.request.urlopen(urllib.request.Request(url, method='HEAD'), timeout=timeout):
        answer[0] = None
    except Exception as e:  # pylint: disable=broad-except  (URLError, socket and SSL errors alike: not reachable)
      answer[0] = str(getattr(e, 'reason', None) or e).splitlines()[0][:200] or type(e).__name__

  thread = threading.Thread(target=probe, daemon=True)  # a name lookup ignores urlopen's timeout
  thread.start()
  thread.join(timeout + 1)
  return answer[0]


def check_download(dataset: str, manual_dir: str | os.PathLike | None, timeout: float = 5.0) -> None:
  """Raises ``DownloadUnavailableError`` (one line: the file to place and --manual_dir) when ``dataset`` would
  have to download its archive and cannot reach it, so that preparing fails in seconds, before anything is
  written, instead of after TFDS's retries. Datasets without a download (imagenet2012, synthetic) pass."""
  if dataset != 'cifar100':
    return
  if manual_dir and os.path.exists(os.path.join(os.fspath(manual_dir), _CIFAR100_ARCHIVE)):
    return
  why = _unreachable(_CIFAR100_URL, timeout)
  if why is not None:
    where = f'{_CIFAR100_ARCHIVE} is not in --manual_dir={manual_dir}' if manual_dir else 'no --manual_dir'
    raise DownloadUnavailableError(
        f'cifar100 cannot be downloaded ({_CIFAR100_URL}: {why}) and {where}: download {_CIFAR100_ARCHIVE} '
        f'elsewhere, put it in a folder and rerun with --manual_dir=<that folder>.')


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
             for split, tar in IMAGENET_TARS.items()}
    present = {split: path for split, path in paths.items() if os.path.exists(path)}
    if not present:
      raise FileNotFoundError(
          f'imagenet2012 needs a manual download: put {" and ".join(IMAGENET_TARS.values())} '
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
      for member in tar:
        if not member.isfile():
          continue
        fname = os.path.basename(member.name)
        # Line n of the labels file is the label of ILSVRC2012_val_<n>.JPEG. TFDS's own generator pairs the sorted
        # names with the lines instead, which is the same only for the complete 50,000-image tar.
        match = re.fullmatch(r'ILSVRC2012_val_(\d{8})\.JPEG', fname)
        if match is None or not 1 <= int(match[1]) <= len(labels):
          raise ValueError(f'{path}: {member.name} is not an ILSVRC2012 validation image name '
                           '(ILSVRC2012_val_<00000001..00050000>.JPEG); is this ILSVRC2012_img_val.tar?')
        yield fname, {'file_name': fname, 'image': tar.extractfile(member), 'label': labels[int(match[1]) - 1]}


@dataclasses.dataclass(eq=False)
class CappedConfig(tfds.core.BuilderConfig):
  """An imagenet2012 store whose JPEGs are at most `max_side` pixels on their longer side (re-encoded at
  `jpeg_quality`); the name, e.g. 'max_side512_q90', is its folder: imagenet2012/max_side512_q90/5.1.0."""
  max_side: int = 0
  jpeg_quality: int = 90


def capped_config(max_side: int, jpeg_quality: int = 90) -> CappedConfig:
  if not 0 < max_side or not 1 <= jpeg_quality <= 100:
    raise ValueError(f'max_side={max_side} must be > 0 and jpeg_quality={jpeg_quality} in [1, 100].')
  return CappedConfig(name=f'max_side{max_side}_q{jpeg_quality}', max_side=int(max_side),
                      jpeg_quality=int(jpeg_quality),
                      description=f'JPEGs with their longer side capped at {max_side} pixels (area-averaged, '
                                  f're-encoded at quality {jpeg_quality}, 4:2:0); smaller ones stored as they are.')


def cap_jpeg(blob: bytes, max_side: int, quality: int) -> bytes:
  """`blob` (an RGB or grayscale JPEG) with its longer side at most `max_side`: unchanged if it already is (no second
  lossy encoding), else area-averaged to fit (aspect ratio kept) and re-encoded at `quality` with 4:2:0 chroma, as
  ImageNet's own files mostly are."""
  try:
    height, width, _, _ = simplejpeg.decode_jpeg_header(blob)
    pixels = None
  except ValueError:  # not a JPEG libjpeg-turbo reads: pillow decodes it
    with Image.open(io.BytesIO(blob)) as image:
      pixels = np.asarray(image.convert('RGB'))
    height, width = pixels.shape[:2]
  if max(height, width) <= max_side and pixels is None:
    return blob
  if pixels is None:
    try:
      pixels = simplejpeg.decode_jpeg(blob, colorspace='RGB')
    except ValueError:  # CMYK and the like
      with Image.open(io.BytesIO(blob)) as image:
        pixels = np.asarray(image.convert('RGB'))
  scale = min(1.0, max_side / max(height, width))
  size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
  if scale < 1.0:
    pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
  return simplejpeg.encode_jpeg(pixels, quality=quality, colorspace='RGB', colorsubsampling='420')


class Imagenet2012Capped(Imagenet2012NoTF, skip_registration=True):
  """imagenet2012 pre-resized, as FFCV stores it: every JPEG capped at the config's `max_side` (`cap_jpeg`), in the
  config's own folder, so it never mixes with the stock store. Open it with `capped_imagenet`."""

  name = 'imagenet2012'

  def _fix_image(self, image_fname: str, image):
    fixed = super()._fix_image(image_fname, image)
    cfg = self.builder_config
    return io.BytesIO(cap_jpeg(fixed.read(), cfg.max_side, cfg.jpeg_quality))

  def _generate_validation(self, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    cfg = self.builder_config
    for key, example in super()._generate_validation(path):
      yield key, dict(example, image=io.BytesIO(cap_jpeg(example['image'].read(), cfg.max_side, cfg.jpeg_quality)))


def capped_imagenet(data_dir: str | os.PathLike, max_side: int, jpeg_quality: int = 90) -> Imagenet2012Capped:
  """The imagenet2012 builder of the store capped at `max_side` pixels, JPEG quality `jpeg_quality`."""
  return Imagenet2012Capped(data_dir=os.fspath(data_dir), config=capped_config(max_side, jpeg_quality))


BUILDERS = {'cifar100': Cifar100NoTF, 'imagenet2012': Imagenet2012NoTF}
