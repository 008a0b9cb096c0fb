"""Input-pipeline throughput: images/s of the train pipeline by grain worker count.

    python -m benchmarks.input_pipeline --data_dir=/tmp/supersub_data [--workers=0,2]
    python -m benchmarks.input_pipeline --dataset=imagenet2012 --data_dir=/tmp/fake_imagenet_data \
        --image_size=224 --augment=random_resized_crop --workers=0,1,2 --batch_size=64

The synthetic dataset (32x32, crop + flip) is built if needed. For imagenet2012 the script writes a fake
ILSVRC2012 train tar of photo-like JPEGs (``--photo_size``, default 375x500; ``--fake_classes`` classes of
Superclassing ImageNet x ``--fake_per_class`` images) into ``<data_dir>/manual`` and prepares it as the real one
would be (array_record of the encoded JPEGs), so each batch pays what ImageNet costs: JPEG decoding, the
random-resized crop and the resize to ``--image_size``. After a warm-up, times ``--batches`` batches and prints
images/s, and images/s per reading process, for each of ``--repeats`` runs (the spread of a shared machine shows).
With ``--stages=N`` it first times each stage of the per-image path (read, crop box, decode, resize, flip and
conversion, batching) over N records in this process, one thread, and grain's overhead as what the whole iterator
takes beyond them. ``--photo_kind=texture`` (default) writes JPEGs with a photo's statistics (1/f noise and edges,
about 105 KB at 375x500, quality 90); ``smooth`` the older 71 KB ones, which decode faster. ``--max_side=N`` reads
the pre-resized store (`prepare --max_side=N`, JPEG quality 90), prepared beside the stock one if needed.
Run under ``absl.app.run``: grain's worker processes read absl flags, which must be parsed.

The path measured: ``--encoded`` (default) hands the pipeline the stored JPEG, decoded fused with its crop
(``image_ops.decode_random_resized_crop``); ``--noencoded`` lets TFDS decode whole images first (the path before
it). ``--normalize=device`` (default) leaves batches uint8 for the model to normalise; ``host`` normalises to float32
here. ``--decoder=dali`` has DALI decode (``supersub_jax.data.dali``; on the GPU where jax sees one).
"""

import os
import time

from absl import app, flags
import numpy as np

from supersub_jax import hierarchy
from supersub_jax.data import image_ops, pipeline, prepare, sources

