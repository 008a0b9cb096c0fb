r"""Where should specialists branch off the generalist? Accuracy, storage, speed and memory per branch.

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m studies.branch_sweep --workdir=runs/demo \
      --out=docs/results/branch_sweep

Needs a workdir where `make demo` (train.py + evaluate.py with configs/synthetic.py) has run: its config.json, its
vanilla and superclass stages, and its own specialists (for its own `specialists.branch`, 'stem' by default). Every
branch in --branches gets specialists for all superclasses on that same generalist, in `<workdir>/branch/<branch>/`
(the vanilla and superclass entries are symbolic links, so nothing is copied; the workdir's own branch links its
specialists too instead of training them again), then the whole evaluation of evaluate.py: Super-Sub top-1 with
the generalist's routing, oracle top-1, alpha, and throughput and memory on real held-out batches, timed in this
one process against the same single network. Writes <out>.json, <out>.md (a table) and <out>.png.
"""

import os
import time

from absl import app
from absl import flags

from studies import common
from supersub_jax import plots


_WORKDIR = flags.DEFINE_string('workdir', None, 'A finished demo workdir (see the docstring).', required=True)
_BRANCHES = flags.DEFINE_list('branches', ['stem', 'stage2', 'stage3', 'stage4', 'head'],
                              'Values of config.specialists.branch to compare.')
_OUT = flags.DEFINE_string('out', 'docs/results/branch_sweep', 'Output path prefix (.json, .md, .png).')


def _link(src: str, dst: str) -> None:
  if not os.path.lexists(dst):
    os.symlink(src, dst)


def plot(rows, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  names = [r['branch'] for r in rows]
  x = range(len(rows))
  ax1.plot(x, [100 * r['supersub_top1'] for r in rows], 'o-', label='Super-Sub top-1 (routed)')
  ax1.plot(x, [100 * r['oracle_top1'] for r in rows], 's--', label='oracle top-1')
  ax1.axhline(100 * rows[0]['vanilla_top1'], color='gray', ls=':', label='single network')
  ax1.set_xticks(list(x), names)
  ax1.set_xlabel('branch (first layer group with a delta)')
  ax1.set_ylabel('top-1 (%)')
  ax1.legend(fontsize=8)
  ax2.plot(x, [r['ratio_256'] for r in rows], 'o-', label='batch 256')
  ax2.plot(x, [r['ratio_1'] for r in rows], 's-', label='batch 1')
  ax2.axhline(0.75, color='gray', ls=':', label='target 0.75x')
  ax2.set_xticks(list(x), names)
  ax2.set_xlabel('branch')
  ax2.set_ylabel('throughput / single network')
  ax2.legend(fontsize=8)
  fig.suptitle('Shared trunk: accuracy and speed of two-stage inference by branch point')
  fig.tight_layout()
  plots.save_figure(fig, path, dpi=130)


def main(argv):
  del argv
  from supersub_jax import checkpoint as ckpt  # pylint: disable=g-import-not-at-top
  from supersub_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from supersub_jax import evaluation, recipe  # pylint: disable=g-import-not-at-top
  workdir = ckpt.abs_path(_WORKDIR.value)
  base_config = config_lib.read(workdir)
  rows = []
  for branch in _BRANCHES.value:
    sub = os.path.join(workdir, 'branch', branch)
    os.makedirs(sub, exist_ok=True)
    own = ('vanilla', 'superclass') + (('specialists',) if branch == base_config.specialists.branch else ())
    for stage in own:
      _link(os.path.join(workdir, stage), os.path.join(sub, stage))
    config = base_config.copy_and_resolve_references()
    config.specialists.branch = branch
    train_seconds = None
    if 'specialists' not in own:
      config.stages = ('specialists',)
      start = time.perf_counter()
      recipe.run(config, sub)
      train_seconds = time.perf_counter() - start
    report = evaluation.run(config, sub)
    t, m = report['throughput']['by_batch'], report['memory']
    rows.append({'branch': branch, 'vanilla_top1': report['vanilla']['top1'],
                 'supersub_top1': report['supersub']['top1'], 'oracle_top1': report['supersub']['oracle_top1'],
                 'alpha': report['storage']['alpha'],
                 'ratio_256': t['256']['ratio'], 'ratio_1': t['1']['ratio'],
                 'supersub_ips_256': t['256']['supersub_ips'], 'single_ips_256': t['256']['single_ips'],
                 'resident_bytes': m['params_resident']['supersub_bytes'],
                 'single_resident_bytes': m['params_resident']['single_bytes'],
                 'memory_256_bytes': m['by_batch']['256']['supersub_bytes'],
                 'single_memory_256_bytes': m['by_batch']['256']['single_bytes'],
                 'specialists_seconds': train_seconds,
                 'device': report['throughput']['device']})
    print(f"{branch:>7}: Super-Sub {rows[-1]['supersub_top1']:.4f} oracle {rows[-1]['oracle_top1']:.4f} alpha "
          f"{rows[-1]['alpha']:.4f} speed {rows[-1]['ratio_256']:.2f}x (b256) {rows[-1]['ratio_1']:.2f}x (b1)",
          flush=True)
  full = rows[0]
  lines = ['| branch | Super-Sub top-1 | vs first row (points) | oracle top-1 | alpha | speed b256 | speed b1 | '
           'resident params MB (single) | memory b256 MB (single) | specialists train s |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    secs = '(reused)' if r['specialists_seconds'] is None else f"{r['specialists_seconds']:.0f}"
    lines.append(f"| {r['branch']} | {r['supersub_top1']:.4f} | {100 * (r['supersub_top1'] - full['supersub_top1']):+.2f} "
                 f"| {r['oracle_top1']:.4f} | {r['alpha']:.4f} | {r['ratio_256']:.2f}x | {r['ratio_1']:.2f}x | "
                 f"{r['resident_bytes'] / 1e6:.2f} ({r['single_resident_bytes'] / 1e6:.2f}) | "
                 f"{r['memory_256_bytes'] / 1e6:.1f} ({r['single_memory_256_bytes'] / 1e6:.1f}) | {secs} |")
  table = '\n'.join(lines)
  common.write_results(_OUT.value, rows, table, plot)
  print(table)


if __name__ == '__main__':
  app.run(main)
