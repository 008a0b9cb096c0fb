"""The ImageNet WordNet tree that "Superclassing ImageNet" takes its superclasses from.

ImageNet hierarchies follow "Superclassing ImageNet" as implemented by MadryLab's robustness
library (`robustness.tools.imagenet_helpers.ImageNetHierarchy`): the WordNet is-a graph of the
ImageNet devkit is turned into a tree by keeping, for every synset, only the *last* parent listed
for it in `wordnet.is_a.txt`; a superclass's subclasses are the ImageNet-1k classes strictly below
its wnid in that tree. The package ships that tree (see `scripts/make_hierarchy_resources.py`), so
no devkit files are needed at run time.

`synsets(wnids)` lists the ImageNet-1k classes below each given synset (checked: known, with classes below,
disjoint); `largest_wnids(k, ancestor)` chooses the k largest disjoint synsets below an ancestor, in robustness's
order. `hierarchy.imagenet_hierarchy`, `hierarchy.mixed_10` and `hierarchy.largest_superclasses` build a
`Hierarchy` from them (this module knows no `Hierarchy`, so that `hierarchy.get` can reach it).
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import json
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

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
_TREE_FILE = 'imagenet_tree.json'
_KNOWN_WNIDS_FILE = 'known_wnids.gz'
_TREE_FORMAT_VERSION = 1
NUM_IMAGENET_CLASSES = 1000


class ImageNetClass(NamedTuple):
  index: int  # ImageNet-1k class index, 0..999
  wnid: str
  name: str  # imagenet_class_index.json name


class Synset(NamedTuple):
  """A superclass candidate: a synset of the tree and the ImageNet-1k classes strictly below it."""
  wnid: str
  name: str  # the first words.txt synonym
  classes: tuple[ImageNetClass, ...]  # in ImageNet index order


# ----------------------------------------------------------------------------- the tree


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


def _synsets_of_nodes(tree: _ImageNetTree, nodes: Sequence[int], balanced: bool) -> list[Synset]:
  """The synsets of tree nodes that each have classes below, or a ValueError naming two that overlap."""
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
  return [Synset(wnid=tree.wnids[node], name=_short_name(tree.names[node]),
                 classes=tuple(ImageNetClass(c, tree.wnids[tree.class_node[c]], tree.class_names[c]) for c in members))
          for node, members in zip(nodes, member_sets)]


# ----------------------------------------------------------------------------- choosing superclasses


def synsets(wnids: Sequence[str], *, balanced: bool = False) -> list[Synset]:
  """One `Synset` per WordNet id, in the given order: the ImageNet-1k classes strictly below `wnids[k]` in the
  last-parent WordNet tree, in ImageNet index order. With `balanced=True`, as robustness's
  `get_subclasses(..., balanced=True)`, every synset keeps only its `min(sizes)` lowest-index classes.

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
  return _synsets_of_nodes(tree, nodes, balanced)


def largest_wnids(k: int, ancestor_wnid: str = ENTITY_WNID) -> list[str]:
  """The wnids of the k largest disjoint superclasses strictly below `ancestor_wnid`.

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
  return [tree.wnids[node] for node in selected]
