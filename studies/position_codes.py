r"""Bytes of the kept positions of trained specialists under each position code, and the alpha each gives.

  python -m studies.position_codes --workdir=runs/demo

Reads the workdir's exported specialists (config stored in the workdir) and re-encodes every record's kept
positions (``positions.encode_positions``' three codes) with nothing else changed (values, scales, heads and
BatchNorm statistics keep their bytes): a bitmask for every leaf; the smaller of a bitmask and indices per leaf (the
export before varint gaps); the smallest of bitmask, indices and gaps per leaf (the export now); and, for scale,
the entropy bound of each leaf's kept set (log2 C(size, k) bits, what any position code must spend on a uniformly
random set). Prints a markdown table and the rows as JSON.
"""

import json
import math

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir trained by train.py (superclass and specialists).',
                               required=True)


def _log2_binomial(n: int, k: int) -> float:
  return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


def position_bytes(exported: list[dict]) -> dict[str, list[float]]:
  """Per specialist: bytes of its kept positions under each code (schema: module docstring), and the rest."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from supersub_jax import exported as exported_lib, positions as positions_lib  # pylint: disable=g-import-not-at-top
  out = {name: [] for name in ('bitmask', 'bitmask_or_indices', 'smallest', 'entropy_bound', 'other')}
  for e in exported:
    sums = dict.fromkeys(out, 0.0)
    sums['other'] = sum(exported_lib.exported_nbytes(e).values())
    for keys, rec in exported_lib.walk_records(e['delta']):
      d = exported_lib.decode_record(rec, '/'.join(keys))
      size = int(np.prod(d.shape))
      mask = np.zeros(size, bool)
      mask[d.indices] = True
      bitmask = (size + 7) // 8
      indices = d.indices.size * positions_lib.index_dtype(size).itemsize or bitmask
      sums['other'] -= np.asarray(rec['positions']).nbytes
      sums['bitmask'] += bitmask
      sums['bitmask_or_indices'] += min(bitmask, indices)
      sums['smallest'] += positions_lib.encode_positions(mask)[1].nbytes
      sums['entropy_bound'] += _log2_binomial(size, d.indices.size) / 8
    for name, value in sums.items():
      out[name].append(value)
  return out


def main(argv):
  del argv
  from supersub_jax import checkpoint as ckpt, config as config_lib, delta as delta_lib  # pylint: disable=g-import-not-at-top
  from supersub_jax import setup_of, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir = ckpt.abs_path(_WORKDIR.value)
  config = config_lib.read(workdir)
  setup = setup_of.build(config)
  hierarchy = setup.hierarchy
  generalist = workdir_lib.load_network(config, workdir, 'superclass', setup)
  exported = [workdir_lib.load_exported(config, workdir, k, generalist, hierarchy)
              for k in range(hierarchy.num_superclasses)]
  base = delta_lib.tree_nbytes(generalist.params) + delta_lib.tree_nbytes(generalist.batch_stats)
  parts = position_bytes(exported)
  n = len(exported)
  cfg = config.specialists
  print(f'{n} specialists, density {cfg.density}, int{cfg.bits}, branch {cfg.branch}; generalist {base:,} bytes; '
        f'values, scales, heads and BatchNorm statistics {sum(parts["other"]):,.0f} bytes in all')
  rows = []
  for name in ('bitmask', 'bitmask_or_indices', 'smallest', 'entropy_bound'):
    positions = sum(parts[name])
    total = positions + sum(parts['other'])
    rows.append({'code': name, 'position_bytes': positions, 'specialist_bytes': total / n,
                 'positions_share': positions / total, 'alpha': total / n / base})
  print('| positions | position bytes (all) | bytes per specialist | positions share | alpha |\n|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['code']} | {r['position_bytes']:,.0f} | {r['specialist_bytes']:,.0f} | "
          f"{100 * r['positions_share']:.1f}% | {r['alpha']:.4f} |")
  print(json.dumps(rows))


if __name__ == '__main__':
  app.run(main)
