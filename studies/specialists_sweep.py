r"""Accuracy-storage frontier of the specialists: density x bits, against dense fine-tuning and a linear probe.

  python -m studies.specialists_sweep --config=configs/synthetic.py --workdir=runs/demo \
      --superclasses=0,1,2,3 --out=docs/results/specialists_sweep

Needs a workdir whose 'superclass' stage is trained (e.g. after `make demo`). For each variant, specialists are
trained for --superclasses on the same frozen generalist, in `<workdir>/sweep/<variant>/` (its 'superclass' entry
is a symbolic link to the workdir's, so the base is never copied), with true-superclass routing (oracle top-1).
alpha is per specialist: (specialist bytes / generalist bytes), averaged, which is the alpha of alpha*N+1.
Writes <out>.json, <out>.md (a table) and <out>.png (accuracy against alpha).
"""

import os

from absl import app
from absl import flags
from ml_collections import config_flags

from studies import common
from supersub_jax import plots

from supersub_jax import delta as delta_lib


_WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir with a trained superclass stage.', required=True)
_SUPER = flags.DEFINE_list('superclasses', ['0', '1', '2', '3'], 'Superclasses that get specialists.')
_OUT = flags.DEFINE_string('out', 'docs/results/specialists_sweep', 'Output path prefix (.json, .md, .png).')
_VARIANTS = flags.DEFINE_list('variants', [], 'Subset of variant names to run (default: all).')
config_flags.DEFINE_config_file('config', None, 'The config the workdir was trained with.', lock_config=False)



def variants() -> dict[str, dict]:
  out = {
      'dense_finetune': dict(leaves='kernels_and_norm', density=1.0, bits=0, sparsity_schedule='none'),
      # The generalist's own features: a new head and BatchNorm statistics over an (eventually) empty delta.
      'head_only': dict(leaves='kernels', density=0.0, bits=8, sparsity_schedule='one_shot',
                        prune_begin_fraction=0.0, prune_end_fraction=0.01),
  }
  for density in (1.0, 0.5, 0.2, 0.1, 0.05, 0.02):
    for bits in (8, 4, 2):
      out[f'd{density:g}_b{bits}'] = dict(leaves='kernels', density=density, bits=bits,
                                           sparsity_schedule='none' if density == 1.0 else 'gradual')
      # The same sparse kernels, plus BatchNorm scale and bias deltas kept whole (quantized alike), as dense
      # fine-tuning trains them: a few kilobytes per specialist.
      out[f'd{density:g}_b{bits}_norm'] = dict(out[f'd{density:g}_b{bits}'], leaves='kernels_and_norm',
                                                dense_leaves=delta_lib.NORM)
  return out


def plot(rows, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for bits, marker in ((8, 'o'), (4, 's'), (2, '^')):
    for norm, style, what in ((False, '-', ''), (True, ':', ' + dense norm')):
      pts = sorted((r['alpha'], r['oracle_top1'], r['density']) for r in rows
                   if r['bits'] == bits and r['variant'].startswith('d') and r['variant'] != 'dense_finetune'
                   and bool(r.get('dense_leaves')) == norm)
      if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, ls=style, label=f'delta, int{bits}{what}')
        for a, acc, d in pts:
          ax.annotate(f'd={d:g}', (a, acc), textcoords='offset points', xytext=(4, -10), fontsize=7)
  for name, marker in (('dense_finetune', '*'), ('head_only', 'x')):
    for r in rows:
      if r['variant'] == name:
        ax.scatter([r['alpha']], [r['oracle_top1']], marker=marker, s=80, label=name.replace('_', ' '), zorder=3)
  ax.set_xscale('log')
  ax.set_xlabel('alpha (specialist bytes / network bytes)')
  ax.set_ylabel('oracle-routed specialist top-1')
  for target in (0.1, 0.03):  # the first storage target, and the one the frontier aims at now
    ax.axvline(target, color='gray', lw=0.8, ls='--')
    ax.annotate(f'alpha {target:g}', (target, ax.get_ylim()[0]), textcoords='offset points', xytext=(3, 4),
                fontsize=7, color='gray')
  ax.set_title('Specialists: accuracy against storage')
  ax.legend(fontsize=8)
  fig.tight_layout()
  plots.save_figure(fig, path, dpi=130)


def markdown(rows) -> str:
  """The rows as a table, each with its gap to dense fine-tuning when that variant is among them."""
  dense = next((r for r in rows if r['variant'] == 'dense_finetune'), None)
  lines = ['| variant | leaves | density | bits | oracle top-1 | vs dense (points) | alpha |', '|---|---|---|---|---|---|---|']
  for r in rows:
    gap = f"{100 * (r['oracle_top1'] - dense['oracle_top1']):+.2f}" if dense else ''
    whole = r.get('dense_leaves', '').replace('|', '\\|')  # a pipe would split the table's cell
    leaves = r['leaves'] + (f' (`{whole}` whole)' if whole else '')
    lines.append(f"| {r['variant']} | {leaves} | {r['density']:g} | {r['bits'] or 'fp32'} | "
                 f"{r['oracle_top1']:.4f} | {gap} | {r['alpha']:.4f} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  from supersub_jax import checkpoint as ckpt, setup_of, specialists  # pylint: disable=g-import-not-at-top
  config = flags.FLAGS.config
  workdir = ckpt.abs_path(_WORKDIR.value)
  chosen = _VARIANTS.value or list(variants())
  rows = []
  for name in chosen:
    overrides = variants()[name]
    sub = os.path.join(workdir, 'sweep', name)
    os.makedirs(sub, exist_ok=True)
    link = os.path.join(sub, 'superclass')
    if not os.path.exists(link):
      os.symlink(os.path.join(workdir, 'superclass'), link)
    cfg = config.copy_and_resolve_references()
    cfg.specialists.update(overrides)
    cfg.specialists.superclasses = tuple(int(k) for k in _SUPER.value)
    summary = specialists.train_specialists(cfg, sub, setup_of.build(cfg))
    per = summary['specialists']
    rows.append({'variant': name, **{k: overrides[k] for k in ('leaves', 'density', 'bits')},
                 'dense_leaves': overrides.get('dense_leaves', ''), 'oracle_top1': summary['oracle_top1'],
                 'alpha': summary['storage']['alpha'],
                 'bytes_per_specialist': sum(p['total_bytes'] for p in per) / len(per),
                 'per_superclass': {p['name']: p['oracle_top1'] for p in per}})
    print(f"{name:>15}: oracle top-1 {rows[-1]['oracle_top1']:.4f}  alpha {rows[-1]['alpha']:.4f}", flush=True)
  table = markdown(rows)
  common.write_results(_OUT.value, rows, table, plot)
  print(table)


if __name__ == '__main__':
  app.run(main)
