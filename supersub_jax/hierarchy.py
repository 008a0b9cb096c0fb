"""Superclass/subclass hierarchies: which source classes each superclass's specialist covers.

A `Hierarchy` is an ordered tuple of superclasses, each an ordered tuple of subclasses. Every
subclass gets a *global label* 0..num_subclasses-1 in superclass-major order (superclass 0's
subclasses first; within a superclass, in source-index order), and keeps its `source_index`, the
class index in the source dataset (ImageNet-1k index, CIFAR-100 fine label, synthetic class id).
Derived numpy int32 label maps convert between the three views (global label, (superclass,
local index), source index); they are read-only and can be indexed inside jitted code via
`jnp.asarray(h.label_to_superclass)[labels]`.

ImageNet hierarchies follow "Superclassing ImageNet" (MadryLab's robustness library): their superclasses are
synsets of the last-parent WordNet tree that `supersub_jax.wordnet` reads from the package's resources.

Builders: `mixed_10`, `imagenet_hierarchy`, `largest_superclasses`, `cifar100`, `synthetic`, and
`get(spec)` for a string spec. Command: `python -m tools.hierarchy <spec> [--json]`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from supersub_jax import wordnet

__all__ = [
    'Subclass', 'Superclass', 'Hierarchy', 'DEFAULT_SYNTHETIC_SIZES', 'CIFAR100_COARSE_NAMES',
    'CIFAR100_FINE_NAMES', 'CIFAR100_COARSE_TO_FINE', 'SUMMARY_COLUMNS', 'SPEC_HELP',
    'mixed_10', 'imagenet_hierarchy', 'largest_superclasses', 'cifar100', 'synthetic', 'get',
]


# Scaled-down copy of mixed_10's 116/52/27/13/10/8/7/7/7/6 imbalance: 38 subclasses.
DEFAULT_SYNTHETIC_SIZES: tuple[int, ...] = (12, 6, 4, 3, 3, 2, 2, 2, 2, 2)

# Sane limits, checked before the label maps are allocated: a hierarchy read from a file (a bundle) states its sizes
# itself. ImageNet-21k has 21,841 classes; the label grid (superclasses x the largest superclass) of mixed_10 is
# 10 x 116, and a specialist's head is as wide as the largest superclass.
MAX_SOURCE_CLASSES = 10**6
MAX_LABEL_GRID = 10**7
# The columns of `Hierarchy.summary_lines` (python -m tools.hierarchy prints them as its header).
SUMMARY_COLUMNS = ('index', 'superclass', 'wnid', 'subclasses', 'source class indices')


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
  superclasses, label = [], 0
  for synset in wordnet.synsets(wnids, balanced=balanced):
    subclasses = []
    for c in synset.classes:
      subclasses.append(Subclass(label=label, source_index=c.index, wnid=c.wnid, name=c.name))
      label += 1
    superclasses.append(Superclass(name=synset.name, wnid=synset.wnid, subclasses=tuple(subclasses)))
  return Hierarchy(name=name, superclasses=tuple(superclasses),
                   num_source_classes=wordnet.NUM_IMAGENET_CLASSES)


def mixed_10() -> Hierarchy:
  """robustness's 'mixed_10' (the paper's ImageNet setting): dog 116, bird 52, insect 27,
  monkey 13, car 10, feline 8, truck 7, fruit 7, fungus 7, boat 6 classes (253 in all)."""
  return imagenet_hierarchy(wordnet.MIXED_10_WNIDS, name='mixed_10')


def largest_superclasses(k: int, ancestor_wnid: str = wordnet.ENTITY_WNID, *,
                         balanced: bool = False) -> Hierarchy:
  """The k largest disjoint superclasses strictly below `ancestor_wnid`, in robustness's order (largest first;
  `wordnet.largest_wnids` says how they are chosen).

  `balanced` truncates every superclass to the smallest one's size (see `imagenet_hierarchy`).
  Raises ValueError if fewer than k disjoint superclasses exist below `ancestor_wnid`.
  """
  wnids = wordnet.largest_wnids(k, ancestor_wnid)
  name = f'largest_{k}' if ancestor_wnid == wordnet.ENTITY_WNID else f'largest_{k}_{ancestor_wnid}'
  if balanced:
    name += '_balanced'
  return imagenet_hierarchy(wnids, name, balanced=balanced)


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


SPEC_HELP = ("'mixed_10', 'cifar100', 'synthetic[:<n>,<n>,...]', "
              "'largest:<k>[:<ancestor wnid>]', 'wnids:<wnid>,<wnid>,...'")


def get(spec: str) -> Hierarchy:
  """Hierarchy from a string spec.

  Specs: 'mixed_10', 'cifar100', 'synthetic' (DEFAULT_SYNTHETIC_SIZES), 'synthetic:4,2,2'
  (explicit sizes), 'largest:<k>[:<ancestor wnid>]' (`largest_superclasses`, ancestor
  defaults to entity), 'wnids:<wnid>,<wnid>,...' (`imagenet_hierarchy`, name 'custom').
  """
  if not isinstance(spec, str):
    raise ValueError(f'hierarchy spec must be a string, got {spec!r}; expected one of {SPEC_HELP}.')
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
                       f'largest:10:{wordnet.ENTITY_WNID}.') from None
    return largest_superclasses(k, ancestor or wordnet.ENTITY_WNID)
  if kind == 'wnids' and arg:
    return imagenet_hierarchy([w.strip() for w in arg.split(',')])
  raise ValueError(f'unknown hierarchy spec {spec!r}; expected one of {SPEC_HELP}.')
