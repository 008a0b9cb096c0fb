"""grain input pipelines: sharded, seeded, resumable training batches and padded eval batches.

Batches are dicts of numpy arrays laid out for `jax.pmap` / per-device sharding:

    image    float32 [local_devices, per_device_batch, H, W, 3], normalised; or with `normalize=False`
             uint8 [local_devices, per_device_batch, H, W, 3], the pixels (4x fewer bytes to the device, where
             the model normalises them: `models.ResNet.input_norm`)
    label    int32   [local_devices, per_device_batch], the chosen label mode
    subclass, superclass, local   int32 [local_devices, per_device_batch]
    mask     float32 [local_devices, per_device_batch]   (eval only; 1 real, 0 padding)

Sharding.  Training: the whole source is shuffled (one permutation per epoch, from `seed`, the
same on every process), repeated forever, and process p takes positions p, p + P, p + 2P, ... of
that stream, so processes read disjoint examples and each epoch's examples are spread over all
processes.  Eval: process p takes examples p, p + P, ... in order, padded to the same number of
batches on every process.

Images. A source's 'image' is either decoded pixels (uint8 [H, W, 3]) or the encoded file (bytes: what
`sources.load_source(..., encoded=True)` yields). A JPEG is decoded here, fused with its view: the crop box is drawn
from the JPEG's header first, and the JPEG is decoded with libjpeg-turbo's DCT-domain scaling (1/2, 1/4, 1/8) when
the box still covers the output at that scale, so a crop of a large JPEG is never decoded at full size
(`decode_random_resized_crop`, `decode_center_crop`); the box is then resized by OpenCV on a view of the decoded
pixels (`_resize`), uint8 throughout. Where setup.py's C extension is built (`REGION_DECODING`), only the box is
decoded: libjpeg-turbo skips the rows above it without their inverse DCT (`jpeg_skip_scanlines`), never reads the
rows below, and transforms only its columns (`jpeg_crop_scanline`), giving the pixels a whole decode has there
(`decode_jpeg_box`); without it (no libjpeg-turbo headers at install) simplejpeg decodes the whole JPEG at that
scale. simplejpeg exposes DCT scaling only, and PyTurboJPEG 2's cropping region needs libjpeg-turbo >= 3.0, newer
than Debian 12's 2.1.5. Both forms of an image draw the same random numbers, so one
seed gives the same boxes and flips whichever the source holds.

Augmentation is a grain `random_map`, whose numpy rng is derived from the seed and the
example's position in the global stream: a pipeline restored from `get_state()` reproduces the
same crops and flips.

Resuming: `it.get_state()` is a small JSON-serialisable dict (save it with
`ocp.args.JsonSave`); `train_iterator(...same arguments...).set_state(state)` continues with the
batch that would have come next.  With `worker_count > 0` grain's `mp_prefetch` state records,
per worker, how far it got; it restores exactly as long as `worker_count` is unchanged (the
workers split the batch stream round-robin, so the batches themselves do not depend on
`worker_count`, but a state saved with one count does not restore into another).
grain starts workers with `spawn`: the source must be picklable (TFDS data sources and
`sources.HierarchicalSource` are), the entry script needs an `if __name__ == '__main__':` guard,
and absl flags must be parsed (run under `absl.app.run`).  Close such iterators with
`it.close()`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import grain
import jax
import numpy as np
import simplejpeg
from PIL import Image

try:  # the C extension setup.py builds where libjpeg-turbo's headers are (libjpeg62-turbo-dev); optional
  from supersub_jax.data import _jpeg_region
except ImportError:
  _jpeg_region = None
# Whether JPEGs are decoded only where the crop is (`decode_jpeg_box`), or whole at the crop's DCT scale.
REGION_DECODING = _jpeg_region is not None

# One image at a time per reading thread: OpenCV's own thread pool only adds hand-offs to a 224x224 resize (the
# pipeline runs in parallel over threads and grain workers instead).
cv2.setNumThreads(1)

AUGMENTATIONS = ('crop_flip', 'random_resized_crop', 'none')
LABEL_MODES = ('subclass', 'superclass', 'local')
_LABEL_KEYS = ('subclass', 'superclass', 'local')


@dataclasses.dataclass(frozen=True)
class DatasetStats:
  """Per-channel normalisation (on [0, 1] pixels) and default image size of a dataset."""
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  image_size: int
  augment: str
  eval_crop_fraction: float


DATASET_STATS: dict[str, DatasetStats] = {
    # Measured on the default synthetic train split (seed 0) with `channel_stats`.
    'synthetic': DatasetStats((0.3114, 0.3125, 0.3111), (0.1895, 0.1899, 0.1906), 32,
                              'crop_flip', 1.0),
    'cifar100': DatasetStats((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 32,
                             'crop_flip', 1.0),
    'imagenet2012': DatasetStats((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224,
                                 'random_resized_crop', 0.875),
}


def channel_stats(source, max_examples: int = 5000) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std (float64 [3] each) of [0, 1] pixels over the first examples."""
  n = min(len(source), max_examples)
  if n == 0:
    raise ValueError('channel_stats needs a non-empty source.')
  total, total_sq, count = np.zeros(3), np.zeros(3), 0
  for i in range(n):
    image = source[i]['image']
    pixels = np.asarray(decode_image(image) if isinstance(image, bytes) else image, np.float64).reshape(-1, 3) / 255.0
    total += pixels.sum(0)
    total_sq += (pixels ** 2).sum(0)
    count += pixels.shape[0]
  mean = total / count
  return mean, np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))


