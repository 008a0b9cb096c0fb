"""supersub_jax.data.render: the synthetic images, deterministic, with the class where the docstring puts it."""

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supersub_jax.data import render


def test_specificity_0_draws_the_images_of_dataset_1_2_0_bit_for_bit():
  # SHA-256 of images drawn by dataset 1.2.0's renderer (supersub_jax/data/synthetic.py at 06ab04b) for these
  # labels and seeds: the demo's data and its committed network stay what they were.
  images = render.render(np.arange(38).repeat(3), (12, 6, 4, 3, 3, 2, 2, 2, 2, 2), 32, np.random.default_rng(7))
  assert hashlib.sha256(images.tobytes()).hexdigest() == (
      'ad82580ccda8a3c490e7b7dd366f89fb8f6c9e949ce17068b857fa482906e06f')
  images = render.render(np.arange(7), (3, 2, 2), 16, np.random.default_rng(1))
  assert hashlib.sha256(images.tobytes()).hexdigest() == (
      'daa4ad6e243d53bed14884fb16191e21c14ba1613aa6e9535d13f6873a2b3938')


@pytest.mark.parametrize('version,digests', [
    # SHA-256 of images drawn at specificity 10 and 1 by dataset 2.1.0's renderer (before 2.2.0's louder kinds) and
    # 2.2.0's (before 2.3.0's quieter shape) for these labels and seed: their studies' numbers stay reproducible with
    # ``salience=cues.SALIENCE_2_1_0`` or ``cues.SALIENCE_2_2_0``.
    ('2.1.0', ('5a9b86e3a5b5e2249f98144bec4c07b5cb4c9533278074329d2fed561362114b',
               '891d9a3bdc1bacf36c22a4ec6bfdc99e125b4c280d354c92eab82245c47ebc6f')),
    ('2.2.0', ('557442bc3c564d4ed5892d97b82dc62e8003fbb972b354e8483aaa9a1cdf3ca2',
               'e8e9021986f8d3e67d384158f097314e621232892f2e2adc6f5d19ef8a46c208')),
])
def test_an_earlier_salience_draws_that_datasets_images_bit_for_bit(version, digests):
  from supersub_jax.data import cues  # pylint: disable=g-import-not-at-top
  salience = {'2.1.0': cues.SALIENCE_2_1_0, '2.2.0': cues.SALIENCE_2_2_0}[version]
  sizes, labels = (12, 6, 4, 3, 3, 2, 2, 2, 2, 2), np.arange(38).repeat(2)
  for m, digest in zip((10, 1), digests):
    images = render.render(labels, sizes, 32, np.random.default_rng(3), m, salience)
    assert hashlib.sha256(images.tobytes()).hexdigest() == digest, m
    assert not np.array_equal(images, render.render(labels, sizes, 32, np.random.default_rng(3), m))


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), specificity=st.sampled_from([1, 5, 10]))
def test_render_with_cue_kinds_is_deterministic_and_differs_from_the_grating_only_images(seed, specificity):
  labels = np.arange(38)
  sizes = (12, 6, 4, 3, 3, 2, 2, 2, 2, 2)
  a = render.render(labels, sizes, 32, np.random.default_rng(seed), specificity)
  assert a.shape == (38, 32, 32, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, render.render(labels, sizes, 32, np.random.default_rng(seed), specificity))
  assert not np.array_equal(a, render.render(labels, sizes, 32, np.random.default_rng(seed)))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), size=st.sampled_from([8, 16, 24]),
       sizes=st.lists(st.integers(1, 12), min_size=1, max_size=10))
def test_render_is_deterministic(seed, size, sizes):
  labels = np.arange(sum(sizes))
  a = render.render(labels, sizes, size, np.random.default_rng(seed))
  b = render.render(labels, sizes, size, np.random.default_rng(seed))
  assert a.shape == (len(labels), size, size, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, render.render(labels, sizes, size,
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
  train = render.render(labels, sizes, 32, np.random.default_rng(0))
  test = render.render(labels, sizes, 32, np.random.default_rng(1))
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
  families = np.arange(len(render.SHAPE_FAMILIES))
  partners = render.partner(families)
  np.testing.assert_array_equal(partners % len(render.TEXTURES), families % len(render.TEXTURES))
  np.testing.assert_array_equal(render.partner(partners), families)  # a pairing: no family left alone
  assert (partners != families).all()
  xs, ys = np.meshgrid(np.arange(32, dtype=np.float32) + 0.5, np.arange(32, dtype=np.float32) + 0.5)
  pose = [np.full(10, v, np.float32) for v in (16.0, 16.0, 10.0, 0.1)]
  halfway = render._shape_mask(families, *pose, xs, ys, morph=np.full(10, 0.5, np.float32))
  from_partner = render._shape_mask(partners, *pose, xs, ys, morph=np.full(10, 0.5, np.float32))
  np.testing.assert_allclose(halfway, from_partner, atol=1e-5)  # the two superclasses' silhouettes coincide
  unmorphed = render._shape_mask(families, *pose, xs, ys)
  assert (np.abs(unmorphed - render._shape_mask(partners, *pose, xs, ys)).mean(axis=(1, 2)) > 0.05).all()


def test_invalid_sizes_and_knobs():
  with pytest.raises(ValueError, match='only 10 shape families'):
    render.validate_sizes((1,) * 11)
  with pytest.raises(ValueError, match='keep every size <= 12'):
    render.validate_sizes((13,))
  with pytest.raises(ValueError, match='at least one superclass'):
    render.validate_sizes(())


def test_subclasses_survive_a_horizontal_flip():
  # A flip maps a grating at angle a to -a; each image draws the sign of its angle, so subclasses are defined by
  # |angle| in [0, 90] and the flip augmentation of the training pipeline never changes an image's subclass.
  assert all(0.0 <= angle <= 90.0 for angle, _ in render.GRATINGS)
  assert len(set(render.GRATINGS)) == len(render.GRATINGS)


def test_sample_grid_puts_each_superclasss_first_subclasses_in_its_row_and_leaves_missing_cells_black():
  sizes = (3, 1)  # labels 0, 1, 2 in superclass 0; 3 in superclass 1
  source = [{'image': np.full((2, 2, 3), 10 * i + 1, np.uint8), 'label': i % 4} for i in range(12)]
  grid, labels = render.sample_grid(source, sizes, subclasses_per_row=2, examples_per_subclass=2)
  assert grid.shape == (2, 4, 2, 2, 3)
  assert labels == [[0, 0, 1, 1], [3, 3, -1, -1]]  # superclass 0's first two subclasses; superclass 1 has one
  assert [int(grid[0, c, 0, 0, 0]) for c in range(4)] == [1, 41, 11, 51]  # the first examples of each label, in order
  assert [int(grid[1, c, 0, 0, 0]) for c in range(4)] == [31, 71, 0, 0]


def test_the_hatch_gain_changes_the_hatch_superclasses_images_alone():
  # Superclasses 4 and 9 wear the hatch (TEXTURES[s % 5]); with the same generator, a different hatch_gain redraws
  # their images and leaves every other superclass's bit for bit.
  sizes = (12, 6, 4, 3, 3, 2, 2, 2, 2, 2)
  labels = np.arange(sum(sizes))
  superclass, _ = render.class_table(sizes)
  louder = render.render(labels, sizes, 32, np.random.default_rng(3), 1)
  plain = render.render(labels, sizes, 32, np.random.default_rng(3), 1, {'hatch_gain': 1.0})
  changed = (louder != plain).any(axis=(1, 2, 3))
  np.testing.assert_array_equal(changed, np.isin(superclass, (4, 9)))
