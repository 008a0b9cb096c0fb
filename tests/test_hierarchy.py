"""Tests of supersub_jax.hierarchy: the builders, label maps, errors (the WordNet tree: test_wordnet.py)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supersub_jax import hierarchy as H
from supersub_jax import wordnet

MIXED_10_EXPECTED = [  # (name, wnid, count); dog 116 and bird 52 are the paper's numbers
    ('dog', 'n02084071', 116), ('bird', 'n01503061', 52), ('insect', 'n02159955', 27),
    ('monkey', 'n02484322', 13), ('car', 'n02958343', 10), ('feline', 'n02120997', 8),
    ('truck', 'n04490091', 7), ('fruit', 'n13134947', 7), ('fungus', 'n12992868', 7),
    ('boat', 'n02858304', 6),
]


def _classes_of(h: H.Hierarchy) -> list[set[int]]:
  return [{sub.source_index for sub in s.subclasses} for s in h.superclasses]


def check_invariants(h: H.Hierarchy) -> None:
  """Every documented property of the derived arrays, checked against the tuples."""
  n, m = h.num_superclasses, h.num_subclasses
  assert n == len(h.superclasses) and m == sum(len(s.subclasses) for s in h.superclasses)
  for name in ('sizes', 'offsets', 'label_to_superclass', 'label_to_local', 'local_to_label',
               'source_to_label'):
    array = getattr(h, name)
    assert array.dtype == np.int32, name
    assert not array.flags.writeable, name
  assert h.local_valid.dtype == np.bool_ and not h.local_valid.flags.writeable
  assert h.sizes.tolist() == [len(s.subclasses) for s in h.superclasses]
  assert h.max_subclasses == max(h.sizes)
  assert h.local_to_label.shape == h.local_valid.shape == (n, h.max_subclasses)
  assert h.source_to_label.shape == (h.num_source_classes,)
  label = 0
  for k, s in enumerate(h.superclasses):
    assert h.offsets[k] == label
    assert [sub.source_index for sub in s.subclasses] == sorted(sub.source_index for sub in s.subclasses)
    for j, sub in enumerate(s.subclasses):
      assert sub.label == label
      assert h.label_to_superclass[label] == k and h.label_to_local[label] == j
      assert h.local_to_label[k, j] == label and h.local_valid[k, j]
      assert h.source_to_label[sub.source_index] == label
      label += 1
    assert (h.local_to_label[k, len(s.subclasses):] == -1).all()
    assert not h.local_valid[k, len(s.subclasses):].any()
  assert (h.source_to_label >= 0).sum() == m


# ----------------------------------------------------------------------------- builders


def test_mixed_10_matches_paper_counts():
  h = H.mixed_10()
  got = [(s.name, s.wnid, len(s.subclasses)) for s in h.superclasses]
  print('\n'.join(f'{name} {wnid} {count}' for name, wnid, count in got))
  assert got == MIXED_10_EXPECTED
  assert h.name == 'mixed_10' and h.num_source_classes == 1000 and h.num_subclasses == 253
  assert all(7 <= c <= 116 for *_, c in got[:-1])
  check_invariants(h)
  dogs = h.superclasses[0].subclasses
  assert dogs[0].name == 'Chihuahua' and dogs[0].source_index == 151 and dogs[0].wnid == 'n02085620'
  assert all(151 <= d.source_index <= 268 for d in dogs)


def test_cifar100_is_20_by_5_in_tfds_label_order():
  h = H.cifar100()
  check_invariants(h)
  assert h.num_source_classes == 100 and h.num_superclasses == 20 and h.num_subclasses == 100
  assert h.sizes.tolist() == [5] * 20
  assert [s.name for s in h.superclasses] == list(H.CIFAR100_COARSE_NAMES)
  assert sorted(h.source_to_label.tolist()) == list(range(100))
  fine_to_coarse = {sub.name: k for k, s in enumerate(h.superclasses) for sub in s.subclasses}
  for sub in (sub for s in h.superclasses for sub in s.subclasses):
    assert H.CIFAR100_FINE_NAMES[sub.source_index] == sub.name and sub.wnid == ''
  # A few memberships of the standard CIFAR-100 superclass table.
  assert H.CIFAR100_FINE_NAMES[4] == 'beaver' and fine_to_coarse['beaver'] == 0  # aquatic_mammals
  assert H.CIFAR100_FINE_NAMES[47] == 'maple_tree' and fine_to_coarse['maple_tree'] == 17  # trees
  assert fine_to_coarse['lawn_mower'] == H.CIFAR100_COARSE_NAMES.index('vehicles_2')
  assert fine_to_coarse['keyboard'] == H.CIFAR100_COARSE_NAMES.index('household_electrical_devices')
  assert [sub.source_index for sub in h.superclasses[0].subclasses] == [4, 30, 55, 72, 95]


def test_synthetic_default_and_names():
  h = H.synthetic()
  check_invariants(h)
  assert h.sizes.tolist() == list(H.DEFAULT_SYNTHETIC_SIZES)
  assert h.num_subclasses == h.num_source_classes == 38 and h.num_superclasses == 10
  assert h.superclasses[0].name == 'super00' and h.superclasses[9].name == 'super09'
  assert h.superclasses[1].subclasses[0].name == 'super01/sub00'
  assert all(sub.source_index == sub.label and sub.wnid == ''
             for s in h.superclasses for sub in s.subclasses)


@pytest.mark.parametrize('sizes', [(), (3, 0), (2, -1), (2.5,), (True, 2)])
def test_synthetic_rejects_bad_sizes(sizes):
  with pytest.raises(ValueError, match='synthetic sizes'):
    H.synthetic(sizes)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 6), min_size=1, max_size=7), data=st.data())
def test_label_maps_round_trip_synthetic(sizes, data):
  h = H.synthetic(sizes)
  check_invariants(h)
  labels = np.array(data.draw(st.lists(st.integers(0, h.num_subclasses - 1), min_size=1)))
  assert (h.local_to_label[h.label_to_superclass[labels], h.label_to_local[labels]] == labels).all()
  assert (h.source_to_label[labels] == labels).all()  # synthetic: source index == label


@pytest.fixture(scope='module', params=['mixed_10', 'cifar100', 'largest:12'])
def real_hierarchy(request):
  return H.get(request.param)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_label_maps_round_trip_real(real_hierarchy, data):
  h = real_hierarchy
  labels = np.array(data.draw(st.lists(st.integers(0, h.num_subclasses - 1), min_size=1, max_size=64)))
  k, j = h.label_to_superclass[labels], h.label_to_local[labels]
  assert (h.local_to_label[k, j] == labels).all() and h.local_valid[k, j].all()
  sources = np.array([h.superclasses[a].subclasses[b].source_index for a, b in zip(k, j)])
  assert (h.source_to_label[sources] == labels).all()
  source = data.draw(st.integers(0, h.num_source_classes - 1))
  label = h.source_to_label[source]
  in_hierarchy = any(source in c for c in _classes_of(h))
  assert (label >= 0) == in_hierarchy
  if in_hierarchy:
    sub = h.superclasses[h.label_to_superclass[label]].subclasses[h.label_to_local[label]]
    assert sub.source_index == source


def test_label_maps_work_inside_jit():
  h = H.mixed_10()
  labels = jnp.array([0, 115, 116, 252])
  fn = jax.jit(lambda l: (jnp.asarray(h.label_to_superclass)[l], jnp.asarray(h.label_to_local)[l]))
  sup, local = fn(labels)
  assert sup.tolist() == [0, 0, 1, 9] and local.tolist() == [0, 115, 0, 5]


@pytest.mark.parametrize('spec', ['mixed_10', 'cifar100', 'synthetic', 'largest:7'])
def test_to_dict_from_dict_round_trip(spec):
  h = H.get(spec)
  d = json.loads(json.dumps(h.to_dict()))
  h2 = H.Hierarchy.from_dict(d)
  assert h2.to_dict() == h.to_dict()
  assert h2.name == h.name and h2.superclasses == h.superclasses
  for name in ('sizes', 'offsets', 'label_to_superclass', 'label_to_local', 'local_to_label',
               'local_valid', 'source_to_label'):
    np.testing.assert_array_equal(getattr(h2, name), getattr(h, name))


def test_from_dict_rejects_malformed():
  with pytest.raises(ValueError, match='not a Hierarchy.to_dict'):
    H.Hierarchy.from_dict({'name': 'x', 'superclasses': []})


def _sub(label, source):
  return H.Subclass(label=label, source_index=source, wnid='', name=f'c{source}')


@pytest.mark.parametrize('superclasses, num_source, match', [
    ((), 4, 'no superclass'),
    ((H.Superclass('a', '', ()),), 4, 'has no subclass'),
    ((H.Superclass('a', '', (_sub(1, 0),)),), 4, 'labels must run'),
    ((H.Superclass('a', '', (_sub(0, 5),)),), 4, 'outside'),
    ((H.Superclass('a', '', (_sub(0, 2), _sub(1, 1))),), 4, 'increasing source-index order'),
    ((H.Superclass('a', '', (_sub(0, 1),)), H.Superclass('b', '', (_sub(1, 1),))), 4, 'disjoint'),
])
def test_hierarchy_validates_structure(superclasses, num_source, match):
  with pytest.raises(ValueError, match=match):
    H.Hierarchy(name='bad', superclasses=superclasses, num_source_classes=num_source)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize('spec', ['mixed_11', 'largest', 'largest:x', 'wnids:', 'synthetic:a', ''])
def test_get_rejects_bad_specs(spec):
  with pytest.raises(ValueError):
    H.get(spec)


# ----------------------------------------------------------------------------- largest


@pytest.mark.parametrize('k, ancestor', [(12, wordnet.ENTITY_WNID), (30, wordnet.ENTITY_WNID), (5, 'n02084071')])
def test_largest_superclasses_disjoint_and_sorted(k, ancestor):
  h = H.largest_superclasses(k, ancestor)
  check_invariants(h)
  assert h.num_superclasses == k
  sizes = h.sizes.tolist()
  assert sizes == sorted(sizes, reverse=True)
  classes = _classes_of(h)
  assert sum(map(len, classes)) == len(set().union(*classes))
  if ancestor != wordnet.ENTITY_WNID:
    below = _classes_of(H.imagenet_hierarchy([ancestor]))[0]
    assert set().union(*classes) <= below
    assert ancestor not in [s.wnid for s in h.superclasses]


def test_get_specs():
  assert H.get('wnids:' + ','.join(wordnet.MIXED_10_WNIDS)).superclasses == H.mixed_10().superclasses
  assert H.get('largest:5:n02084071').to_dict() == H.largest_superclasses(5, 'n02084071').to_dict()
  assert H.get('largest:4').name == 'largest_4'
  assert H.get('synthetic:3,1').sizes.tolist() == [3, 1]
  assert H.get('cifar100').name == 'cifar100'


def test_stated_sizes_are_bounded_before_the_label_maps_are_allocated():
  d = H.synthetic((2, 1)).to_dict()
  for count in (6 * 10**8, 10**12, 0):
    with pytest.raises(ValueError, match=f'num_source_classes={count}, outside'):
      H.Hierarchy.from_dict({**d, 'num_source_classes': count})
  wide = {**d, 'num_source_classes': 10**6, 'superclasses': [
      {'name': f's{k}', 'wnid': '', 'subclasses': [{'label': k, 'source_index': k, 'wnid': '', 'name': f'c{k}'}]}
      for k in range(4000)] + [{'name': 'big', 'wnid': '', 'subclasses': [
          {'label': 4000 + i, 'source_index': 4000 + i, 'wnid': '', 'name': f'b{i}'} for i in range(4000)]}]}
  with pytest.raises(ValueError, match='label grid of 16,004,000 entries'):
    H.Hierarchy.from_dict(wide)
