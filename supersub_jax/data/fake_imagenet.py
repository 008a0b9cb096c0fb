"""A fake ILSVRC2012 in the original layout: the train tar of per-class tars and the validation tar.

The real ImageNet cannot be downloaded everywhere; this writes tars the stock TFDS builder reads, so the ImageNet
path (prepare, train, evaluate) runs end to end on small data in the original format: in the tests, in
`benchmarks.input_pipeline`, and on a GPU host without ImageNet.
"""

import io
import os
import tarfile

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

PHOTO_KINDS = ('smooth', 'texture')


def imagenet_wnids() -> list[str]:
  """The 1000 wnids in ImageNet-1k index order (TFDS's labels.txt)."""
  return tfds.core.tfds_path('datasets/imagenet2012/labels.txt').read_text().split()


def validation_wnids() -> list[str]:
  """The wnid of ILSVRC2012_val_<n>.JPEG at position n - 1 (TFDS's validation_labels.txt)."""
  return tfds.core.tfds_path('datasets/imagenet2012/validation_labels.txt').read_text().split()


def _jpeg(rng, h, w):
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buffer, format='jpeg')
  return buffer.getvalue()


def _photo_jpeg(rng, h, w):
  """A photo-sized JPEG with photo-like statistics (smooth structure plus grain, quality 90), so that decoding
  costs about what an ImageNet image costs; pure noise would be several times larger than a photo."""
  coarse = Image.fromarray(rng.integers(0, 256, (max(h // 24, 2), max(w // 24, 2), 3), dtype=np.uint8))
  smooth = np.asarray(coarse.resize((w, h), Image.BICUBIC), np.float32)
  pixels = np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='jpeg', quality=90)
  return buffer.getvalue()


def _texture_jpeg(rng, h, w, quality=90):
  """A photo-sized JPEG with a photo's statistics where decoding cost depends on them: 1/f amplitude noise (the
  power spectrum of natural images), correlated across channels, over flat-coloured polygons (edges), plus sensor
  grain; quality 90. At 375x500 these JPEGs hold about 105 KB, ImageNet's typical size, and cost a decoder what a
  photo does (the smooth ones of `_photo_jpeg` hold 71 KB and decode faster)."""
  fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
  frequency = np.hypot(fx, fy)
  frequency[0, 0] = 1.0
  amplitude = (1.0 / frequency).astype(np.float32)
  amplitude[0, 0] = 0.0
  spectra = rng.standard_normal((4, h, w // 2 + 1, 2), dtype=np.float32)
  spectra = spectra[..., 0] + 1j * spectra[..., 1]
  noise = np.fft.irfft2((0.8 * spectra[:1] + 0.6 * spectra[1:]) * amplitude, s=(h, w))  # [3, h, w]
  noise /= noise.std(axis=(1, 2), keepdims=True)
  regions = Image.new('L', (w, h), 0)
  draw = ImageDraw.Draw(regions)
  shapes = 10
  for k in range(1, shapes + 1):
    corners = [(rng.uniform(-w / 4, 1.25 * w), rng.uniform(-h / 4, 1.25 * h)) for _ in range(rng.integers(3, 7))]
    draw.polygon(corners, fill=k)
  colours = rng.uniform(40, 215, (shapes + 1, 3)).astype(np.float32)
  pixels = colours[np.asarray(regions)] + 32.0 * np.moveaxis(noise, 0, -1) + rng.normal(0, 6.0, (h, w, 3))
  buffer = io.BytesIO()
  Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format='jpeg', quality=quality)
  return buffer.getvalue()


def _add(tar, name, blob):
  info = tarfile.TarInfo(name)
  info.size = len(blob)
  tar.addfile(info, io.BytesIO(blob))


def write_fake_imagenet(manual_dir, wnids, per_class, num_val=0, val_wnids=(), seed=0, photo_size=None,
                        photo_kind='smooth'):
  """ILSVRC2012_img_train.tar (one inner tar of `per_class` JPEGs per wnid) and ILSVRC2012_img_val.tar.

  The validation tar holds the first `num_val` validation files, plus for each of `val_wnids` the first
  validation file whose label it is (so that every listed class has a held-out image). No validation tar when
  both are empty. Training JPEGs are tiny noise images, or photo-like ones of `photo_size` (H, W) pixels:
  `photo_kind` 'smooth' (`_photo_jpeg`, 71 KB at 375x500) or 'texture' (`_texture_jpeg`, about 105 KB).
  """
  if photo_kind not in PHOTO_KINDS:
    raise ValueError(f'photo_kind={photo_kind!r} is not one of {PHOTO_KINDS}.')
  photo = _texture_jpeg if photo_kind == 'texture' else _photo_jpeg
  rng = np.random.default_rng(seed)
  os.makedirs(manual_dir, exist_ok=True)
  with tarfile.open(os.path.join(manual_dir, 'ILSVRC2012_img_train.tar'), 'w') as outer:
    for wnid in wnids:
      inner_bytes = io.BytesIO()
      with tarfile.open(fileobj=inner_bytes, mode='w') as inner:
        for j in range(per_class):
          blob = photo(rng, *photo_size) if photo_size else _jpeg(rng, 20 + 3 * j, 28)
          _add(inner, f'{wnid}_{j}.JPEG', blob)
      _add(outer, f'{wnid}.tar', inner_bytes.getvalue())
  labels = validation_wnids()
  numbers = set(range(1, num_val + 1))
  for wnid in val_wnids:
    numbers.add(labels.index(wnid) + 1)
  if numbers:
    with tarfile.open(os.path.join(manual_dir, 'ILSVRC2012_img_val.tar'), 'w') as tar:
      for n in sorted(numbers):
        _add(tar, f'ILSVRC2012_val_{n:08d}.JPEG', _jpeg(rng, 24, 18))


def write_mixed_10(manual_dir, per_class, photo_size=(375, 500), seed=0):
  """A fake ILSVRC2012 of the 253 classes of Superclassing ImageNet's ``mixed_10`` (``per_class`` photo-like JPEGs
  of ``photo_size`` each, one validation image per class): what ``configs/imagenet_superclassing_resnet50.py``
  trains on, at ImageNet's JPEG sizes (``benchmarks.gpu``'s end-to-end recipe)."""
  from supersub_jax import hierarchy  # pylint: disable=g-import-not-at-top
  wnids = [sub.wnid for sup in hierarchy.get('mixed_10').superclasses for sub in sup.subclasses]
  write_fake_imagenet(manual_dir, wnids, per_class, val_wnids=wnids, seed=seed, photo_size=tuple(photo_size))
