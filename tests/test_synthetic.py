"""Tests of the synthetic hierarchical dataset (supersub_jax.data.synthetic)."""

import collections
import os
import subprocess
import sys

import numpy as np
import pytest

from supersub_jax.data import synthetic

TINY = dict(image_size=16, train_per_class=4, validation_per_class=3, test_per_class=2, sizes=(3, 2, 2))


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


def test_invalid_knobs():
  with pytest.raises(ValueError, match='image_size=4'):
    synthetic.make_config(image_size=4)
  with pytest.raises(ValueError, match='validation_per_class=0'):
    synthetic.make_config(validation_per_class=0)
  with pytest.raises(ValueError, match="cue kind 'satellites' tells only 4"):
    synthetic.make_config(sizes=(1, 1, 5), specificity=3)


def test_the_validation_split_is_its_own_images_and_knobs_name_the_config(tiny):
  train, _, _ = read_all(tiny, 'train')
  validation, labels, _ = read_all(tiny, 'validation')
  test, _, _ = read_all(tiny, 'test')
  assert collections.Counter(labels.tolist()) == {c: TINY['validation_per_class'] for c in range(7)}
  assert not any((validation == image).all(axis=(1, 2, 3)).any() for image in np.concatenate([train, test]))
  assert tiny.builder_config.name == 'px16_train4_val3_test2_seed0_sizes3-2-2'
  assert synthetic.make_config(specificity=10).name.endswith('_m10')
  assert synthetic.knobs_of(tiny) == {**TINY, 'seed': 0, 'specificity': 0}


def test_cli_summary_and_grid(tmp_path):
  grid_path = tmp_path / 'grid.png'
  result = subprocess.run([sys.executable, '-m', 'tools.prepare', '--dataset=synthetic',
                           f'--data_dir={tmp_path}',
                           '--image_size=16', '--train_per_class=2', '--test_per_class=2', '--sizes=3,1',
                           f'--grid={grid_path}'], capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert 'superclass  0 disc' in out and 'split train: 8 examples' in out
  assert 'morphs toward bars' in out  # its partner, superclass 5, absent here: the shape still morphs
  assert 'build time' in out
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(grid_path) as image:
    assert image.size[0] > 100 and image.size[1] > 50


def test_processes_preparing_one_fresh_data_dir_at_once_all_succeed(tmp_path):
  # TFDS builds into an incomplete.* folder and renames it: two builders of one dataset raced, and one failed with
  # "Destination ... already exists". The second waits for the first (locks.building) and reuses its build.
  from processes import run_together  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get('PYTHONPATH', '')]))
  command = [sys.executable, '-m', 'tools.prepare', '--dataset=synthetic', f'--data_dir={tmp_path}',
             '--image_size=16', '--train_per_class=40', '--test_per_class=4', '--sizes=3,2']
  outs = run_together([command] * 3, env=env, timeout=300)
  for code, out in outs:
    assert code == 0, out[-3000:]
  builder = synthetic.build_synthetic(tmp_path, image_size=16, train_per_class=40, test_per_class=4, sizes=(3, 2))
  assert len(builder.as_data_source('train')) == 40 * 5
  assert not [n for r, ds, _ in os.walk(tmp_path) for n in ds if n.startswith('incomplete')]
