"""The decoder contract (supersub_jax.data.dali against the CPU decoder of supersub_jax.data.pipeline): the same
batches' shapes, dtypes, normalisation, label order, boxes and flips, and nearly the same pixels.

DALI is an optional extra (pip install -e '.[dali-cuda12]'); its CPU operators run without a GPU, so wherever it is
installed these tests run, on the GPU when jax sees one. Without it they are skipped, saying so.
"""

import io

import numpy as np
import pytest
from PIL import Image

from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax.data import dali, pipeline, sources

pytestmark = pytest.mark.skipif(dali.unavailable() is not None, reason=str(dali.unavailable()))

STATS = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _photo_jpeg(height, width, seed):
  rng = np.random.default_rng(seed)
  coarse = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8))
  buffer = io.BytesIO()
  coarse.resize((width, height), Image.BICUBIC).save(buffer, format='jpeg', quality=90)
  return buffer.getvalue()


def _source(count=8):
  h = hierarchy_lib.synthetic((3, 2))
  records = [{'image': _photo_jpeg(96 + 8 * (i % 3), 128 - 8 * (i % 2), i)} for i in range(count)]
  return sources.HierarchicalSource(records, sources.relabel(np.arange(count) % 5, h), name='jpegs', hierarchy=h,
                                    encoded=True)


def _batches(decoder, normalize, count=2):
  it = pipeline.train_iterator(_source(), global_batch_size=4, seed=7, augment='random_resized_crop', image_size=32,
                               process_index=0, process_count=1, local_device_count=2, normalize=normalize,
                               decoder=decoder, **STATS)
  return [next(it) for _ in range(count)], it


@pytest.mark.parametrize('normalize', [False, True])
def test_dali_batches_meet_the_cpu_decoders_contract(normalize):
  cpu, _ = _batches('cpu', normalize)
  gpu, _ = _batches('dali', normalize)
  for a, b in zip(cpu, gpu):
    assert set(a) == set(b)
    for key in a:
      assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
    assert b['image'].dtype == (np.float32 if normalize else np.uint8)
    for key in ('label', 'subclass', 'superclass', 'local'):  # the same examples, in the same order
      np.testing.assert_array_equal(a[key], b[key])
    # The same boxes and flips (drawn by grain for both): the pixels differ only by the resize filters.
    scale = 255 * np.float32(STATS['std']) if normalize else 1.0
    diff = np.abs(a['image'].astype(np.float32) - b['image'].astype(np.float32)) * scale
    assert diff.mean() < 4.0, diff.mean()


def test_dali_iterator_resumes_from_grains_state():
  reference, _ = _batches('dali', False, count=3)
  it = _batches('dali', False, count=1)[1]
  state = it.get_state()
  resumed = _batches('dali', False, count=0)[1]
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)['image'], reference[1]['image'])


def test_dali_refuses_what_it_does_not_run():
  with pytest.raises(ValueError, match="decoder='dali' runs random_resized_crop"):
    pipeline.train_iterator(_source(), global_batch_size=4, seed=0, augment='crop_flip', image_size=32,
                            process_index=0, process_count=1, local_device_count=1, decoder='dali', **STATS)