# --------------------------------------------------------------------------------------------
# Per-example image ops (numpy / pillow, uint8 in, uint8 out)
# --------------------------------------------------------------------------------------------


def _resize(image: np.ndarray, size: int, box: tuple[float, float, float, float] | None = None
            ) -> np.ndarray:
  """The image's box = (left, top, right, bottom) (default: all of it), rounded to whole pixels, resized to
  size^2 by OpenCV on a view of the box (no copy of the crop): bilinear, or pixel-area averaging where the box is
  more than twice the output in a dimension (bilinear would alias there; area averaging is 5x slower, and rare once
  the JPEG is DCT-scaled to the box). uint8 [H, W, C] in, uint8 [size, size, C] out."""
  h, w = image.shape[:2]
  left, top, right, bottom = (0, 0, w, h) if box is None else (int(round(v)) for v in box)
  if (left, top, right, bottom) == (0, 0, w, h) and (h, w) == (size, size):
    # As it is, unless a view into a decoder's read-only buffer (`decode_jpeg_box`): outputs are writable arrays.
    return image if image.flags.writeable and image.flags.c_contiguous else np.array(image)
  region = image[top:bottom, left:right]
  area = right - left > 2 * size or bottom - top > 2 * size
  return cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR)


def _flip(image: np.ndarray) -> np.ndarray:
  """Horizontal flip of uint8 [H, W, C] into a new contiguous array."""
  return cv2.flip(image, 1)


