"""Prints a hierarchy's superclasses.

  python -m tools.hierarchy <spec> [--json]

A line naming the hierarchy and its sizes, a header (``hierarchy.SUMMARY_COLUMNS``), then one line per superclass:
index, name, wnid, count, source indices (tab-separated; wnid "-" when none). Specs are `supersub_jax.hierarchy.get`'s.
"""

from __future__ import annotations

if __name__ == '__main__':  # run as a program: before the heavy imports, so that a signal during them stops it too
  from supersub_jax import interrupts  # pylint: disable=g-import-not-at-top
  interrupts.install()

import json

from absl import flags

from supersub_jax import cli
from supersub_jax import hierarchy as hierarchy_lib

def main() -> None:
  """`python -m tools.hierarchy <spec> [--json]`: prints the hierarchy's superclasses."""
  flags.DEFINE_bool('json', False, 'Print the same fields as JSON.')

  def run(argv):
    if len(argv) != 2:
      raise ValueError(f'give one hierarchy spec ({hierarchy_lib.SPEC_HELP}), e.g. '
                       '`python -m tools.hierarchy mixed_10`.')
    h = hierarchy_lib.get(argv[1])
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
            + '\t'.join(hierarchy_lib.SUMMARY_COLUMNS))
      print('\n'.join(h.summary_lines()))

  cli.run(run)


if __name__ == '__main__':
  main()
