"""Tests of supersub_jax.hierarchy: the shipped WordNet tree, the builders, label maps, errors, CLI."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supersub_jax import hierarchy as H

REPO = Path(__file__).resolve().parents[1]
SHARED_IMAGENET = Path(__file__).resolve().parents[2] / 'shared/data/imagenet'
needs_devkit = pytest.mark.skipif(
    not (SHARED_IMAGENET / 'wordnet.is_a.txt').exists(),
    reason=f'ImageNet devkit hierarchy files not found at {SHARED_IMAGENET}')

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


def test_error_empty_list():
  with pytest.raises(ValueError, match='no superclass wnid given'):
    H.imagenet_hierarchy([])


def test_error_duplicate_wnids():
  with pytest.raises(ValueError, match=r"duplicate superclass wnids \['n01503061'\]"):
    H.imagenet_hierarchy(['n01503061', 'n02084071', 'n01503061'])


@pytest.mark.parametrize('wnid', ['n99999999', 'dog', 'n0208407', ''])
def test_error_unknown_wnid(wnid):
  with pytest.raises(ValueError, match='unknown WordNet id'):
    H.imagenet_hierarchy(['n02084071', wnid])


def test_error_no_imagenet_class_below():
  # 'unicorn' is a real synset (in words.txt) but has no ImageNet class below it.
  with pytest.raises(ValueError, match="'n10737964' has no ImageNet-1k class below"):
    H.imagenet_hierarchy(['n10737964'])
  # An ImageNet class is a leaf: nothing strictly below it.
  with pytest.raises(ValueError, match="ImageNet class 151 'Chihuahua' itself"):
    H.imagenet_hierarchy(['n02085620'])


def test_error_overlap_names_both_and_shared_classes():
  # hunting dog (n02087122) lies below dog (n02084071); Rhodesian ridgeback (159) is below both.
  with pytest.raises(ValueError) as info:
    H.imagenet_hierarchy(['n01503061', 'n02087122', 'n02084071'])
  message = str(info.value)
  assert 'n02084071 (dog) is an ancestor of n02087122 (hunting dog)' in message
  assert 'share 61 ImageNet classes' in message and '159 Rhodesian_ridgeback' in message


def test_error_string_instead_of_list():
  with pytest.raises(ValueError, match='wrap it in a list'):
    H.imagenet_hierarchy('n02084071')


@pytest.mark.parametrize('spec', ['mixed_11', 'largest', 'largest:x', 'wnids:', 'synthetic:a', ''])
def test_get_rejects_bad_specs(spec):
  with pytest.raises(ValueError):
    H.get(spec)


# ----------------------------------------------------------------------------- largest


@pytest.mark.parametrize('k, ancestor', [(12, H.ENTITY_WNID), (30, H.ENTITY_WNID), (5, 'n02084071')])
def test_largest_superclasses_disjoint_and_sorted(k, ancestor):
  h = H.largest_superclasses(k, ancestor)
  check_invariants(h)
  assert h.num_superclasses == k
  sizes = h.sizes.tolist()
  assert sizes == sorted(sizes, reverse=True)
  classes = _classes_of(h)
  assert sum(map(len, classes)) == len(set().union(*classes))
  if ancestor != H.ENTITY_WNID:
    below = _classes_of(H.imagenet_hierarchy([ancestor]))[0]
    assert set().union(*classes) <= below
    assert ancestor not in [s.wnid for s in h.superclasses]


def test_largest_superclasses_errors():
  with pytest.raises(ValueError, match='k must be a positive int'):
    H.largest_superclasses(0)
  with pytest.raises(ValueError, match='ask for k <='):
    H.largest_superclasses(50, 'n02120997')
  with pytest.raises(ValueError, match='unknown WordNet id'):
    H.largest_superclasses(3, 'n99999999')


def test_get_specs():
  assert H.get('wnids:' + ','.join(H.MIXED_10_WNIDS)).superclasses == H.mixed_10().superclasses
  assert H.get('largest:5:n02084071').to_dict() == H.largest_superclasses(5, 'n02084071').to_dict()
  assert H.get('largest:4').name == 'largest_4'
  assert H.get('synthetic:3,1').sizes.tolist() == [3, 1]
  assert H.get('cifar100').name == 'cifar100'


# ----------------------------------------------------------------------------- CLI


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'supersub_jax.hierarchy', *args], capture_output=True, text=True,
                        timeout=120)


def test_cli_mixed_10():
  out = _cli('mixed_10')
  assert out.returncode == 0, out.stderr
  header, columns, *lines = out.stdout.strip().split('\n')
  assert header == 'mixed_10: 10 superclasses, 253 subclasses'
  assert columns.split('\t') == ['index', 'superclass', 'wnid', 'subclasses', 'source class indices']
  assert len(lines) == 10
  fields = [line.split('\t') for line in lines]
  assert [(f[1], f[2], int(f[3])) for f in fields] == MIXED_10_EXPECTED
  assert [int(f[0]) for f in fields] == list(range(10))
  h = H.mixed_10()
  for f, s in zip(fields, h.superclasses):
    assert [int(x) for x in f[4].split(',')] == [sub.source_index for sub in s.subclasses]
  assert lines == h.summary_lines()


def test_cli_json():
  out = json.loads(_cli('mixed_10', '--json').stdout)
  assert out['name'] == 'mixed_10'
  assert [(s['name'], s['wnid'], s['count']) for s in out['superclasses']] == MIXED_10_EXPECTED
  assert out['superclasses'][1]['source_indices'][:3] == [7, 8, 9]


def test_cli_bad_spec_is_one_error_line():
  out = _cli('nonsense')
  assert out.returncode == 1
  assert out.stderr.startswith('error: unknown hierarchy spec') and out.stderr.count('\n') == 1


# ----------------------------------------------------------------------------- resources


def test_resources_are_small():
  files = list((REPO / 'supersub_jax' / 'resources').iterdir())
  assert {f.name for f in files} >= {'imagenet_tree.json', 'known_wnids.gz'}
  assert sum(f.stat().st_size for f in files) < 400_000


def _load_script():
  spec = importlib.util.spec_from_file_location(
      'make_hierarchy_resources', REPO / 'scripts' / 'make_hierarchy_resources.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@needs_devkit
def test_shipped_resources_equal_regenerated():
  regenerated = _load_script().build_resources(SHARED_IMAGENET)
  for name, data in regenerated.items():
    shipped = (REPO / 'supersub_jax' / 'resources' / name).read_bytes()
    assert shipped == data, f'{name} is stale: rerun scripts/make_hierarchy_resources.py'


class _RawRobustness:
  """robustness's ImageNetHierarchy rule computed straight from the devkit files (test oracle)."""

  def __init__(self, src: Path):
    self.parent, self.order = {}, {}
    for line in (src / 'wordnet.is_a.txt').read_text().split('\n'):
      if line.strip():
        p, c = line.split()
        self.order.setdefault(p, len(self.order))
        self.order.setdefault(c, len(self.order))
        self.parent[c] = p  # each node keeps the last parent listed
    raw = json.loads((src / 'imagenet_class_index.json').read_text())
    self.class_wnids = [raw[str(i)][0] for i in range(len(raw))]
    self.below_in: dict[str, set[int]] = {}  # ImageNet classes strictly below
    self.below_all: dict[str, set[str]] = {}  # tree nodes strictly below
    for i, w in enumerate(self.class_wnids):
      self.below_in.setdefault(w, set())
      self.below_all.setdefault(w, set())
      path = [w]
      while path[-1] in self.parent:
        a = self.parent[path[-1]]
        self.below_in.setdefault(a, set()).add(i)
        self.below_all.setdefault(a, set()).update(path)
        path.append(a)

  def get_superclasses(self, k: int, ancestor: str) -> list[str]:
    order = sorted(self.below_in,
                   key=lambda w: (-len(self.below_in[w]), -len(self.below_all[w]), self.order[w]))
    chosen: list[str] = []
    for w in order:
      if len(chosen) == k:
        break
      if w in self.below_all[ancestor]:
        chosen = [c for c in chosen if w not in self.below_all[c]] + [w]
    return chosen


