r"""The main job over several seeds: Super-Sub against its baselines, with paired 95% intervals.

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m studies.seeds --config=configs/synthetic_scratch.py \
      --workdir=runs/seeds --seeds=0,1,2 --out=docs/results/seeds

For each seed (``config.seed``: initialisations, data order and augmentation; the dataset stays the same), in
``<workdir>/seed<s>/``: the config's stages plus the two baseline stages, ``vanilla_matched`` (the flat network
trained for as many steps as the whole Super-Sub pipeline) and ``head_only`` (specialists that keep the generalist's
features and train a head alone), then evaluate.py's evaluation. Finished stages are reused, so an interrupted run
resumes with the same command. Prints and writes (<out>.json, <out>.md) the mean and standard deviation of each
accuracy over seeds, and Super-Sub minus each baseline as a paired mean with a 95% Student-t interval; <out>.png
shows the same paired gains per superclass.
"""

import json
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from studies import common
from supersub_jax import plots


_WORKDIR = flags.DEFINE_string('workdir', None, 'Parent directory of the per-seed workdirs.', required=True)
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'config.seed values (3 or more for an interval).')
_OUT = flags.DEFINE_string('out', '', 'Output path prefix (.json, .md); empty: print only.')
config_flags.DEFINE_config_file('config', 'configs/synthetic_scratch.py', 'The main job\'s config.', lock_config=False)

# name -> (label, report path); Super-Sub's is first.
METRICS = {
    'supersub': ('Super-Sub top-1 (routed)', ('supersub', 'top1')),
    'vanilla': ('vanilla top-1 (the report\'s baseline)', ('vanilla', 'top1')),
    'vanilla_matched': ('vanilla at Super-Sub\'s compute', ('baselines', 'vanilla_matched', 'top1')),
    'head_only': ('head-only specialists (generalist features)', ('baselines', 'head_only', 'top1')),
    'oracle': ('Super-Sub, oracle routing', ('supersub', 'oracle_top1')),
    'routing': ('generalist superclass top-1', ('superclass', 'top1')),
}
BASELINES = ('vanilla', 'vanilla_matched', 'head_only')


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return float(tree)


def _done(workdir: str) -> dict | None:
  path = os.path.join(workdir, 'report.json')
  return json.load(open(path)) if os.path.exists(path) else None


def run_seed(config, workdir: str) -> dict:
  """The main job with both baseline stages at ``config.seed``; its report."""
  from supersub_jax import evaluation, recipe  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.stages = tuple(config.stages) + tuple(s for s in ('vanilla_matched', 'head_only') if s not in config.stages)
  report = _done(workdir)
  if report is None or 'head_only' not in report.get('baselines', {}):
    recipe.run(config, workdir)
    report = evaluation.run(config, workdir)
  return report


def summarize(reports: dict[int, dict]) -> dict:
  """Per-metric values over seeds, mean and std, and paired differences Super-Sub - baseline with 95% intervals."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  values = {name: [_get(r, path) for r in reports.values()] for name, (_, path) in METRICS.items()}
  out = {'seeds': sorted(reports), 'values': values,
         'mean': {k: float(np.mean(v)) for k, v in values.items()},
         'std': {k: float(np.std(v, ddof=1)) if len(v) > 1 else float('nan') for k, v in values.items()},
         'supersub_minus': {}}
  for base in BASELINES:
    diffs = [a - b for a, b in zip(values['supersub'], values[base])]
    mean, low, high = common.mean_interval(diffs)
    out['supersub_minus'][base] = {'diffs': diffs, 'mean': mean, 'ci95': [low, high]}
  first = next(iter(reports.values()))
  out['superclasses'] = [row['name'] for row in first['per_superclass']]
  out['per_superclass_minus'] = {}
  for base in BASELINES:
    gains = [[r['per_superclass'][k]['supersub_top1'] - r['per_superclass'][k][f'{base}_top1']
              for r in reports.values()] for k in range(len(out['superclasses']))]  # [superclass][seed]
    out['per_superclass_minus'][base] = [list(common.mean_interval(g)) for g in gains]  # [superclass][3]
  return out


def markdown(summary: dict) -> str:
  n = len(summary['seeds'])
  lines = [f"Seeds {summary['seeds']} (n = {n}); accuracy in %, mean ± standard deviation over seeds.", '',
           '| metric | mean ± std | per seed |', '|---|---|---|']
  for name, (label, _) in METRICS.items():
    per = ', '.join(f'{100 * v:.2f}' for v in summary['values'][name])
    lines.append(f"| {label} | {100 * summary['mean'][name]:.2f} ± {100 * summary['std'][name]:.2f} | {per} |")
  lines += ['', '| Super-Sub minus | mean (points) | 95% interval (paired t) | excludes 0 |', '|---|---|---|---|']
  for base in BASELINES:
    d = summary['supersub_minus'][base]
    low, high = d['ci95']
    excludes = 'n/a' if low != low else ('yes' if low > 0 or high < 0 else 'no')
    lines.append(f"| {METRICS[base][0]} | {100 * d['mean']:+.2f} | [{100 * low:+.2f}, {100 * high:+.2f}] | "
                 f'{excludes} |')
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  import numpy as np  # pylint: disable=g-import-not-at-top
  from supersub_jax import checkpoint as ckpt  # pylint: disable=g-import-not-at-top
  config = flags.FLAGS.config
  parent = ckpt.abs_path(_WORKDIR.value)
  reports = {}
  for seed in (int(s) for s in _SEEDS.value):
    config.seed = seed
    reports[seed] = run_seed(config, os.path.join(parent, f'seed{seed}'))
    print(f"[seed {seed}] Super-Sub {_get(reports[seed], METRICS['supersub'][1]):.4f}", flush=True)
  summary = summarize(reports)
  text = markdown(summary)
  if _OUT.value:
    common.write_results(_OUT.value, summary, text, lambda s, path: plots.plot_per_superclass_gain(
        s['superclasses'], {METRICS[b][0]: np.asarray(v).T for b, v in s['per_superclass_minus'].items()}, path))
  print(text)


if __name__ == '__main__':
  app.run(main)
