r"""Regenerates the WordNet/ImageNet package data that `supersub_jax.wordnet` reads.

Users of the package do not have the ImageNet devkit files, so the package carries a
compact derived form of them in `supersub_jax/resources/`:

* `imagenet_tree.json` -- the part of the WordNet is-a tree that lies on an ImageNet-1k
  class's path to the root, under robustness's *last-parent* rule (a synset listed with
  several parents in `wordnet.is_a.txt` keeps only the last one listed). Nodes are listed
  in order of first appearance in `wordnet.is_a.txt`, because robustness breaks ties
  between equally large superclasses by that order. Each node is
  `[wnid, words.txt name, parent node index or -1]`; `classes[i]` is
  `[node index, imagenet_class_index.json name]` of ImageNet class i.
* `known_wnids.gz` -- every wnid of `words.txt` and `wordnet.is_a.txt`, so that an
  unknown wnid can be told apart from a real synset with no ImageNet class below it:
  the sorted numeric parts (`n02084071` -> 2084071) delta-encoded as little-endian
  uint32, gzip-compressed with a zero timestamp so the bytes are reproducible.

Usage:
    python scripts/make_hierarchy_resources.py --src ../shared/data/imagenet \
        [--out supersub_jax/resources]
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np

TREE_FILE = 'imagenet_tree.json'
KNOWN_WNIDS_FILE = 'known_wnids.gz'
FORMAT_VERSION = 1
_WNID_RE = re.compile(r'n\d{8}')


def _read_is_a(path: Path) -> list[tuple[str, str]]:
  pairs = []
  with path.open() as f:
    for line_no, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      fields = line.split()
      if len(fields) != 2:
        raise ValueError(f'{path}:{line_no}: expected "parent child", got {line!r}')
      pairs.append((fields[0], fields[1]))
  return pairs


def _read_words(path: Path) -> dict[str, str]:
  words = {}
  with path.open() as f:
    for line_no, line in enumerate(f, 1):
      line = line.rstrip('\n')
      if not line:
        continue
      wnid, sep, name = line.partition('\t')
      if not sep:
        raise ValueError(f'{path}:{line_no}: expected "wnid<TAB>names", got {line!r}')
      words[wnid] = name
  return words


def _read_class_index(path: Path) -> list[tuple[str, str]]:
  raw = json.loads(path.read_text())
  if sorted(int(k) for k in raw) != list(range(len(raw))):
    raise ValueError(f'{path}: keys must be the class indices 0..{len(raw) - 1}')
  return [(raw[str(i)][0], raw[str(i)][1]) for i in range(len(raw))]


def build_resources(src: Path) -> dict[str, bytes]:
  """Returns {file name: exact bytes} of the resources derived from the devkit files in `src`."""
  src = Path(src)
  pairs = _read_is_a(src / 'wordnet.is_a.txt')
  words = _read_words(src / 'words.txt')
  classes = _read_class_index(src / 'imagenet_class_index.json')

  first_seen: dict[str, int] = {}
  parent: dict[str, str] = {}
  for p, c in pairs:
    first_seen.setdefault(p, len(first_seen))
    first_seen.setdefault(c, len(first_seen))
    parent[c] = p  # last parent listed wins (robustness's rule)

  class_wnids = [w for w, _ in classes]
  if len(set(class_wnids)) != len(class_wnids):
    raise ValueError('imagenet_class_index.json lists a wnid twice')
  kept = set()
  for wnid in class_wnids:
    if wnid not in first_seen:
      raise ValueError(f'ImageNet class {wnid} does not occur in wordnet.is_a.txt')
    node, path = wnid, []
    while node is not None:
      if node in path:
        raise ValueError(f'cycle in wordnet.is_a.txt through {node}')
      path.append(node)
      node = parent.get(node)
    kept.update(path)

  nodes = sorted(kept, key=first_seen.__getitem__)
  index = {w: i for i, w in enumerate(nodes)}
  missing_names = [w for w in nodes if w not in words]
  if missing_names:
    raise ValueError(f'words.txt lacks names for {missing_names[:5]}')
  node_rows = [[w, words[w], index[parent[w]] if w in parent else -1] for w in nodes]
  class_rows = [[index[w], name] for w, name in classes]
  # One row per line keeps the shipped file reviewable in diffs.
  tree_text = (
      '{\n"format_version": %d,\n"parent_rule": "last parent listed in wordnet.is_a.txt",\n'
      '"nodes": [\n%s\n],\n"classes": [\n%s\n]\n}\n'
      % (
          FORMAT_VERSION,
          ',\n'.join(json.dumps(r, ensure_ascii=False) for r in node_rows),
          ',\n'.join(json.dumps(r, ensure_ascii=False) for r in class_rows),
      )
  )

  known = set(words) | set(first_seen)
  bad = sorted(w for w in known if not _WNID_RE.fullmatch(w))
  if bad:
    raise ValueError(f'wnids not of the form n########: {bad[:5]}')
  numbers = np.array(sorted(int(w[1:]) for w in known), dtype=np.int64)
  deltas = np.diff(numbers, prepend=0).astype('<u4')
  known_bytes = gzip.compress(deltas.tobytes(), compresslevel=9, mtime=0)

  return {TREE_FILE: tree_text.encode('utf-8'), KNOWN_WNIDS_FILE: known_bytes}


def main() -> None:
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('src', None, 'Folder holding wordnet.is_a.txt, words.txt, imagenet_class_index.json.',
                      required=True)
  flags.DEFINE_string('out', str(Path(__file__).resolve().parents[1] / 'supersub_jax' / 'resources'),
                      'Where to write the resources.')

  def run(argv):
    del argv
    out = Path(flags.FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in build_resources(Path(flags.FLAGS.src)).items():
      (out / name).write_bytes(data)
      print(f'wrote {out / name} ({len(data)} bytes)')

  app.run(run)


if __name__ == '__main__':
  main()
