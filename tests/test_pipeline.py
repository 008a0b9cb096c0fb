"""Tests of the grain input pipeline (supersub_jax.data.pipeline), on tiny in-memory sources."""

import json

import numpy as np
import pytest

from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax.data import pipeline, sources
from test_image_ops import _jpeg

SIZE = 8  # image side of the in-memory sources


def indexed_source(num_examples: int, sizes=(3, 2)) -> sources.HierarchicalSource:
  """Example i: constant image of value i + 1 (so a crop's max reveals i), source class i % C."""
  h = hierarchy_lib.synthetic(sizes)
  records = [{'image': np.full((SIZE, SIZE, 3), i + 1, np.uint8)} for i in range(num_examples)]
  labels = sources.relabel(np.arange(num_examples) % h.num_subclasses, h)
  return sources.HierarchicalSource(records, labels, name='indexed', hierarchy=h)


def example_ids(batch) -> np.ndarray:
  """Recovers example indices from batch images (identity normalisation, see `indexed_source`).

  Returns int [devices * per_device].
  """
  pixels = np.rint(batch['image'] * 255.0).reshape(-1, SIZE * SIZE * 3)
  return pixels.max(axis=1).astype(np.int64) - 1


IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def train(source, **kwargs):
  args = dict(global_batch_size=8, seed=0, augment='none', image_size=SIZE,
              process_index=0, process_count=1, local_device_count=2, **IDENTITY)
  args.update(kwargs)
  return pipeline.train_iterator(source, **args)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_train_shapes_dtypes_and_labels():
  source = indexed_source(20)
  batch = next(train(source, augment='crop_flip', label_mode='superclass', local_device_count=4))
  assert batch['image'].shape == (4, 2, SIZE, SIZE, 3) and batch['image'].dtype == np.float32
  for key in ('label', 'subclass', 'superclass', 'local'):
    assert batch[key].shape == (4, 2) and batch[key].dtype == np.int32, key
  np.testing.assert_array_equal(batch['label'], batch['superclass'])
  # Labels travel with their image: id -> source class -> hierarchy labels.
  h = source.hierarchy
  ids = example_ids(batch)
  np.testing.assert_array_equal(batch['subclass'].ravel(), h.source_to_label[ids % 5])
  np.testing.assert_array_equal(batch['local'].ravel(), h.label_to_local[batch['subclass'].ravel()])


def test_label_modes():
  source = indexed_source(16)
  for mode in pipeline.LABEL_MODES:
    batch = next(train(source, label_mode=mode))
    np.testing.assert_array_equal(batch['label'], batch[mode])
  with pytest.raises(ValueError, match="label_mode='fine'"):
    train(source, label_mode='fine')


def test_normalisation():
  source = indexed_source(8)
  mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
  batch = next(train(source, mean=mean, std=std))
  ids = example_ids(next(train(source)))
  expected = ((ids[:, None] + 1) / 255.0 - np.asarray(mean)) / np.asarray(std)  # [B, 3]
  got = batch['image'].reshape(-1, SIZE * SIZE, 3)
  np.testing.assert_allclose(got, np.broadcast_to(expected[:, None, :], got.shape), rtol=1e-5)


def test_epochs_cover_all_and_reshuffle():
  source = indexed_source(24)
  it = train(source, global_batch_size=8)
  epochs = [np.concatenate([example_ids(b) for b in take(it, 3)]) for _ in range(3)]
  for ids in epochs:
    assert sorted(ids.tolist()) == list(range(24))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[1], epochs[2])


def test_seed_determinism():
  source = indexed_source(24)
  assert_batches_equal(take(train(source, seed=3, augment='crop_flip'), 4),
                       take(train(source, seed=3, augment='crop_flip'), 4))
  a = np.concatenate([example_ids(b) for b in take(train(source, seed=3), 3)])
  b = np.concatenate([example_ids(b) for b in take(train(source, seed=4), 3)])
  assert not np.array_equal(a, b)


def test_process_shards_disjoint_and_cover_epoch():
  source = indexed_source(32)
  per_process = []
  for p in range(2):
    it = train(source, global_batch_size=8, process_index=p, process_count=2, local_device_count=2)
    batches = take(it, 4)  # 4 batches x 4 examples = this process's half of an epoch
    assert batches[0]['image'].shape[:2] == (2, 2)
    per_process.append(np.concatenate([example_ids(b) for b in batches]))
  assert not set(per_process[0]) & set(per_process[1])
  assert sorted(np.concatenate(per_process).tolist()) == list(range(32))


def test_augmentations_differ_across_processes():
  # The rng index is the global stream position: the two shards must not share crops.
  source = indexed_source(64)
  offsets = []
  for p in range(2):
    batch = next(train(source, augment='crop_flip', global_batch_size=32, process_index=p,
                       process_count=2, local_device_count=1))
    offsets.append((batch['image'].reshape(16, SIZE, SIZE, 3)[..., 0] > 0).sum(axis=(1, 2)))
  assert not np.array_equal(offsets[0], offsets[1])