@pytest.fixture(scope='module')
def raw_robustness():
  return _RawRobustness(SHARED_IMAGENET)


@needs_devkit
def test_subclass_sets_equal_raw_robustness_rule(raw_robustness):
  h = H.mixed_10()
  for s, classes in zip(h.superclasses, _classes_of(h)):
    assert classes == raw_robustness.below_in[s.wnid], s.name
    assert all(raw_robustness.class_wnids[sub.source_index] == sub.wnid for sub in s.subclasses)
  assert [len(raw_robustness.below_in[w]) for w in H.MIXED_10_WNIDS] == [c for *_, c in MIXED_10_EXPECTED]


@needs_devkit
# k=14 needs the first-appearance tie-break, k=25 and bird/4 the nodes-below tie-break.
@pytest.mark.parametrize('k, ancestor', [(10, H.ENTITY_WNID), (14, H.ENTITY_WNID),
                                         (25, H.ENTITY_WNID), (6, 'n02084071'), (4, 'n01503061')])
def test_largest_superclasses_equal_raw_robustness(raw_robustness, k, ancestor):
  expected = raw_robustness.get_superclasses(k, ancestor)
  h = H.largest_superclasses(k, ancestor)
  assert [s.wnid for s in h.superclasses] == expected
  assert _classes_of(h) == [raw_robustness.below_in[w] for w in expected]


@needs_devkit
def test_known_wnids_match_words_txt():
  words = [line.split('\t')[0] for line in (SHARED_IMAGENET / 'words.txt').read_text().split('\n')
           if line.strip()]
  tree = H._imagenet_tree()
  assert len(tree.known_wnids) == len(set(words))
  assert all(H._is_known_wnid(tree, w) for w in words[::997])
  assert all(re.fullmatch(r'n\d{8}', w) for w in tree.wnids)


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
