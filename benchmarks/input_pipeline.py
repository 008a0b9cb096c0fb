"""Input-pipeline throughput on the synthetic dataset (train pipeline, 32x32, batch 128).

    python benchmarks/input_pipeline.py --data_dir=/tmp/supersub_data [--workers=0,2]

Builds the default synthetic dataset if needed, then for each worker count times
`train_iterator` batches after a warm-up and prints images/s.  Run under `absl.app.run`:
grain's worker processes read absl flags, which must be parsed.
"""

import time

from absl import app, flags

from supersub_jax import hierarchy
from supersub_jax.data import pipeline, sources

_DATA_DIR = flags.DEFINE_string('data_dir', '/tmp/supersub_data', 'TFDS data directory.')
_WORKERS = flags.DEFINE_list('workers', ['0', '2'], 'grain worker counts to measure.')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'global batch size.')
_BATCHES = flags.DEFINE_integer('batches', 60, 'timed batches per configuration.')
_WARMUP = flags.DEFINE_integer('warmup', 10, 'untimed batches first (worker start-up).')
_AUGMENT = flags.DEFINE_enum('augment', 'crop_flip', pipeline.AUGMENTATIONS, 'augmentation.')


def measure(source, workers: int) -> float:
  """Images per second of the train pipeline with `workers` grain worker processes."""
  stats = pipeline.DATASET_STATS['synthetic']
  it = pipeline.train_iterator(
      source, global_batch_size=_BATCH.value, seed=0, augment=_AUGMENT.value,
      image_size=stats.image_size, mean=stats.mean, std=stats.std, worker_count=workers,
      process_index=0, process_count=1, local_device_count=1)
  for _ in range(_WARMUP.value):
    next(it)
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(it)
  seconds = time.perf_counter() - start
  if workers:
    it.close()
  return _BATCHES.value * _BATCH.value / seconds


def main(argv):
  del argv
  start = time.perf_counter()
  source = sources.load_source('synthetic', 'train', hierarchy.synthetic(), _DATA_DIR.value)
  print(f'source: {source} (ready in {time.perf_counter() - start:.1f} s)')
  rows = [(int(w), measure(source, int(w))) for w in _WORKERS.value]
  print(f'\n| workers | images/s (batch {_BATCH.value}, 32x32, {_AUGMENT.value}) |')
  print('|---:|---:|')
  for workers, rate in rows:
    print(f'| {workers} | {rate:,.0f} |')


if __name__ == '__main__':
  app.run(main)
