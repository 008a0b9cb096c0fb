"""Tests of the synthetic hierarchical dataset (supersub_jax.data.synthetic)."""

import collections
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supersub_jax.data import synthetic

TINY = dict(image_size=16, train_per_class=4, test_per_class=2, sizes=(3, 2, 2))


def read_all(builder, split):
  source = builder.as_data_source(split)
  examples = [source[i] for i in range(len(source))]
  return (np.stack([e['image'] for e in examples]), np.array([e['label'] for e in examples]),
          np.array([e['superclass'] for e in examples]))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('synthetic')
  return synthetic.build_synthetic(data_dir, seed=0, **TINY)


def test_class_counts_and_features(tiny):
  builder = tiny
  superclass_of, _ = synthetic.class_table(TINY['sizes'])
  for split, per_class in (('train', TINY['train_per_class']), ('test', TINY['test_per_class'])):
    images, labels, superclasses = read_all(builder, split)
    assert images.shape == (7 * per_class, 16, 16, 3) and images.dtype == np.uint8
    assert collections.Counter(labels.tolist()) == {c: per_class for c in range(7)}
    np.testing.assert_array_equal(superclasses, superclass_of[labels])
  assert builder.info.features['label'].num_classes == 7
  assert builder.info.features['superclass'].num_classes == 3


def test_train_and_test_images_differ(tiny):
  builder = tiny
  train, _, _ = read_all(builder, 'train')
  test, _, _ = read_all(builder, 'test')
  assert not any((test == image).all(axis=(1, 2, 3)).any() for image in train)


def test_same_seed_identical_different_seed_differs(tiny, tmp_path):
  builder = tiny
  again = synthetic.build_synthetic(tmp_path / 'again', seed=0, **TINY)
  other = synthetic.build_synthetic(tmp_path / 'other', seed=1, **TINY)
  reference = read_all(builder, 'train')
  for a, b in zip(reference, read_all(again, 'train')):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(reference[0], read_all(other, 'train')[0])


def test_build_is_idempotent_and_configs_do_not_collide(tiny):
  builder = tiny
  data_dir = os.path.dirname(os.path.dirname(os.path.dirname(builder.data_dir)))
  files = sorted(os.listdir(builder.data_dir))
  stamps = [os.path.getmtime(os.path.join(builder.data_dir, f)) for f in files]
  reused = synthetic.build_synthetic(data_dir, seed=0, **TINY)  # nothing rewritten: the files keep their times
  assert reused.data_dir == builder.data_dir
  assert stamps == [os.path.getmtime(os.path.join(builder.data_dir, f)) for f in files]
  paths = {synthetic.synthetic_builder(data_dir, **dict(TINY, **change)).data_dir
           for change in ({}, {'seed': 1}, {'image_size': 20}, {'train_per_class': 5},
                          {'test_per_class': 3}, {'sizes': (2, 3, 2)})}
  assert len(paths) == 6


def test_fingerprint_is_the_sha256_of_labels_and_pixels_in_order_and_follows_the_content(tiny, tmp_path):
  import hashlib  # pylint: disable=g-import-not-at-top
  images, labels, superclasses = read_all(tiny, 'train')
  cfg = tiny.builder_config
  expected = hashlib.sha256(f'{tiny.name}|{tiny.version}|{cfg.name}|train|'.encode())
  for image, label, superclass in zip(images, labels, superclasses):
    expected.update(np.array([label, superclass], np.int64).tobytes() + image.tobytes())
  assert synthetic.fingerprint(tiny, 'train') == expected.hexdigest()
  # Same content elsewhere: same fingerprint; the other split or another seed: another one.
  again = synthetic.build_synthetic(tmp_path / 'again', seed=0, **TINY)
  assert synthetic.fingerprint(again, 'train') == expected.hexdigest()
  assert synthetic.fingerprint(tiny, 'test') != expected.hexdigest()
  other = synthetic.build_synthetic(tmp_path / 'other', seed=1, **TINY)
  assert synthetic.fingerprint(other, 'train') != expected.hexdigest()


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), size=st.sampled_from([8, 16, 24]),
       sizes=st.lists(st.integers(1, 12), min_size=1, max_size=10))
def test_render_is_deterministic(seed, size, sizes):
  labels = np.arange(sum(sizes))
  a = synthetic.render(labels, sizes, size, np.random.default_rng(seed))
  b = synthetic.render(labels, sizes, size, np.random.default_rng(seed))
  assert a.shape == (len(labels), size, size, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, synthetic.render(labels, sizes, size,
                                                np.random.default_rng(seed + 1)))


def _nearest_class_mean_accuracy(train_x, train_y, test_x, test_y):
  classes = np.unique(train_y)
  means = np.stack([train_x[train_y == c].mean(0) for c in classes])
  distances = ((test_x[:, None, :] - means[None]) ** 2).sum(-1)
  return float((classes[distances.argmin(1)] == test_y).mean())