def test_resume_from_state():
  source = indexed_source(20)
  kwargs = dict(seed=7, augment='crop_flip', global_batch_size=8)
  it = train(source, **kwargs)
  take(it, 3)  # crosses the first epoch boundary (20 / 8)
  state = json.loads(json.dumps(it.get_state()))  # what JsonSave / JsonRestore round-trip
  expected = take(it, 4)
  resumed = train(source, **kwargs)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 4), expected)


def test_eval_covers_each_example_once_with_mask():
  source = indexed_source(23)
  num_batches = pipeline.num_eval_batches(23, global_batch_size=8, process_count=2)
  assert num_batches == 3  # 12 examples on process 0 in batches of 4
  seen = []
  for p in range(2):
    batches = list(pipeline.eval_iterator(
        source, global_batch_size=8, image_size=SIZE, process_index=p, process_count=2,
        local_device_count=2, **IDENTITY))
    assert len(batches) == num_batches
    for b in batches:
      assert b['mask'].shape == (2, 2) and b['mask'].dtype == np.float32
      assert b['image'].shape == (2, 2, SIZE, SIZE, 3)
      real = b['mask'].ravel() == 1
      seen.extend(example_ids(b)[real].tolist())
    assert sum(b['mask'].sum() for b in batches) == (12 if p == 0 else 11)
  assert sorted(seen) == list(range(23))


def test_eval_is_deterministic_and_in_order():
  source = indexed_source(10)
  run = lambda: list(pipeline.eval_iterator(source, global_batch_size=4, image_size=SIZE,
                                            process_index=0, process_count=1,
                                            local_device_count=1, **IDENTITY))
  a, b = run(), run()
  assert_batches_equal(a, b)
  ids = np.concatenate([example_ids(x)[x['mask'].ravel() == 1] for x in a])
  np.testing.assert_array_equal(ids, np.arange(10))


def test_batch_size_error_names_numbers():
  source = indexed_source(16)
  with pytest.raises(ValueError, match=r'global_batch_size=12 .* 2 \* 4 = 8.*multiple of 8'):
    train(source, global_batch_size=12, process_count=2, local_device_count=4)
  with pytest.raises(ValueError, match='global_batch_size=12'):
    pipeline.eval_iterator(source, global_batch_size=12, image_size=SIZE, process_index=0,
                           process_count=2, local_device_count=4, **IDENTITY)


def test_jax_defaults_for_layout():
  import jax  # pylint: disable=g-import-not-at-top
  layout = pipeline.batch_layout(8 * jax.local_device_count())
  assert (layout.process_index, layout.process_count) == (jax.process_index(),
                                                          jax.process_count())
  assert layout.per_device_batch_size * layout.local_device_count == layout.process_batch_size


def test_random_resized_crop_pipeline_with_variable_sizes():
  h = hierarchy_lib.synthetic((2,))
  rng = np.random.default_rng(0)
  records = [{'image': rng.integers(0, 256, (20 + 3 * i, 30 - 2 * i, 3), dtype=np.uint8)}
             for i in range(6)]
  source = sources.HierarchicalSource(records, sources.relabel(np.arange(6) % 2, h),
                                      name='var', hierarchy=h)
  batch = next(train(source, augment='random_resized_crop', image_size=16, global_batch_size=4))
  assert batch['image'].shape == (2, 2, 16, 16, 3)
  evals = list(pipeline.eval_iterator(source, global_batch_size=4, image_size=16,
                                      crop_fraction=0.875, process_index=0, process_count=1,
                                      local_device_count=1, **IDENTITY))
  assert [b['image'].shape for b in evals] == [(1, 4, 16, 16, 3)] * 2


def test_dataset_stats_cover_datasets():
  assert set(pipeline.DATASET_STATS) == set(sources.DATASETS)
  for stats in pipeline.DATASET_STATS.values():
    assert stats.augment in pipeline.AUGMENTATIONS and min(stats.std) > 0


@pytest.mark.slow
def test_workers_give_same_batches_and_resume():
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
    flags.FLAGS.mark_as_parsed()
  source = indexed_source(20)
  kwargs = dict(seed=1, augment='crop_flip')
  reference = take(train(source, **kwargs), 6)
  it = train(source, worker_count=2, **kwargs)
  assert_batches_equal(take(it, 3), reference[:3])
  state = json.loads(json.dumps(it.get_state()))
  it.close()
  resumed = train(source, worker_count=2, **kwargs)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 3), reference[3:])
  resumed.close()


