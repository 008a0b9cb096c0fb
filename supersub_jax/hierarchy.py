"""Superclass/subclass hierarchies: which source classes each superclass's specialist covers.

A `Hierarchy` is an ordered tuple of superclasses, each an ordered tuple of subclasses. Every
subclass gets a *global label* 0..num_subclasses-1 in superclass-major order (superclass 0's
subclasses first; within a superclass, in source-index order), and keeps its `source_index`, the
class index in the source dataset (ImageNet-1k index, CIFAR-100 fine label, synthetic class id).
Derived numpy int32 label maps convert between the three views (global label, (superclass,
local index), source index); they are read-only and can be indexed inside jitted code via
`jnp.asarray(h.label_to_superclass)[labels]`.

ImageNet hierarchies follow "Superclassing ImageNet" as implemented by MadryLab's robustness
library (`robustness.tools.imagenet_helpers.ImageNetHierarchy`): the WordNet is-a graph of the
ImageNet devkit is turned into a tree by keeping, for every synset, only the *last* parent listed
for it in `wordnet.is_a.txt`; a superclass's subclasses are the ImageNet-1k classes strictly below
its wnid in that tree. The package ships that tree (see `scripts/make_hierarchy_resources.py`), so
no devkit files are needed at run time.

Builders: `mixed_10`, `imagenet_hierarchy`, `largest_superclasses`, `cifar100`, `synthetic`, and
`get(spec)` for a string spec. CLI: `python -m supersub_jax.hierarchy <spec> [--json]`.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.resources
import json
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    'Subclass', 'Superclass', 'Hierarchy', 'DEFAULT_SYNTHETIC_SIZES', 'MIXED_10_WNIDS',
    'ENTITY_WNID', 'CIFAR100_COARSE_NAMES', 'CIFAR100_FINE_NAMES', 'CIFAR100_COARSE_TO_FINE',
    'mixed_10', 'imagenet_hierarchy', 'largest_superclasses', 'cifar100', 'synthetic', 'get',
    'main',
]

# Scaled-down copy of mixed_10's 116/52/27/13/10/8/7/7/7/6 imbalance: 38 subclasses.
DEFAULT_SYNTHETIC_SIZES: tuple[int, ...] = (12, 6, 4, 3, 3, 2, 2, 2, 2, 2)

# robustness's `common_superclass_wnid('mixed_10')`, in its order.
MIXED_10_WNIDS: tuple[str, ...] = (
    'n02084071',  # dog (116 ImageNet classes)
    'n01503061',  # bird (52)
    'n02159955',  # insect (27)
    'n02484322',  # monkey (13)
    'n02958343',  # car (10)
    'n02120997',  # feline (8)
    'n04490091',  # truck (7)
    'n13134947',  # fruit (7)
    'n12992868',  # fungus (7)
    'n02858304',  # boat (6)
)

ENTITY_WNID = 'n00001740'  # root of the WordNet noun tree

_WNID_RE = re.compile(r'n\d{8}')
# Sane limits, checked before the label maps are allocated: a hierarchy read from a file (a bundle) states its sizes
# itself. ImageNet-21k has 21,841 classes; the label grid (superclasses x the largest superclass) of mixed_10 is
# 10 x 116, and a specialist's head is as wide as the largest superclass.
MAX_SOURCE_CLASSES = 10**6
MAX_LABEL_GRID = 10**7
_TREE_FILE = 'imagenet_tree.json'
_KNOWN_WNIDS_FILE = 'known_wnids.gz'
_TREE_FORMAT_VERSION = 1
_NUM_IMAGENET_CLASSES = 1000


# ----------------------------------------------------------------------------- data model


@dataclasses.dataclass(frozen=True)
class Subclass:
  label: int  # global subclass label 0..num_subclasses-1 (superclass-major order)
  source_index: int  # class index in the source dataset
  wnid: str  # WordNet id, '' when none
  name: str


@dataclasses.dataclass(frozen=True)
class Superclass:
  name: str
  wnid: str  # '' when none
  subclasses: tuple[Subclass, ...]


def _frozen_int32(values) -> np.ndarray:
  array = np.array(values, dtype=np.int32)
  array.flags.writeable = False
  return array


@dataclasses.dataclass(frozen=True, eq=False)
class Hierarchy:
  """An ordered set of disjoint superclasses over the classes of one source dataset.

  Derived attributes (set in `__post_init__`; arrays are read-only numpy):
    num_superclasses: int N.   num_subclasses: int M.   max_subclasses: int S = max(sizes).
    sizes: int32[N], subclasses per superclass.
    offsets: int32[N], global label of superclass k's first subclass (labels are
      superclass-major, each superclass's subclasses in source-index order).
    label_to_superclass: int32[M].   label_to_local: int32[M], index within its superclass.
    local_to_label: int32[N, S], -1 where local index >= sizes[k].
    local_valid: bool[N, S], local_to_label >= 0.
    source_to_label: int32[num_source_classes], -1 for source classes outside the hierarchy.

  Equality is identity (eq=False, since numpy arrays have no boolean ==) so instances can be
  hashed as static jit arguments; compare `to_dict()` outputs for structural equality.
  """

  name: str
  superclasses: tuple[Superclass, ...]
  num_source_classes: int

  def __post_init__(self):
    superclasses = tuple(
        Superclass(s.name, s.wnid, tuple(s.subclasses)) for s in self.superclasses)
    object.__setattr__(self, 'superclasses', superclasses)
    if not superclasses:
      raise ValueError(f'hierarchy {self.name!r} has no superclass; give at least one.')
    if not 1 <= self.num_source_classes <= MAX_SOURCE_CLASSES:
      raise ValueError(f'hierarchy {self.name!r} has num_source_classes={self.num_source_classes}, outside [1, '
                       f'{MAX_SOURCE_CLASSES:,}] (the label map has one entry per source class).')
    grid = len(superclasses) * max(len(s.subclasses) for s in superclasses)
    if grid > MAX_LABEL_GRID:
      raise ValueError(f'hierarchy {self.name!r} has {len(superclasses)} superclasses of up to '
                       f'{max(len(s.subclasses) for s in superclasses)} subclasses: its label grid of {grid:,} '
                       f'entries is over {MAX_LABEL_GRID:,}.')
    label = 0
    owner: dict[int, str] = {}
    for k, sup in enumerate(superclasses):
      if not sup.subclasses:
        raise ValueError(
            f'superclass {k} ({sup.name!r}) of hierarchy {self.name!r} has no subclass; '
            'drop it or give it at least one subclass.')
      previous = -1
      for sub in sup.subclasses:
        if sub.label != label:
          raise ValueError(
              f'subclass {sub.name!r} of superclass {sup.name!r} has label {sub.label}, '
              f'expected {label}: labels must run 0..M-1 in superclass-major order.')
        if not 0 <= sub.source_index < self.num_source_classes:
          raise ValueError(
              f'subclass {sub.name!r} has source_index {sub.source_index}, outside '
              f'[0, num_source_classes={self.num_source_classes}); fix the index or the count.')
        if sub.source_index in owner:
          raise ValueError(
              f'source class {sub.source_index} ({sub.name!r}) is in both superclass '
              f'{owner[sub.source_index]!r} and {sup.name!r}; superclasses must be disjoint.')
        if sub.source_index <= previous:
          raise ValueError(
              f'subclasses of superclass {sup.name!r} are not in increasing source-index order '
              f'({previous} then {sub.source_index}); sort them by source_index.')
        owner[sub.source_index] = sup.name
        previous = sub.source_index
        label += 1

    sizes = [len(s.subclasses) for s in superclasses]
    n, m, s_max = len(sizes), label, max(sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    label_to_superclass = np.repeat(np.arange(n), sizes)
    label_to_local = np.arange(m) - offsets[label_to_superclass]
    local_to_label = np.full((n, s_max), -1, dtype=np.int64)
    local_to_label[label_to_superclass, label_to_local] = np.arange(m)
    source_to_label = np.full((self.num_source_classes,), -1, dtype=np.int64)
    for sup in superclasses:
      for sub in sup.subclasses:
        source_to_label[sub.source_index] = sub.label
    local_valid = local_to_label >= 0
    local_valid.flags.writeable = False

    derived = dict(
        num_superclasses=n, num_subclasses=m, max_subclasses=s_max,
        sizes=_frozen_int32(sizes), offsets=_frozen_int32(offsets),
        label_to_superclass=_frozen_int32(label_to_superclass),
        label_to_local=_frozen_int32(label_to_local),
        local_to_label=_frozen_int32(local_to_label), local_valid=local_valid,
        source_to_label=_frozen_int32(source_to_label))
    for key, value in derived.items():
      object.__setattr__(self, key, value)

  def to_dict(self) -> dict[str, Any]:
    """JSON-serialisable form; `Hierarchy.from_dict(h.to_dict())` rebuilds an equal hierarchy."""
    return {
        'name': self.name,
        'num_source_classes': self.num_source_classes,
        'superclasses': [
            {'name': s.name, 'wnid': s.wnid,
             'subclasses': [dataclasses.asdict(sub) for sub in s.subclasses]}
            for s in self.superclasses],
    }

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Hierarchy:
    """Inverse of `to_dict` (also accepts the dict after a JSON round trip)."""
    try:
      superclasses = tuple(
          Superclass(
              name=str(s['name']), wnid=str(s['wnid']),
              subclasses=tuple(
                  Subclass(label=int(sub['label']), source_index=int(sub['source_index']),
                           wnid=str(sub['wnid']), name=str(sub['name']))
                  for sub in s['subclasses']))
          for s in d['superclasses'])
      return cls(name=str(d['name']), superclasses=superclasses,
                 num_source_classes=int(d['num_source_classes']))
    except (KeyError, TypeError, OverflowError) as e:
      raise ValueError(
          f'not a Hierarchy.to_dict() dict (missing or malformed field: {e!r}); '
          'expected keys name, num_source_classes, superclasses[name, wnid, '
          'subclasses[label, source_index, wnid, name]].') from e

  def summary_lines(self) -> list[str]:
    """One tab-separated line per superclass: index, name, wnid ('-' if none), count, source indices
    (``SUMMARY_COLUMNS``)."""
    return [
        '\t'.join([str(k), s.name, s.wnid or '-', str(len(s.subclasses)),
                   ','.join(str(sub.source_index) for sub in s.subclasses)])
        for k, s in enumerate(self.superclasses)]

  def __repr__(self) -> str:
    return (f'Hierarchy(name={self.name!r}, num_superclasses={self.num_superclasses}, '
            f'num_subclasses={self.num_subclasses}, num_source_classes={self.num_source_classes})')


# ----------------------------------------------------------------------------- ImageNet tree


class _ImageNetTree(NamedTuple):
  """The shipped last-parent WordNet tree, restricted to ImageNet classes and their ancestors.

  Nodes are in order of first appearance in `wordnet.is_a.txt` (robustness's tie-break order).
  """

  wnids: tuple[str, ...]  # [num_nodes]
  names: tuple[str, ...]  # [num_nodes], words.txt synonyms, comma-separated
  parent: np.ndarray  # int32[num_nodes], -1 at the root
  index: dict[str, int]  # wnid -> node
  class_node: np.ndarray  # int32[1000], node of ImageNet class i
  class_names: tuple[str, ...]  # [1000], imagenet_class_index.json names
  classes_below: tuple[tuple[int, ...], ...]  # [num_nodes], ImageNet indices strictly below, sorted
  num_nodes_below: np.ndarray  # int32[num_nodes], tree nodes strictly below
  known_wnids: np.ndarray  # int64[K], sorted numeric parts of all wnids of the devkit


def _read_resource(name: str) -> bytes:
  path = importlib.resources.files('supersub_jax') / 'resources' / name
  try:
    return path.read_bytes()
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f'package data supersub_jax/resources/{name} is missing; reinstall supersub_jax or '
        'regenerate it with `python scripts/make_hierarchy_resources.py --src <devkit dir>`.'
    ) from e


@functools.cache  # immutable package data: parse once per process
def _imagenet_tree() -> _ImageNetTree:
  raw = json.loads(_read_resource(_TREE_FILE).decode('utf-8'))
  if raw.get('format_version') != _TREE_FORMAT_VERSION:
    raise ValueError(
        f'{_TREE_FILE} has format_version {raw.get("format_version")}, this code reads '
        f'{_TREE_FORMAT_VERSION}; regenerate it with scripts/make_hierarchy_resources.py.')
  wnids = tuple(row[0] for row in raw['nodes'])
  names = tuple(row[1] for row in raw['nodes'])
  parent = np.array([row[2] for row in raw['nodes']], dtype=np.int32)
  class_node = np.array([row[0] for row in raw['classes']], dtype=np.int32)
  class_names = tuple(row[1] for row in raw['classes'])

  below: list[list[int]] = [[] for _ in wnids]
  num_nodes_below = np.zeros(len(wnids), dtype=np.int32)
  for node in range(len(wnids)):
    ancestor = parent[node]
    while ancestor >= 0:
      num_nodes_below[ancestor] += 1
      ancestor = parent[ancestor]
  for class_index, node in enumerate(class_node):
    ancestor = parent[node]
    while ancestor >= 0:
      below[ancestor].append(class_index)  # class indices ascend, so lists stay sorted
      ancestor = parent[ancestor]

  deltas = np.frombuffer(gzip.decompress(_read_resource(_KNOWN_WNIDS_FILE)), dtype='<u4')
  known = np.cumsum(deltas.astype(np.int64))
  for array in (parent, class_node, num_nodes_below, known):
    array.flags.writeable = False
  return _ImageNetTree(
      wnids=wnids, names=names, parent=parent, index={w: i for i, w in enumerate(wnids)},
      class_node=class_node, class_names=class_names,
      classes_below=tuple(tuple(b) for b in below), num_nodes_below=num_nodes_below,
      known_wnids=known)


def _short_name(words_name: str) -> str:
  """First synonym of a words.txt entry: 'dog, domestic dog, Canis familiaris' -> 'dog'."""
  return words_name.split(',')[0].strip()


def _is_known_wnid(tree: _ImageNetTree, wnid: str) -> bool:
  if not _WNID_RE.fullmatch(wnid):
    return False
  number = int(wnid[1:])
  pos = int(np.searchsorted(tree.known_wnids, number))
  return pos < len(tree.known_wnids) and int(tree.known_wnids[pos]) == number


def _node_with_classes(tree: _ImageNetTree, wnid: str, role: str) -> int:
  """Tree node of `wnid`, or a ValueError saying why it cannot be a superclass/ancestor."""
  if not isinstance(wnid, str) or not _is_known_wnid(tree, wnid):
    raise ValueError(
        f'unknown WordNet id {wnid!r} for {role}: it is in neither words.txt nor '
        'wordnet.is_a.txt of the ImageNet devkit; check it for typos (wnids look like '
        "'n02084071', an 'n' and 8 digits).")
  node = tree.index.get(wnid)
  if node is None or not tree.classes_below[node]:
    what = ''
    if node is not None:  # in the tree but with nothing below: an ImageNet class itself
      class_index = int(np.flatnonzero(tree.class_node == node)[0])
      what = f' (it is ImageNet class {class_index} {tree.class_names[class_index]!r} itself)'
    raise ValueError(
        f'WordNet id {wnid!r}{what} has no ImageNet-1k class below it in the last-parent '
        f'WordNet tree, so it cannot be used as {role}; pick a more general synset, e.g. '
        'one of its ancestors.')
  return node


def _is_ancestor(tree: _ImageNetTree, ancestor: int, node: int) -> bool:
  """True if `ancestor` is strictly above `node`."""
  node = tree.parent[node]
  while node >= 0:
    if node == ancestor:
      return True
    node = tree.parent[node]
  return False


def _describe(tree: _ImageNetTree, node: int) -> str:
  return f'{tree.wnids[node]} ({_short_name(tree.names[node])})'


def _imagenet_from_nodes(tree: _ImageNetTree, nodes: Sequence[int], name: str,
                         balanced: bool) -> Hierarchy:
  member_sets = [tree.classes_below[n] for n in nodes]
  for i in range(len(nodes)):
    for j in range(i + 1, len(nodes)):
      shared = sorted(set(member_sets[i]) & set(member_sets[j]))
      if not shared:
        continue
      a, b = nodes[i], nodes[j]
      if _is_ancestor(tree, a, b) or _is_ancestor(tree, b, a):
        top, low = (a, b) if _is_ancestor(tree, a, b) else (b, a)
        relation = f'{_describe(tree, top)} is an ancestor of {_describe(tree, low)}'
      else:  # impossible in a tree, but kept so the check never silently passes
        relation = f'{_describe(tree, a)} and {_describe(tree, b)} overlap'
      listed = ', '.join(f'{c} {tree.class_names[c]}' for c in shared[:10])
      more = f' and {len(shared) - 10} more' if len(shared) > 10 else ''
      raise ValueError(
          f'superclasses overlap: {relation}; they share {len(shared)} ImageNet classes '
          f'({listed}{more}). Superclasses must be disjoint: drop one of the two, or replace '
          'the ancestor by its other children.')
  if balanced:
    # robustness's balanced=True: every superclass keeps its ndesc_min lowest class indices.
    smallest = min(len(m) for m in member_sets)
    member_sets = [m[:smallest] for m in member_sets]

  superclasses, label = [], 0
  for node, members in zip(nodes, member_sets):
    subclasses = []
    for c in members:
      subclasses.append(Subclass(label=label, source_index=c,
                                 wnid=tree.wnids[tree.class_node[c]], name=tree.class_names[c]))
      label += 1
    superclasses.append(Superclass(name=_short_name(tree.names[node]), wnid=tree.wnids[node],
                                   subclasses=tuple(subclasses)))
  return Hierarchy(name=name, superclasses=tuple(superclasses),
                   num_source_classes=_NUM_IMAGENET_CLASSES)


# ----------------------------------------------------------------------------- builders


def imagenet_hierarchy(wnids: Sequence[str], name: str = 'custom', *,
                       balanced: bool = False) -> Hierarchy:
  """ImageNet-1k hierarchy with one superclass per WordNet id, in the given order.

  Superclass k's subclasses are the ImageNet-1k classes strictly below `wnids[k]` in the
  last-parent WordNet tree, in ImageNet index order; its name is the first words.txt synonym.
  With `balanced=True`, as robustness's `get_subclasses(..., balanced=True)`, every superclass
  keeps only its `min(sizes)` lowest-index classes.

  Raises ValueError for: no wnid, a duplicate wnid, an unknown wnid, a wnid with no ImageNet
  class below it, or two superclasses that overlap (one is an ancestor of the other).
  """
  if isinstance(wnids, str):
    raise ValueError(f'wnids must be a sequence of WordNet ids, got the string {wnids!r}; '
                     f'wrap it in a list: [{wnids!r}].')
  wnids = list(wnids)
  if not wnids:
    raise ValueError("no superclass wnid given; pass at least one, e.g. ['n02084071'] (dog).")
  seen, duplicates = set(), []
  for w in wnids:
    if w in seen and w not in duplicates:
      duplicates.append(w)
    seen.add(w)
  if duplicates:
    raise ValueError(f'duplicate superclass wnids {duplicates}; list each superclass once.')
  tree = _imagenet_tree()
  nodes = [_node_with_classes(tree, w, 'a superclass') for w in wnids]
  return _imagenet_from_nodes(tree, nodes, name, balanced)


def mixed_10() -> Hierarchy:
  """robustness's 'mixed_10' (the paper's ImageNet setting): dog 116, bird 52, insect 27,
  monkey 13, car 10, feline 8, truck 7, fruit 7, fungus 7, boat 6 classes (253 in all)."""
  return imagenet_hierarchy(MIXED_10_WNIDS, name='mixed_10')


def largest_superclasses(k: int, ancestor_wnid: str = ENTITY_WNID, *,
                         balanced: bool = False) -> Hierarchy:
  """The k largest disjoint superclasses strictly below `ancestor_wnid`.

  Follows robustness's `ImageNetHierarchy.get_superclasses(k, ancestor_wnid, balanced)`:
    1. Candidates: tree nodes strictly below `ancestor_wnid` with at least one ImageNet class
       strictly below them (robustness would also consider the ImageNet classes themselves,
       which have no class below and would give empty superclasses; they are skipped here).
    2. Order: by number of ImageNet classes below (descending), then number of tree nodes
       below (descending), then first appearance in wordnet.is_a.txt -- robustness's order.
       An ancestor thus always precedes its descendants.
    3. Greedy: walk the candidates until k are selected; each candidate is appended and any
       selected ancestor of it is removed (so a superclass is refined into its children).
  The result is disjoint and in selection order, i.e. sorted by size, largest first.
  `balanced` truncates every superclass to the smallest one's size (see `imagenet_hierarchy`).
  Raises ValueError if fewer than k disjoint superclasses exist below `ancestor_wnid`.
  """
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f'k must be a positive int (number of superclasses), got {k!r}.')
  tree = _imagenet_tree()
  root = _node_with_classes(tree, ancestor_wnid, 'the common ancestor')
  candidates = [n for n in range(len(tree.wnids))
                if tree.classes_below[n] and _is_ancestor(tree, root, n)]
  candidates.sort(key=lambda n: (-len(tree.classes_below[n]), -int(tree.num_nodes_below[n]), n))
  selected: list[int] = []
  for node in candidates:
    if len(selected) == k:
      break
    selected = [s for s in selected if not _is_ancestor(tree, s, node)] + [node]
  if len(selected) < k:
    raise ValueError(
        f'only {len(selected)} disjoint superclasses with ImageNet classes exist below '
        f'{_describe(tree, root)}; ask for k <= {len(selected)} or pick a more general ancestor.')
  name = f'largest_{k}' if ancestor_wnid == ENTITY_WNID else f'largest_{k}_{ancestor_wnid}'
  if balanced:
    name += '_balanced'
  return _imagenet_from_nodes(tree, selected, name, balanced)


# CIFAR-100 label names in the order of the dataset's coarse/fine_label_names.txt, which is
# what tfds `cifar100` uses for `coarse_label` and `label` (alphabetical).
CIFAR100_COARSE_NAMES: tuple[str, ...] = (
    'aquatic_mammals', 'fish', 'flowers', 'food_containers', 'fruit_and_vegetables',
    'household_electrical_devices', 'household_furniture', 'insects', 'large_carnivores',
    'large_man-made_outdoor_things', 'large_natural_outdoor_scenes',
    'large_omnivores_and_herbivores', 'medium_mammals', 'non-insect_invertebrates', 'people',
    'reptiles', 'small_mammals', 'trees', 'vehicles_1', 'vehicles_2',
)
CIFAR100_FINE_NAMES: tuple[str, ...] = (
    'apple', 'aquarium_fish', 'baby', 'bear', 'beaver', 'bed', 'bee', 'beetle', 'bicycle',
    'bottle', 'bowl', 'boy', 'bridge', 'bus', 'butterfly', 'camel', 'can', 'castle',
    'caterpillar', 'cattle', 'chair', 'chimpanzee', 'clock', 'cloud', 'cockroach', 'couch',
    'crab', 'crocodile', 'cup', 'dinosaur', 'dolphin', 'elephant', 'flatfish', 'forest', 'fox',
    'girl', 'hamster', 'house', 'kangaroo', 'keyboard', 'lamp', 'lawn_mower', 'leopard', 'lion',
    'lizard', 'lobster', 'man', 'maple_tree', 'motorcycle', 'mountain', 'mouse', 'mushroom',
    'oak_tree', 'orange', 'orchid', 'otter', 'palm_tree', 'pear', 'pickup_truck', 'pine_tree',
    'plain', 'plate', 'poppy', 'porcupine', 'possum', 'rabbit', 'raccoon', 'ray', 'road',
    'rocket', 'rose', 'sea', 'seal', 'shark', 'shrew', 'skunk', 'skyscraper', 'snail', 'snake',
    'spider', 'squirrel', 'streetcar', 'sunflower', 'sweet_pepper', 'table', 'tank', 'telephone',
    'television', 'tiger', 'tractor', 'train', 'trout', 'tulip', 'turtle', 'wardrobe', 'whale',
    'willow_tree', 'wolf', 'woman', 'worm',
)
# The standard CIFAR-100 superclass table (Krizhevsky 2009), coarse name -> its 5 fine names.
CIFAR100_COARSE_TO_FINE: dict[str, tuple[str, ...]] = {
    'aquatic_mammals': ('beaver', 'dolphin', 'otter', 'seal', 'whale'),
    'fish': ('aquarium_fish', 'flatfish', 'ray', 'shark', 'trout'),
    'flowers': ('orchid', 'poppy', 'rose', 'sunflower', 'tulip'),
    'food_containers': ('bottle', 'bowl', 'can', 'cup', 'plate'),
    'fruit_and_vegetables': ('apple', 'mushroom', 'orange', 'pear', 'sweet_pepper'),
    'household_electrical_devices': ('clock', 'keyboard', 'lamp', 'telephone', 'television'),
    'household_furniture': ('bed', 'chair', 'couch', 'table', 'wardrobe'),
    'insects': ('bee', 'beetle', 'butterfly', 'caterpillar', 'cockroach'),
    'large_carnivores': ('bear', 'leopard', 'lion', 'tiger', 'wolf'),
    'large_man-made_outdoor_things': ('bridge', 'castle', 'house', 'road', 'skyscraper'),
    'large_natural_outdoor_scenes': ('cloud', 'forest', 'mountain', 'plain', 'sea'),
    'large_omnivores_and_herbivores': ('camel', 'cattle', 'chimpanzee', 'elephant', 'kangaroo'),
    'medium_mammals': ('fox', 'porcupine', 'possum', 'raccoon', 'skunk'),
    'non-insect_invertebrates': ('crab', 'lobster', 'snail', 'spider', 'worm'),
    'people': ('baby', 'boy', 'girl', 'man', 'woman'),
    'reptiles': ('crocodile', 'dinosaur', 'lizard', 'snake', 'turtle'),
    'small_mammals': ('hamster', 'mouse', 'rabbit', 'shrew', 'squirrel'),
    'trees': ('maple_tree', 'oak_tree', 'palm_tree', 'pine_tree', 'willow_tree'),
    'vehicles_1': ('bicycle', 'bus', 'motorcycle', 'pickup_truck', 'train'),
    'vehicles_2': ('lawn_mower', 'rocket', 'streetcar', 'tank', 'tractor'),
}


def cifar100() -> Hierarchy:
  """CIFAR-100's 20 coarse classes x 5 fine classes.

  Superclass k is tfds `coarse_label` k; a subclass's source_index is its tfds `label` (fine
  label). Hence `h.superclasses[k].name == CIFAR100_COARSE_NAMES[k]`.
  """
  fine_index = {n: i for i, n in enumerate(CIFAR100_FINE_NAMES)}
  superclasses, label = [], 0
  for coarse in CIFAR100_COARSE_NAMES:
    subclasses = []
    for f in sorted(CIFAR100_COARSE_TO_FINE[coarse], key=fine_index.__getitem__):
      subclasses.append(Subclass(label=label, source_index=fine_index[f], wnid='', name=f))
      label += 1
    superclasses.append(Superclass(name=coarse, wnid='', subclasses=tuple(subclasses)))
  return Hierarchy(name='cifar100', superclasses=tuple(superclasses),
                   num_source_classes=len(CIFAR100_FINE_NAMES))


def synthetic(sizes: Sequence[int] = DEFAULT_SYNTHETIC_SIZES) -> Hierarchy:
  """Synthetic hierarchy: superclass s has sizes[s] subclasses; source_index == global label.

  Names are 'super00', 'super01', ... and 'super00/sub00', ... (zero-padded to >= 2 digits).
  """
  sizes = tuple(sizes)
  if not sizes:
    raise ValueError('synthetic sizes is empty; give one positive subclass count per '
                     f'superclass, e.g. {DEFAULT_SYNTHETIC_SIZES}.')
  bad = [s for s in sizes
         if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1]
  if bad:
    raise ValueError(f'synthetic sizes must be positive ints, got {bad} in {sizes}.')
  width = max(2, len(str(len(sizes) - 1)))
  sub_width = max(2, len(str(max(sizes) - 1)))
  superclasses, label = [], 0
  for s, size in enumerate(sizes):
    super_name = f'super{s:0{width}d}'
    subclasses = []
    for j in range(int(size)):
      subclasses.append(Subclass(label=label, source_index=label, wnid='',
                                 name=f'{super_name}/sub{j:0{sub_width}d}'))
      label += 1
    superclasses.append(Superclass(name=super_name, wnid='', subclasses=tuple(subclasses)))
  return Hierarchy(name='synthetic', superclasses=tuple(superclasses), num_source_classes=label)


_SPEC_HELP = ("'mixed_10', 'cifar100', 'synthetic[:<n>,<n>,...]', "
              "'largest:<k>[:<ancestor wnid>]', 'wnids:<wnid>,<wnid>,...'")


def get(spec: str) -> Hierarchy:
  """Hierarchy from a string spec.

  Specs: 'mixed_10', 'cifar100', 'synthetic' (DEFAULT_SYNTHETIC_SIZES), 'synthetic:4,2,2'
  (explicit sizes), 'largest:<k>[:<ancestor wnid>]' (`largest_superclasses`, ancestor
  defaults to entity), 'wnids:<wnid>,<wnid>,...' (`imagenet_hierarchy`, name 'custom').
  """
  if not isinstance(spec, str):
    raise ValueError(f'hierarchy spec must be a string, got {spec!r}; expected one of {_SPEC_HELP}.')
  kind, _, arg = spec.strip().partition(':')
  if kind == 'mixed_10' and not arg:
    return mixed_10()
  if kind == 'cifar100' and not arg:
    return cifar100()
  if kind == 'synthetic':
    if not arg:
      return synthetic()
    try:
      sizes = [int(x) for x in arg.split(',')]
    except ValueError:
      raise ValueError(f'bad synthetic sizes in spec {spec!r}; write e.g. synthetic:4,2,2.') from None
    return synthetic(sizes)
  if kind == 'largest' and arg:
    k_text, _, ancestor = arg.partition(':')
    try:
      k = int(k_text)
    except ValueError:
      raise ValueError(f'bad k in spec {spec!r}; write e.g. largest:10 or '
                       f'largest:10:{ENTITY_WNID}.') from None
    return largest_superclasses(k, ancestor or ENTITY_WNID)
  if kind == 'wnids' and arg:
    return imagenet_hierarchy([w.strip() for w in arg.split(',')])
  raise ValueError(f'unknown hierarchy spec {spec!r}; expected one of {_SPEC_HELP}.')


# ----------------------------------------------------------------------------- CLI


SUMMARY_COLUMNS = ('index', 'superclass', 'wnid', 'subclasses', 'source class indices')


def main() -> None:
  """`python -m supersub_jax.hierarchy <spec> [--json]`: prints the hierarchy's superclasses.

  A line naming the hierarchy and its sizes, a header (``SUMMARY_COLUMNS``), then one line per superclass: index,
  name, wnid, count, source indices (tab-separated; wnid "-" when none).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from supersub_jax import cli  # pylint: disable=g-import-not-at-top
  flags.DEFINE_bool('json', False, 'Print the same fields as JSON.')

  def run(argv):
    if len(argv) != 2:
      raise ValueError(f'give one hierarchy spec ({_SPEC_HELP}), e.g. `python -m supersub_jax.hierarchy mixed_10`.')
    h = get(argv[1])
    if flags.FLAGS.json:
      print(json.dumps({
          'name': h.name,
          'num_source_classes': h.num_source_classes,
          'superclasses': [
              {'index': k, 'name': s.name, 'wnid': s.wnid, 'count': len(s.subclasses),
               'source_indices': [sub.source_index for sub in s.subclasses]}
              for k, s in enumerate(h.superclasses)],
      }, indent=1))
    else:
      print(f'{h.name}: {h.num_superclasses} superclasses, {h.num_subclasses} subclasses\n'
            + '\t'.join(SUMMARY_COLUMNS))
      print('\n'.join(h.summary_lines()))

  cli.run(run)


if __name__ == '__main__':
  main()
