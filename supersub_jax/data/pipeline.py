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
`sources.load_source(..., encoded=True)` yields); the per-example views (crops, flips, resizes, a JPEG decoded fused
with its crop) are `image_ops`'. Both forms of an image draw the same random numbers, so one seed gives the same
boxes and flips whichever the source holds.

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
import math
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
import simplejpeg

from supersub_jax.choices import AUGMENTATIONS, LABEL_MODES, DECODERS
from supersub_jax.data import image_ops

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
    pixels = np.asarray(image_ops.decode_image(image) if isinstance(image, bytes) else image,
                        np.float64).reshape(-1, 3) / 255.0
    total += pixels.sum(0)
    total_sq += (pixels ** 2).sum(0)
    count += pixels.shape[0]
  mean = total / count
  return mean, np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))


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
      if not isinstance(image, bytes) or not image_ops.is_jpeg(image):
        raise ValueError("input.decoder='dali' decodes JPEG files: the source must hold encoded JPEGs "
                         "(sources.load_source(..., encoded=True) of imagenet2012); use input.decoder='cpu'.")
      height, width, _, _ = simplejpeg.decode_jpeg_header(image)
      box = image_ops.crop_box(height, width, rng)
      return {'jpeg': np.frombuffer(image, np.uint8), 'box': np.asarray(box, np.float32),
              'flip': np.bool_(rng.random() < 0.5), **{k: np.int32(example[k]) for k in _LABEL_KEYS}}
    if isinstance(image, bytes):
      if self.augment == 'random_resized_crop':
        return {'image': image_ops.decode_random_resized_crop(image, rng, self.image_size),
                **{k: np.int32(example[k]) for k in _LABEL_KEYS}}
      image = image_ops.decode_image(image)
    image = np.asarray(image)
    if self.augment == 'crop_flip':
      image = image_ops.crop_flip(image, rng, self.image_size)
    elif self.augment == 'random_resized_crop':
      image = image_ops.random_resized_crop(image, rng, self.image_size)
    else:
      image = image_ops.resize(image, self.image_size)
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
      image = image_ops.decode_center_crop(image, self.image_size, self.crop_fraction)
    else:
      image = image_ops.center_crop(np.asarray(image), self.image_size, self.crop_fraction)
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