_DATA_DIR = flags.DEFINE_string('data_dir', '/tmp/supersub_data', 'TFDS data directory.')
_WORKERS = flags.DEFINE_list('workers', ['0', '2'], 'grain worker counts to measure.')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'global batch size.')
_BATCHES = flags.DEFINE_integer('batches', 60, 'timed batches per configuration.')
_WARMUP = flags.DEFINE_integer('warmup', 10, 'untimed batches first (worker start-up).')
_AUGMENT = flags.DEFINE_enum('augment', 'crop_flip', pipeline.AUGMENTATIONS, 'augmentation.')
_DATASET = flags.DEFINE_enum('dataset', 'synthetic', ['synthetic', 'imagenet2012'], 'what to read.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 0, 'output side (0: the dataset\'s default).')
_READ_THREADS = flags.DEFINE_integer('read_threads', 1, 'threads preparing batches in each reading process.')
_FAKE_CLASSES = flags.DEFINE_integer('fake_classes', 10, 'imagenet2012: classes in the fake tar.')
_FAKE_PER_CLASS = flags.DEFINE_integer('fake_per_class', 100, 'imagenet2012: JPEGs per class in the fake tar.')
_PHOTO_SIZE = flags.DEFINE_list('photo_size', ['375', '500'], 'imagenet2012: H,W of the fake JPEGs.')
_ENCODED = flags.DEFINE_bool('encoded', True, 'The source holds the stored files; the pipeline decodes them.')
_NORMALIZE = flags.DEFINE_enum('normalize', 'device', ['host', 'device'], 'Where images are normalised.')
_DECODER = flags.DEFINE_enum('decoder', 'cpu', ['cpu', 'dali'], 'Who decodes (training batches).')
_REPEATS = flags.DEFINE_integer('repeats', 1, 'Runs of each worker count.')
_PHOTO_KIND = flags.DEFINE_enum('photo_kind', 'texture', ['smooth', 'texture'],
                                "imagenet2012: the fake JPEGs ('texture': 1/f noise and edges, about 105 KB at "
                                "375x500; 'smooth': 71 KB, cheaper to decode). Use a fresh --data_dir per kind.")
_MAX_SIDE = flags.DEFINE_integer('max_side', 0, 'imagenet2012: read the pre-resized store of JPEGs capped at this '
                                 'longer side (prepared here if needed; `prepare --max_side`); 0: the stock store.')
_STAGES = flags.DEFINE_integer('stages', 0, 'imagenet2012: first time each stage of the per-image path over this '
                               'many records, in this process (0: skip).')


def _cpu_seconds() -> float:
  """CPU seconds used so far by this process and its live children (grain's workers)."""
  import psutil  # pylint: disable=g-import-not-at-top
  me = psutil.Process()
  total = sum(me.cpu_times()[:2])
  for child in me.children(recursive=True):
    try:
      total += sum(child.cpu_times()[:2])
    except psutil.NoSuchProcess:
      pass
  return total


def measure(source, workers: int) -> tuple[float, float]:
  """(images per second, images per CPU second) of the train pipeline with `workers` grain worker processes; the
  second is the rate per core whatever else shares the machine (CPU time of this process and its workers)."""
  stats = pipeline.DATASET_STATS[_DATASET.value]
  it = pipeline.train_iterator(
      source, global_batch_size=_BATCH.value, seed=0, augment=_AUGMENT.value,
      image_size=_IMAGE_SIZE.value or stats.image_size, mean=stats.mean, std=stats.std, worker_count=workers,
      read_threads=_READ_THREADS.value, process_index=0, process_count=1, local_device_count=1,
      normalize=_NORMALIZE.value == 'host', decoder=_DECODER.value)
  for _ in range(_WARMUP.value):
    next(it)
  start, start_cpu = time.perf_counter(), _cpu_seconds()
  for _ in range(_BATCHES.value):
    next(it)
  seconds, cpu = time.perf_counter() - start, _cpu_seconds() - start_cpu
  if workers:
    it.close()
  return _BATCHES.value * _BATCH.value / seconds, _BATCHES.value * _BATCH.value / cpu


def main(argv):
  del argv
  start = time.perf_counter()
  if _DATASET.value == 'imagenet2012':
    source = _fake_imagenet_source()
  else:
    source = sources.load_source('synthetic', 'train', hierarchy.synthetic(), _DATA_DIR.value,
                                 encoded=_ENCODED.value)
  print(f'source: {source} (ready in {time.perf_counter() - start:.1f} s)')
  if _STAGES.value and _DATASET.value == 'imagenet2012' and _ENCODED.value:
    stage_table(source, _STAGES.value)
  rows = []
  for w in _WORKERS.value:
    for _ in range(_REPEATS.value):
      rows.append((int(w), measure(source, int(w))))
      print(f'{w} workers: {rows[-1][1][0]:,.0f} images/s, {rows[-1][1][1]:,.0f} per CPU second', flush=True)
  side = _IMAGE_SIZE.value or pipeline.DATASET_STATS[_DATASET.value].image_size
  print(f'\n| workers | images/s (batch {_BATCH.value}, {_DATASET.value} -> {side}x{side}, {_AUGMENT.value}, '
        f'{_READ_THREADS.value} read thread(s), {"encoded" if _ENCODED.value else "decoded by TFDS"}, '
        f'{_DECODER.value} decoder, normalised on the {_NORMALIZE.value}) | per reading process | per CPU second (all processes) |')
  print('|---:|---:|---:|---:|')
  for workers, (rate, per_cpu) in rows:
    print(f'| {workers} | {rate:,.0f} | {rate / max(workers, 1):,.0f} | {per_cpu:,.0f} |')


def _best_ms(fn, items, loops: int = 3) -> tuple[float, float]:
  """(wall, CPU) milliseconds per item of `fn` over `items`, each the best of `loops` passes. The CPU time is this
  process's (all its threads): what a core pays, which other jobs on a shared machine disturb less than the wall."""
  wall, cpu = float('inf'), float('inf')
  for _ in range(loops):
    start, start_cpu = time.perf_counter(), time.process_time()
    for item in items:
      fn(item)
    wall = min(wall, (time.perf_counter() - start) / len(items))
    cpu = min(cpu, (time.process_time() - start_cpu) / len(items))
  return 1e3 * wall, 1e3 * cpu


def stage_table(source, count: int) -> None:
  """Times each stage of the train path of an encoded JPEG over `count` records (the pipeline's own functions),
  then the whole iterator in this process, and prints ms per image and each stage's share; grain's overhead is what
  the iterator takes beyond the stages."""
  import simplejpeg  # pylint: disable=g-import-not-at-top
  side = _IMAGE_SIZE.value or pipeline.DATASET_STATS['imagenet2012'].image_size
  indices = list(range(min(count, len(source))))
  blobs = [source[i]['image'] for i in indices]
  print(f'{len(blobs)} JPEGs, mean {np.mean([len(b) for b in blobs]) / 1e3:.1f} KB, '
        f'{simplejpeg.decode_jpeg_header(blobs[0])[:2]} (H, W) the first')

  def view_of(i):  # the box, flip and DCT factor as the pipeline draws them
    rng = np.random.default_rng(i)
    height, width, _, _ = simplejpeg.decode_jpeg_header(blobs[i])
    box = image_ops.crop_box(height, width, rng)
    return box, rng.random() < 0.5, image_ops.dct_factor(box[2] - box[0], box[3] - box[1], side), (height, width)

  views = [view_of(i) for i in indices]
  decode = lambda i: image_ops.decode_jpeg_box(blobs[i], views[i][0], views[i][2], *views[i][3])
  decoded = [decode(i) for i in indices]
  resize = lambda i: image_ops.resize(decoded[i][0], side, decoded[i][1])

  resized = [resize(i) for i in indices]
  ms = {
      'read the record (array_record)': _best_ms(lambda i: source[i], indices),
      'header + crop box + DCT factor': _best_ms(view_of, indices),
      (f'decode ({"the box only, libjpeg-turbo" if image_ops.REGION_DECODING else "whole, simplejpeg"}; '
       'DCT-scaled where the box allows: `image_ops.decode_jpeg_box`)'): _best_ms(decode, indices),
      'crop + resize to the output (`image_ops.resize`: OpenCV on a view of the box)': _best_ms(resize, indices),
      'flip (half the images; `image_ops._flip`)': _best_ms(
          lambda i: image_ops._flip(resized[i]) if views[i][1] else resized[i], indices),  # pylint: disable=protected-access
  }
  outs = [image_ops.decode_random_resized_crop(b, np.random.default_rng(i), side) for i, b in zip(indices, blobs)]
  batch = _BATCH.value
  stack = _best_ms(lambda _: np.stack(outs[:batch]), [0] * 20)
  ms['batching (np.stack, per image)'] = (stack[0] / batch, stack[1] / batch)
  whole = _best_ms(lambda i: image_ops.decode_random_resized_crop(blobs[i], np.random.default_rng(i), side), indices)
  stats = pipeline.DATASET_STATS['imagenet2012']
  it = pipeline.train_iterator(source, global_batch_size=batch, seed=0, augment='random_resized_crop',
                               image_size=side, mean=stats.mean, std=stats.std, worker_count=0, read_threads=1,
                               process_index=0, process_count=1, local_device_count=1, normalize=False)
  next(it)
  batches = max(2, len(indices) // batch)
  iterator = tuple(t / batch for t in _best_ms(lambda _: next(it), range(batches)))
  ms['grain (the iterator less the stages above)'] = tuple(iterator[k] - sum(t[k] for t in ms.values())
                                                           for k in (0, 1))
  print(f'\n| stage (one process, one thread, batch {batch}, -> {side}x{side}) | wall ms per image | CPU ms per image '
        f'| share of CPU |\n|---|---:|---:|---:|')
  for name, (wall, cpu) in ms.items():
    print(f'| {name} | {wall:.3f} | {cpu:.3f} | {100 * cpu / iterator[1]:.0f}% |')
  print(f'| per-image path alone (`decode_random_resized_crop`) | {whole[0]:.3f} | {whole[1]:.3f} | '
        f'{100 * whole[1] / iterator[1]:.0f}% |')
  print(f'| **the train iterator** | **{iterator[0]:.3f}** ({1e3 / iterator[0]:,.0f} images/s) | **{iterator[1]:.3f}** '
        f'({1e3 / iterator[1]:,.0f} images/s per core) | 100% |\n', flush=True)


def _fake_imagenet_source():
  """The train split of a fake ILSVRC2012 of photo-like JPEGs, written and prepared under --data_dir once."""
  from supersub_jax.data.fake_imagenet import write_fake_imagenet  # pylint: disable=g-import-not-at-top
  tree = hierarchy.get('mixed_10')
  wnids = [sub.wnid for sup in tree.superclasses for sub in sup.subclasses][:_FAKE_CLASSES.value]
  manual = os.path.join(_DATA_DIR.value, 'manual')
  if not os.path.exists(os.path.join(manual, 'ILSVRC2012_img_train.tar')):
    write_fake_imagenet(manual, wnids, _FAKE_PER_CLASS.value, val_wnids=wnids[:1],
                        photo_size=tuple(int(x) for x in _PHOTO_SIZE.value), photo_kind=_PHOTO_KIND.value)
  capped = dict(max_side=_MAX_SIDE.value, jpeg_quality=90) if _MAX_SIDE.value else {}
  prepare.prepare('imagenet2012', _DATA_DIR.value, manual_dir=manual, **capped)
  return sources.load_source('imagenet2012', 'train', tree, _DATA_DIR.value, manual_dir=manual,
                             encoded=_ENCODED.value, **capped)


if __name__ == '__main__':
  app.run(main)
