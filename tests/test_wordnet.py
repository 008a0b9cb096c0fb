"""Tests of supersub_jax.wordnet: the shipped last-parent WordNet tree, against robustness's rule computed from the
devkit files, and its errors."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from supersub_jax import wordnet

REPO = Path(__file__).resolve().parents[1]
SHARED_IMAGENET = Path(__file__).resolve().parents[2] / 'shared/data/imagenet'
needs_devkit = pytest.mark.skipif(
    not (SHARED_IMAGENET / 'wordnet.is_a.txt').exists(),
    reason=f'ImageNet devkit hierarchy files not found at {SHARED_IMAGENET}')


def test_synsets_are_the_classes_below_in_index_order_and_balanced_keeps_the_lowest():
  dog, bird = wordnet.synsets(['n02084071', 'n01503061'])
  assert (dog.name, len(dog.classes), bird.name, len(bird.classes)) == ('dog', 116, 'bird', 52)
  assert [c.index for c in dog.classes] == sorted(c.index for c in dog.classes)
  assert bird.classes[:3] == (wordnet.ImageNetClass(7, 'n01514668', 'cock'),
                              wordnet.ImageNetClass(8, 'n01514859', 'hen'),
                              wordnet.ImageNetClass(9, 'n01518878', 'ostrich'))
  balanced = wordnet.synsets(['n02084071', 'n01503061'], balanced=True)
  assert [s.classes for s in balanced] == [dog.classes[:52], bird.classes]


def test_error_empty_list():
  with pytest.raises(ValueError, match='no superclass wnid given'):
    wordnet.synsets([])


def test_error_duplicate_wnids():
  with pytest.raises(ValueError, match=r"duplicate superclass wnids \['n01503061'\]"):
    wordnet.synsets(['n01503061', 'n02084071', 'n01503061'])


@pytest.mark.parametrize('wnid', ['n99999999', 'dog', 'n0208407', ''])
def test_error_unknown_wnid(wnid):
  with pytest.raises(ValueError, match='unknown WordNet id'):
    wordnet.synsets(['n02084071', wnid])


def test_error_no_imagenet_class_below():
  # 'unicorn' is a real synset (in words.txt) but has no ImageNet class below it.
  with pytest.raises(ValueError, match="'n10737964' has no ImageNet-1k class below"):
    wordnet.synsets(['n10737964'])
  # An ImageNet class is a leaf: nothing strictly below it.
  with pytest.raises(ValueError, match="ImageNet class 151 'Chihuahua' itself"):
    wordnet.synsets(['n02085620'])


def test_error_overlap_names_both_and_shared_classes():
  # hunting dog (n02087122) lies below dog (n02084071); Rhodesian ridgeback (159) is below both.
  with pytest.raises(ValueError) as info:
    wordnet.synsets(['n01503061', 'n02087122', 'n02084071'])
  message = str(info.value)
  assert 'n02084071 (dog) is an ancestor of n02087122 (hunting dog)' in message
  assert 'share 61 ImageNet classes' in message and '159 Rhodesian_ridgeback' in message


def test_error_string_instead_of_list():
  with pytest.raises(ValueError, match='wrap it in a list'):
    wordnet.synsets('n02084071')


def test_largest_wnids_errors():
  with pytest.raises(ValueError, match='k must be a positive int'):
    wordnet.largest_wnids(0)
  with pytest.raises(ValueError, match='ask for k <='):
    wordnet.largest_wnids(50, 'n02120997')
  with pytest.raises(ValueError, match='unknown WordNet id'):
    wordnet.largest_wnids(3, 'n99999999')



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
  for s in wordnet.synsets(wordnet.MIXED_10_WNIDS):
    assert {c.index for c in s.classes} == raw_robustness.below_in[s.wnid], s.name
    assert all(raw_robustness.class_wnids[c.index] == c.wnid for c in s.classes)
  assert [len(raw_robustness.below_in[w]) for w in wordnet.MIXED_10_WNIDS] == [116, 52, 27, 13, 10, 8, 7, 7, 7, 6]


@needs_devkit
# k=14 needs the first-appearance tie-break, k=25 and bird/4 the nodes-below tie-break.
@pytest.mark.parametrize('k, ancestor', [(10, wordnet.ENTITY_WNID), (14, wordnet.ENTITY_WNID),
                                         (25, wordnet.ENTITY_WNID), (6, 'n02084071'), (4, 'n01503061')])
def test_largest_wnids_equal_raw_robustness(raw_robustness, k, ancestor):
  expected = raw_robustness.get_superclasses(k, ancestor)
  assert wordnet.largest_wnids(k, ancestor) == expected
  assert [{c.index for c in s.classes} for s in wordnet.synsets(expected)] == [raw_robustness.below_in[w]
                                                                               for w in expected]


@needs_devkit
def test_known_wnids_match_words_txt():
  words = [line.split('\t')[0] for line in (SHARED_IMAGENET / 'words.txt').read_text().split('\n')
           if line.strip()]
  tree = wordnet._imagenet_tree()
  assert len(tree.known_wnids) == len(set(words))
  assert all(wordnet._is_known_wnid(tree, w) for w in words[::997])
  assert all(re.fullmatch(r'n\d{8}', w) for w in tree.wnids)