def test_synthetic_stats_match_the_data(tmp_path):
  from supersub_jax.data import render  # pylint: disable=g-import-not-at-top
  h = hierarchy_lib.synthetic()
  labels = np.arange(h.num_subclasses).repeat(8)
  images = render.render(labels, h.sizes, 32, np.random.default_rng(5))
  records = [{'image': image} for image in images]
  source = sources.HierarchicalSource(records, sources.relabel(labels, h), name='s', hierarchy=h)
  mean, std = pipeline.channel_stats(source)
  stats = pipeline.DATASET_STATS['synthetic']
  np.testing.assert_allclose(mean, stats.mean, atol=0.02)
  np.testing.assert_allclose(std, stats.std, atol=0.02)


@pytest.mark.parametrize('devices,batch,fraction', [(2, 16, 0.5), (1, 8, 0.25), (4, 24, 0.3)])
def test_a_mixed_in_source_fills_exactly_its_fraction_of_every_devices_batch(devices, batch, fraction):
  source = indexed_source(40)  # superclass of example i: (i % 5) >= 3
  own = source.for_superclass(0)
  others = source.outside(0, local=7)
  it = train(own, global_batch_size=batch, local_device_count=devices, mix=(others, fraction), label_mode='local')
  main, mixed = pipeline.mixed_counts(batch // devices, fraction)
  assert mixed == round(fraction * batch / devices)
  seen_own, seen_other = set(), set()
  for b in take(it, 12):
    ids = example_ids(b).reshape(devices, batch // devices)
    label = b['label']
    # Each device: its own examples first, then exactly `mixed` from the other superclasses, labelled 7.
    assert (b['superclass'][:, :main] == 0).all() and (b['superclass'][:, main:] == 1).all()
    assert (label[:, main:] == 7).all() and (label[:, :main] < 3).all()
    seen_own |= set(ids[:, :main].ravel().tolist())
    seen_other |= set(ids[:, main:].ravel().tolist())
  assert seen_own == {i for i in range(40) if i % 5 < 3}  # 12 batches cover both sources
  assert seen_other == {i for i in range(40) if i % 5 >= 3}


def test_a_mixed_iterator_resumes_both_streams():
  source = indexed_source(30)
  kwargs = dict(mix=(source.outside(1, local=5), 0.5), label_mode='local')
  it = train(source.for_superclass(1), **kwargs)
  take(it, 3)
  state = json.loads(json.dumps(it.get_state()))
  expected = take(it, 4)
  resumed = train(source.for_superclass(1), **kwargs)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 4), expected)


def test_weighted_outside_draws_superclasses_in_the_given_shares():
  h = hierarchy_lib.synthetic((2, 2, 2, 2))  # 4 superclasses, 750 examples each
  records = [{'image': np.zeros((SIZE, SIZE, 3), np.uint8)}] * 3000
  source = sources.HierarchicalSource(records, sources.relabel(np.arange(3000) % 8, h), name='many', hierarchy=h)
  view = source.outside(0, local=2, weights=np.asarray([5.0, 1.0, 3.0, 0.0]), seed=3)
  share = np.bincount(view.labels.superclass, minlength=4) / len(view)
  assert len(view) == 2250 and share[0] == 0 and share[3] == 0
  np.testing.assert_allclose(share[1:3], [0.25, 0.75], atol=0.03)  # 3 sigma of a binomial share of 2250 draws
  assert (view.labels.local == 2).all() and view[0]['local'] == 2
  with pytest.raises(ValueError, match='no mass'):
    source.outside(0, local=2, weights=np.asarray([1.0, 0.0, 0.0, 0.0]))


def test_mixed_fraction_that_leaves_no_example_on_a_side_is_refused():
  with pytest.raises(ValueError, match='raise the batch size'):
    pipeline.mixed_counts(2, 0.2)
  with pytest.raises(ValueError, match=r'in \(0, 1\)'):
    pipeline.mixed_counts(8, 1.0)


def test_encoded_source_gives_uint8_batches_for_the_model_to_normalise():
  h = hierarchy_lib.synthetic((2,))
  records = [{'image': _jpeg(40 + 8 * i, 56, i)} for i in range(4)]
  source = sources.HierarchicalSource(records, sources.relabel(np.arange(4) % 2, h), name='jpegs',
                                      hierarchy=h, encoded=True)
  stats = dict(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
  kwargs = dict(global_batch_size=4, seed=3, augment='random_resized_crop', image_size=16,
                process_index=0, process_count=1, local_device_count=1, **stats)
  raw = next(pipeline.train_iterator(source, normalize=False, **kwargs))
  host = next(pipeline.train_iterator(source, normalize=True, **kwargs))
  assert raw['image'].dtype == np.uint8 and raw['image'].shape == (1, 4, 16, 16, 3)
  # What models.ResNet(input_norm=...) does on the device, in numpy: the host's normalisation.
  want = (raw['image'].astype(np.float32) - 255 * np.float32(stats['mean'])) / (255 * np.float32(stats['std']))
  np.testing.assert_allclose(host['image'], want, atol=1e-5)
  np.testing.assert_array_equal(raw['subclass'], host['subclass'])