def crop_flip(image: np.ndarray, rng: np.random.Generator, image_size: int,
              padding: int = 4) -> np.ndarray:
  """Zero-pads by `padding`, takes a random image_size^2 crop, flips horizontally w.p. 1/2.

  image: uint8 [H, W, 3] (resized to image_size^2 first if needed).  Returns uint8
  [image_size, image_size, 3].
  """
  image = _resize(image, image_size)
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  top, left = rng.integers(0, 2 * padding + 1, size=2)
  out = padded[top:top + image_size, left:left + image_size]
  if rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def crop_box(height: int, width: int, rng: np.random.Generator,
             scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
             attempts: int = 10) -> tuple[int, int, int, int]:
  """The Inception-style crop box (left, top, right, bottom) of an image of height x width pixels.

  Area fraction uniform in `scale`, aspect ratio log-uniform in `ratio` (torchvision's RandomResizedCrop); after
  `attempts` boxes that do not fit, the central square of the short side. Uses 2 uniform draws per attempt and 2
  integers for the accepted box, in this order: every path that crops (pixels, JPEG bytes) calls this one.
  """
  area = height * width
  for _ in range(attempts):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    cw = int(round(math.sqrt(target * aspect)))
    ch = int(round(math.sqrt(target / aspect)))
    if 0 < cw <= width and 0 < ch <= height:
      top = int(rng.integers(0, height - ch + 1))
      left = int(rng.integers(0, width - cw + 1))
      return (left, top, left + cw, top + ch)
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  return (left, top, left + side, top + side)


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, image_size: int,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        attempts: int = 10) -> np.ndarray:
  """Inception-style crop (`crop_box`) resized to image_size^2, flipped horizontally w.p. 1/2.

  image: uint8 [H, W, 3].  Returns uint8 [image_size, image_size, 3].
  """
  h, w = image.shape[:2]
  box = crop_box(h, w, rng, scale, ratio, attempts)
  out = _resize(image, image_size, box)
  return _flip(out) if rng.random() < 0.5 else out


# --------------------------------------------------------------------------------------------
# Encoded images: decoding fused with the view
# --------------------------------------------------------------------------------------------

_DCT_FACTORS = (8, 4, 2)  # libjpeg-turbo's SIMD-scaled IDCTs; other factors (e.g. 7/8) are slower than none


def dct_factor(box_width: float, box_height: float, image_size: int) -> int:
  """The largest JPEG downscale factor (8, 4, 2, else 1) at which a box of box_width x box_height source pixels
  still spans at least image_size^2 decoded pixels, so the resize to image_size never upsamples what a full decode
  would have resolved."""
  for factor in _DCT_FACTORS:
    if box_width >= image_size * factor and box_height >= image_size * factor:
      return factor
  return 1


def _is_jpeg(blob) -> bool:
  return simplejpeg.is_jpeg(blob)


def decode_image(blob) -> np.ndarray:
  """Any encoded image (JPEG, PNG, ...) -> uint8 [H, W, 3] RGB pixels, whole."""
  if _is_jpeg(blob):
    try:
      return simplejpeg.decode_jpeg(blob, colorspace='RGB')
    except ValueError:  # CMYK and other JPEGs libjpeg-turbo cannot turn into RGB: pillow can
      pass
  with Image.open(io.BytesIO(blob)) as image:
    return np.asarray(image.convert('RGB'))