def _features(images, kind):
  """float32 [N, F] features of uint8 [N, H, W, 3] images."""
  x = images.astype(np.float32) / 255.0
  if kind == 'pixels':
    return x.reshape(len(x), -1)
  if kind == 'edges':
    # Colour-invariant silhouette: gradient magnitude, pooled 4x4 against position jitter.
    g = (np.abs(np.diff(x, axis=2))[:, :-1] + np.abs(np.diff(x, axis=1))[:, :, :-1]).sum(-1)
    n, side = len(x), (g.shape[1] // 4) * 4
    return g[:, :side, :side].reshape(n, side // 4, 4, side // 4, 4).mean((2, 4)).reshape(n, -1)
  # 'spectrum': phase-invariant texture energy, the amplitude spectrum of the grey image.
  grey = x.mean(-1)
  grey = grey - grey.mean(axis=(1, 2), keepdims=True)
  return np.log1p(np.abs(np.fft.rfft2(grey))).reshape(len(x), -1)


def _accuracies(sizes, per_class, kinds):
  labels = np.repeat(np.arange(sum(sizes)), per_class)
  train = synthetic.render(labels, sizes, 32, np.random.default_rng(0))
  test = synthetic.render(labels, sizes, 32, np.random.default_rng(1))
  return [_nearest_class_mean_accuracy(_features(train, k), labels, _features(test, k), labels)
          for k in kinds]


def test_subclasses_differ_in_fine_detail_only():
  # One superclass with 4 subclasses (chance 0.25): no pixel template (random phase, colour,
  # pose), but the phase-invariant texture spectrum carries the subclass.
  pixels, spectrum = _accuracies((4,), 60, ('pixels', 'spectrum'))
  assert pixels < 0.4, pixels
  assert spectrum > 0.7, spectrum


def test_superclasses_differ_in_coarse_structure():
  # Ten superclasses of one subclass each (chance 0.1): the silhouette is a clear but far
  # from sufficient cue; raw pixels are useless (colour and position are nuisance).
  pixels, edges = _accuracies((1,) * 10, 40, ('pixels', 'edges'))
  assert pixels < 0.2, pixels
  assert 0.18 < edges < 0.8, edges  # chance is 0.1: position jitter blurs the pooled silhouette


def test_partners_share_a_texture_and_meet_halfway():
  families = np.arange(len(synthetic.SHAPE_FAMILIES))
  partners = synthetic.partner(families)
  np.testing.assert_array_equal(partners % len(synthetic.TEXTURES), families % len(synthetic.TEXTURES))
  np.testing.assert_array_equal(synthetic.partner(partners), families)  # a pairing: no family left alone
  assert (partners != families).all()
  xs, ys = np.meshgrid(np.arange(32, dtype=np.float32) + 0.5, np.arange(32, dtype=np.float32) + 0.5)
  pose = [np.full(10, v, np.float32) for v in (16.0, 16.0, 10.0, 0.1)]
  halfway = synthetic._shape_mask(families, *pose, xs, ys, morph=np.full(10, 0.5, np.float32))
  from_partner = synthetic._shape_mask(partners, *pose, xs, ys, morph=np.full(10, 0.5, np.float32))
  np.testing.assert_allclose(halfway, from_partner, atol=1e-5)  # the two superclasses' silhouettes coincide
  unmorphed = synthetic._shape_mask(families, *pose, xs, ys)
  assert (np.abs(unmorphed - synthetic._shape_mask(partners, *pose, xs, ys)).mean(axis=(1, 2)) > 0.05).all()


def test_invalid_sizes_and_knobs():
  with pytest.raises(ValueError, match='only 10 shape families'):
    synthetic.validate_sizes((1,) * 11)
  with pytest.raises(ValueError, match='keep every size <= 12'):
    synthetic.validate_sizes((13,))
  with pytest.raises(ValueError, match='at least one superclass'):
    synthetic.validate_sizes(())
  with pytest.raises(ValueError, match='image_size=4'):
    synthetic.make_config(image_size=4)


def test_cli_summary_and_grid(tmp_path):
  grid_path = tmp_path / 'grid.png'
  result = subprocess.run([sys.executable, '-m', 'supersub_jax.data.prepare', '--dataset=synthetic',
                           f'--data_dir={tmp_path}',
                           '--image_size=16', '--train_per_class=2', '--test_per_class=2', '--sizes=3,1',
                           f'--grid={grid_path}'], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert 'superclass  0 disc' in out and 'split train: 8 examples' in out
  assert 'morphs toward bars' in out  # its partner, superclass 5, absent here: the shape still morphs
  assert 'build time' in out
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(grid_path) as image:
    assert image.size[0] > 100 and image.size[1] > 50


def test_subclasses_survive_a_horizontal_flip():
  # A flip maps a grating at angle a to -a; each image draws the sign of its angle, so subclasses are defined by
  # |angle| in [0, 90] and the flip augmentation of the training pipeline never changes an image's subclass.
  assert all(0.0 <= angle <= 90.0 for angle, _ in synthetic.GRATINGS)
  assert len(set(synthetic.GRATINGS)) == len(synthetic.GRATINGS)


def test_processes_preparing_one_fresh_data_dir_at_once_all_succeed(tmp_path):
  # TFDS builds into an incomplete.* folder and renames it: two builders of one dataset raced, and one failed with
  # "Destination ... already exists". The second waits for the first (locks.building) and reuses its build.
  from processes import run_together  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get('PYTHONPATH', '')]))
  command = [sys.executable, '-m', 'supersub_jax.data.prepare', '--dataset=synthetic', f'--data_dir={tmp_path}',
             '--image_size=16', '--train_per_class=40', '--test_per_class=4', '--sizes=3,2']
  outs = run_together([command] * 3, env=env, timeout=300)
  for code, out in outs:
    assert code == 0, out[-3000:]
  builder = synthetic.build_synthetic(tmp_path, image_size=16, train_per_class=40, test_per_class=4, sizes=(3, 2))
  assert len(builder.as_data_source('train')) == 40 * 5
  assert not [n for r, ds, _ in os.walk(tmp_path) for n in ds if n.startswith('incomplete')]