def decode_jpeg_box(blob, box: tuple[float, float, float, float], factor: int, height: int, width: int
                    ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
  """The pixels of a JPEG of height x width that a resize of `box` (source pixels) reads, decoded at scale
  1/factor, and the box in those pixels' coordinates: `_resize(pixels, size, box)` is the view. With the region
  decoder (`REGION_DECODING`) only the box's pixels are decoded (rows above it skipped without their inverse DCT,
  rows below never read, columns outside it not transformed), the same pixels as a whole decode has there; else the
  whole JPEG at that scale (simplejpeg). Raises ValueError for JPEGs libjpeg-turbo cannot turn into RGB (CMYK)."""
  out_h, out_w = -(-height // factor), -(-width // factor)  # libjpeg's output size at scale 1/factor
  sx, sy = out_w / width, out_h / height
  scaled = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
  if _jpeg_region is None:
    if factor == 1:
      return simplejpeg.decode_jpeg(blob, colorspace='RGB'), scaled
    # min_factor alone does not scale: simplejpeg picks the coarsest scale that keeps the output at least
    # min_height x min_width, and at least min_factor.
    pixels = simplejpeg.decode_jpeg(blob, colorspace='RGB', min_height=out_h, min_width=out_w, min_factor=factor)
    return pixels, scaled
  # The whole pixels `_resize` reads (it rounds the box), one more column each side: libjpeg-turbo upsamples the
  # chroma of a cropped span's edge columns as an image edge, so they alone would differ from a whole decode.
  left, top, right, bottom = (int(round(v)) for v in scaled)
  left, top = min(max(left, 0), out_w - 1), min(max(top, 0), out_h - 1)
  right, bottom = min(max(right, left + 1), out_w), min(max(bottom, top + 1), out_h)
  data, rows, span, x_offset = _jpeg_region.decode_region(blob, max(left - 1, 0), top, min(right + 1, out_w), bottom,
                                                          factor)
  pixels = np.frombuffer(data, np.uint8).reshape(rows, span, 3)[:, left - x_offset:right - x_offset]
  return pixels, (0, 0, right - left, bottom - top)


def _decode_view(blob, box_of: Any, image_size: int, flip: Any = None) -> np.ndarray:
  """Decodes `blob` and resizes the box `box_of(height, width)` (source pixels) to image_size^2, decoding a JPEG at
  the coarsest DCT scale that keeps the box at least image_size wide and high, only the box where the region decoder
  is built (`decode_jpeg_box`). `flip()` (after the box is drawn) says whether to flip horizontally. Returns uint8
  [image_size, image_size, 3]."""
  pixels = None
  if _is_jpeg(blob):
    height, width, _, _ = simplejpeg.decode_jpeg_header(blob)
    box = box_of(height, width)
    try:
      pixels, box = decode_jpeg_box(blob, box, dct_factor(box[2] - box[0], box[3] - box[1], image_size), height,
                                    width)
    except ValueError:  # CMYK and the like: whole, through pillow (`decode_image`)
      pass
  if pixels is None:
    pixels = decode_image(blob)
    if not _is_jpeg(blob):
      box = box_of(*pixels.shape[:2])
  out = _resize(pixels, image_size, box)
  return _flip(out) if flip is not None and flip() else out


def decode_random_resized_crop(blob, rng: np.random.Generator, image_size: int,
                               scale: tuple[float, float] = (0.08, 1.0),
                               ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10) -> np.ndarray:
  """`random_resized_crop` of an encoded image, decoding only what the crop needs: the box is drawn from the
  JPEG's header (same random numbers as the pixel path) and the JPEG decoded at the coarsest DCT scale that keeps
  the box at least image_size^2 (`dct_factor`). Returns uint8 [image_size, image_size, 3]."""
  return _decode_view(blob, lambda h, w: crop_box(h, w, rng, scale, ratio, attempts), image_size,
                      flip=lambda: rng.random() < 0.5)


def _center_box(height: int, width: int, crop_fraction: float) -> tuple[float, float, float, float]:
  side = min(height, width) * crop_fraction
  top, left = (height - side) / 2, (width - side) / 2
  return (left, top, left + side, top + side)


def decode_center_crop(blob, image_size: int, crop_fraction: float = 0.875) -> np.ndarray:
  """`center_crop` of an encoded image, DCT-scaled like `decode_random_resized_crop`."""
  def box_of(h, w):
    return None if (h, w) == (image_size, image_size) else _center_box(h, w, crop_fraction)

  if not _is_jpeg(blob):
    return center_crop(decode_image(blob), image_size, crop_fraction)
  return _decode_view(blob, lambda h, w: box_of(h, w) or (0, 0, w, h), image_size)


def center_crop(image: np.ndarray, image_size: int, crop_fraction: float = 0.875) -> np.ndarray:
  """Eval view: the central square covering `crop_fraction` of the short side, resized.

  An image already image_size^2 is returned unchanged (CIFAR-style 32x32 eval).
  image: uint8 [H, W, 3].  Returns uint8 [image_size, image_size, 3].
  """
  h, w = image.shape[:2]
  if (h, w) == (image_size, image_size):
    return image
  return _resize(image, image_size, _center_box(h, w, crop_fraction))


# --------------------------------------------------------------------------------------------
# Transforms (top-level classes so that grain workers can pickle them)
# --------------------------------------------------------------------------------------------


class _Augment(grain.transforms.RandomMap):
  """Random per-example view; keeps the labels. With `for_dali`, only draws the view: the JPEG's bytes (uint8
  [n]), its crop 'box' float32 [4] and 'flip' bool go on to DALI (`supersub_jax.data.dali`)."""

  def __init__(self, augment: str, image_size: int, for_dali: bool = False):
    self.augment = augment
    self.image_size = image_size
    self.for_dali = for_dali

  def random_map(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    image = example['image']
    if self.for_dali:
      if not isinstance(image, bytes) or not _is_jpeg(image):
        raise ValueError("input.decoder='dali' decodes JPEG files: the source must hold encoded JPEGs "
                         "(sources.load_source(..., encoded=True) of imagenet2012); use input.decoder='cpu'.")
      height, width, _, _ = simplejpeg.decode_jpeg_header(image)
      box = crop_box(height, width, rng)
      return {'jpeg': np.frombuffer(image, np.uint8), 'box': np.asarray(box, np.float32),
              'flip': np.bool_(rng.random() < 0.5), **{k: np.int32(example[k]) for k in _LABEL_KEYS}}
    if isinstance(image, bytes):
      if self.augment == 'random_resized_crop':
        return {'image': decode_random_resized_crop(image, rng, self.image_size),
                **{k: np.int32(example[k]) for k in _LABEL_KEYS}}
      image = decode_image(image)
    image = np.asarray(image)
    if self.augment == 'crop_flip':
      image = crop_flip(image, rng, self.image_size)
    elif self.augment == 'random_resized_crop':
      image = random_resized_crop(image, rng, self.image_size)
    else:
      image = _resize(image, self.image_size)
    return {'image': image, **{k: np.int32(example[k]) for k in _LABEL_KEYS}}


class _EvalView(grain.transforms.Map):
  """Deterministic eval view of example `i` of a process's padded shard, with its mask."""

  def __init__(self, source, shard: np.ndarray, image_size: int, crop_fraction: float):
    self.source = source
    self.shard = shard  # int64 [shard_size], source indices of this process
    self.image_size = image_size
    self.crop_fraction = crop_fraction

  def map(self, i: int) -> dict[str, Any]:
    real = i < len(self.shard)
    # Padding repeats a real example (its mask is 0), so shapes stay uniform; a process whose
    # shard is empty (more processes than examples) pads with example 0.
    if real:
      index = int(self.shard[i])
    else:
      index = int(self.shard[0]) if len(self.shard) else 0
    example = self.source[index]
    image = example['image']
    if isinstance(image, bytes):
      image = decode_center_crop(image, self.image_size, self.crop_fraction)
    else:
      image = center_crop(np.asarray(image), self.image_size, self.crop_fraction)
    return {'image': image, **{k: np.int32(example[k]) for k in _LABEL_KEYS},
            'mask': np.float32(real)}


class _Interleave(grain.transforms.Map):
  """Batch-level: joins a batch of the main stream and one of the mixed-in stream so that each device's share
  holds its own examples, then the mixed-in ones (a per-device BatchNorm sees every device's mix alike)."""

  def __init__(self, local_device_count: int):
    self.local_device_count = local_device_count

  def map(self, pair: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    d = self.local_device_count
    main, mixed = pair
    return {k: np.concatenate([main[k].reshape((d, -1) + main[k].shape[1:]),
                               mixed[k].reshape((d, -1) + mixed[k].shape[1:])], axis=1).reshape(
                                   (-1,) + main[k].shape[1:]) for k in main}


class _Finalize(grain.transforms.Map):
  """Batch-level: normalise images to float32 (unless `normalize` is False: uint8 stays), pick the label,
  reshape to [devices, per_dev]."""

  def __init__(self, mean: Sequence[float], std: Sequence[float], label_mode: str,
               local_device_count: int, normalize: bool = True):
    self.scale = (1.0 / (255.0 * np.asarray(std, np.float32))).astype(np.float32)
    self.shift = (np.asarray(mean, np.float32) / np.asarray(std, np.float32)).astype(np.float32)
    self.label_mode = label_mode
    self.local_device_count = local_device_count
    self.normalize = normalize

  def map(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    d = self.local_device_count
    out = {k: v.reshape((d, v.shape[0] // d) + v.shape[1:]) for k, v in batch.items()}
    if self.normalize:
      out['image'] = out['image'].astype(np.float32) * self.scale - self.shift
    out['label'] = out[self.label_mode]
    return out


# --------------------------------------------------------------------------------------------
# Iterators
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BatchLayout:
  """How a global batch is split: global = process_count * local_devices * per_device."""
  global_batch_size: int
  process_index: int
  process_count: int
  local_device_count: int

  @property
  def process_batch_size(self) -> int:
    return self.global_batch_size // self.process_count

  @property
  def per_device_batch_size(self) -> int:
    return self.process_batch_size // self.local_device_count


def batch_layout(global_batch_size: int, process_index: int | None = None,
                 process_count: int | None = None,
                 local_device_count: int | None = None) -> BatchLayout:
  """Validates the split of `global_batch_size`; None entries default to jax's values."""
  process_index = jax.process_index() if process_index is None else int(process_index)
  process_count = jax.process_count() if process_count is None else int(process_count)
  local_device_count = (jax.local_device_count() if local_device_count is None
                        else int(local_device_count))
  if process_count < 1 or local_device_count < 1:
    raise ValueError(f'process_count={process_count} and local_device_count='
                     f'{local_device_count} must be >= 1.')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is outside [0, process_count='
                     f'{process_count}).')
  shards = process_count * local_device_count
  if global_batch_size < 1 or global_batch_size % shards:
    lower = max(shards, global_batch_size // shards * shards)
    raise ValueError(
        f'global_batch_size={global_batch_size} is not divisible by process_count * '
        f'local_device_count = {process_count} * {local_device_count} = {shards}; use a '
        f'multiple of {shards}, e.g. {lower} or {lower + shards}.')
  return BatchLayout(int(global_batch_size), process_index, process_count, local_device_count)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f'{name}={value!r} is not one of {tuple(choices)}.')


def _stack_but_jpegs(examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """grain batch_fn of the dali mode: every field stacked, but the JPEGs (of different lengths) kept as a list."""
  return {k: ([e[k] for e in examples] if k == 'jpeg' else np.stack([e[k] for e in examples]))
          for k in examples[0]}


DECODERS = ('cpu', 'dali')


def _finish(ds: grain.MapDataset, worker_count: int, read_threads: int) -> grain.DatasetIterator:
  """Iterator over the batches of `ds` (each element of `ds` is one whole batch)."""
  if worker_count < 0:
    raise ValueError(f'worker_count={worker_count} must be >= 0 (0 = read in this process).')
  if read_threads < 1:
    raise ValueError(f'read_threads={read_threads} must be >= 1.')
  # grain's defaults (16 threads, 500 buffered elements) are sized for single examples; ours
  # are whole batches: 500 ImageNet batches would not fit in memory, and for cheap per-example
  # work (32x32 PNGs) extra threads only contend for the GIL (1 thread: ~1.4x faster here).
  options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * read_threads)
  iter_ds = ds.to_iter_dataset(options)
  if worker_count > 0:
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(iter_ds)


def _augmented_stream(source, *, seed: int, augment: str, image_size: int, layout: BatchLayout,
                      for_dali: bool = False) -> grain.MapDataset:
  """This process's share of ``source`` shuffled anew each epoch, repeated forever and augmented."""
  if len(source) < layout.process_count:
    raise ValueError(f'source has {len(source)} examples, fewer than process_count='
                     f'{layout.process_count}: every process needs at least one.')
  shuffle_seed, augment_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
  ds = (grain.MapDataset.source(source)
        .shuffle(seed=shuffle_seed)   # a fresh permutation per epoch (seed + epoch)
        .repeat()
        # Before sharding: the rng index is the position in the global stream, so no two
        # processes draw the same augmentation.
        .random_map(_Augment(augment, image_size, for_dali=for_dali), seed=augment_seed))
  return ds[layout.process_index::layout.process_count]


def mixed_counts(per_device_batch: int, fraction: float) -> tuple[int, int]:
  """(main, mixed-in) examples of each device's batch for a mixed-in ``fraction``: round(fraction * per-device
  batch) mixed in, the rest from the main source."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f'a mixed-in fraction is in (0, 1), got {fraction}.')
  mixed = int(round(fraction * per_device_batch))
  if not 0 < mixed < per_device_batch:
    raise ValueError(f'a mixed-in fraction {fraction} of {per_device_batch} examples per device leaves '
                     f'{mixed} mixed in: raise the batch size, or move the fraction away from 0 and 1.')
  return per_device_batch - mixed, mixed


def train_iterator(source, *, global_batch_size: int, seed: int, augment: str = 'crop_flip',
                   image_size: int, mean: Sequence[float], std: Sequence[float],
                   label_mode: str = 'subclass', worker_count: int = 0, read_threads: int = 1,
                   process_index: int | None = None, process_count: int | None = None,
                   local_device_count: int | None = None, normalize: bool = True,
                   decoder: str = 'cpu', mix: tuple[Any, float] | None = None) -> grain.DatasetIterator:
  """Endless, reshuffled-each-epoch, augmented training batches of this process.

  Args:
    source: random access (`len`, `[i]`) of {'image': uint8 [H, W, 3], 'subclass',
      'superclass', 'local': int}, e.g. `sources.load_source(...)`.
    global_batch_size: examples per step over all processes and devices.
    seed: determines order and augmentation (integer in [0, 2**32)).
    augment: 'crop_flip' (pad 4, crop, flip; 32x32 data), 'random_resized_crop' (ImageNet),
      or 'none' (resize only).
    image_size: output side H = W.
    mean, std: per-channel normalisation on [0, 1] pixels (see DATASET_STATS).
    label_mode: which of subclass / superclass / local is copied to 'label'.
    worker_count: grain worker processes (0: read in this process).
    read_threads: threads preparing batches in each reading process; raise it for ImageNet
      (JPEG decoding releases the GIL), keep 1 for 32x32 data.
    process_index, process_count, local_device_count: default to jax's.
    normalize: False: images stay uint8 pixels, for a model that normalises on the device
      (`models.ResNet.input_norm`); True: float32, normalised here.
    decoder: 'cpu' (decoded in the reading processes) or 'dali' (grain draws the crops, DALI decodes them:
      `supersub_jax.data.dali`; random_resized_crop of encoded JPEGs only).
    mix: (second source, fraction): every device's batch ends with exactly ``mixed_counts(per_device_batch,
      fraction)[1]`` examples of the second source (shuffled, repeated and augmented as the first, under its own
      seeds), e.g. a specialist's "not my superclass" examples. CPU decoder only.

  Returns:
    A grain DatasetIterator (supports get_state / set_state) of dict batches (module doc).
  """
  layout = batch_layout(global_batch_size, process_index, process_count, local_device_count)
  _check_choice('augment', augment, AUGMENTATIONS)
  _check_choice('label_mode', label_mode, LABEL_MODES)
  if not 0 <= seed < 2 ** 32:
    raise ValueError(f'seed={seed} must be in [0, 2**32).')
  _check_choice('decoder', decoder, DECODERS)
  dali = decoder == 'dali'
  if dali and augment != 'random_resized_crop':
    raise ValueError(f"decoder='dali' runs random_resized_crop, not augment={augment!r}; use decoder='cpu'.")
  if dali and mix is not None:
    raise ValueError("decoder='dali' reads one source; mixing in a second (dustbin specialists) needs "
                     "decoder='cpu'.")
  main_seed, mix_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2)) if mix else (seed, 0)
  stream = functools.partial(_augmented_stream, augment=augment, image_size=image_size, layout=layout,
                             for_dali=dali)
  finalize = _Finalize(mean, std, label_mode, layout.local_device_count, normalize)
  if dali:
    from supersub_jax.data import dali as dali_lib  # pylint: disable=g-import-not-at-top
    ds = stream(source, seed=main_seed).batch(layout.process_batch_size, drop_remainder=True,
                                              batch_fn=_stack_but_jpegs)
    return dali_lib.DaliIterator(_finish(ds, worker_count, read_threads),
                                 dali_lib.DaliDecoder(layout.process_batch_size, image_size), finalize)
  if mix is None:
    ds = stream(source, seed=main_seed).batch(layout.process_batch_size, drop_remainder=True)
  else:
    other, fraction = mix
    main, mixed = mixed_counts(layout.per_device_batch_size, fraction)
    a = stream(source, seed=main_seed).batch(main * layout.local_device_count, drop_remainder=True)
    b = stream(other, seed=mix_seed).batch(mixed * layout.local_device_count, drop_remainder=True)
    length = min(len(a), len(b))
    ds = grain.experimental.ZipMapDataset([a[:length], b[:length]]).map(_Interleave(layout.local_device_count))
  ds = ds.map(finalize)
  return _finish(ds, worker_count, read_threads)


def num_eval_batches(num_examples: int, *, global_batch_size: int,
                     process_count: int | None = None) -> int:
  """Batches each process yields to cover `num_examples` once (same count on every process)."""
  process_count = jax.process_count() if process_count is None else int(process_count)
  process_batch = global_batch_size // process_count
  if process_batch < 1:
    raise ValueError(f'global_batch_size={global_batch_size} < process_count={process_count}.')
  return max(1, math.ceil(math.ceil(num_examples / process_count) / process_batch))


def eval_iterator(source, *, global_batch_size: int, image_size: int, mean: Sequence[float],
                  std: Sequence[float], label_mode: str = 'subclass',
                  crop_fraction: float = 1.0, worker_count: int = 0, read_threads: int = 1,
                  process_index: int | None = None, process_count: int | None = None,
                  local_device_count: int | None = None, normalize: bool = True) -> grain.DatasetIterator:
  """One deterministic pass over this process's share of `source`, padded with mask 0.

  Yields `num_eval_batches(len(source), ...)` batches on every process; over all processes
  each example appears exactly once with mask 1.  Images are center-cropped (`crop_fraction`
  of the short side; ImageNet: 0.875) and resized to image_size, unless already that size.
  Arguments as in `train_iterator`.
  """
  layout = batch_layout(global_batch_size, process_index, process_count, local_device_count)
  _check_choice('label_mode', label_mode, LABEL_MODES)
  if len(source) == 0:
    raise ValueError('eval_iterator got an empty source.')
  shard = np.arange(layout.process_index, len(source), layout.process_count, dtype=np.int64)
  num_batches = num_eval_batches(len(source), global_batch_size=global_batch_size,
                                 process_count=layout.process_count)
  ds = (grain.MapDataset.range(num_batches * layout.process_batch_size)
        .map(_EvalView(source, shard, image_size, crop_fraction))
        .batch(layout.process_batch_size, drop_remainder=True)
        .map(_Finalize(mean, std, label_mode, layout.local_device_count, normalize)))
  return _finish(ds, worker_count, read_threads)
