r"""Super-Sub against the flat network at equal compute: one total budget of optimizer steps, split several ways.

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m studies.allocation --config=configs/synthetic_scratch.py \
      --workdir=runs/allocation --out=docs/results/allocation \
      --runs=1200/scratch:0.5,1200/vanilla_first:0.4898:0.1224,2450/vanilla_first:0.4898:0.1224

Each run is ``B/allocation``. A budget B is optimizer steps at ``config.batch_size`` (images seen = B x batch); an
allocation spends at most B on Super-Sub's predictions:

  ``scratch:g``            the generalist trains g*B steps from a random start; the specialists share the rest.
                           The workdir's vanilla stage trains B steps: it is the flat network at equal compute.
  ``vanilla_first:v:g``    the vanilla network trains v*B steps, the generalist g*B from it, the specialists the rest
                           (the default recipe's shape); the ``vanilla_matched`` stage is the flat network at B.

The specialists' share is met with ``specialists.num_epochs`` (each superclass gets steps in proportion to its
images, so large superclasses train longer), the largest that fits. Each (budget, allocation) runs the main job in
``<workdir>/B<budget>_<allocation>/`` and is skipped when its report.json exists, so a rerun resumes; the flat
network at a budget is trained once and linked into the other scratch allocations of that budget. Prints and writes
<out>.json, <out>.md (a table) and <out>.png (top-1 against images seen).
"""

import json
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from studies import common
from supersub_jax import plots


_WORKDIR = flags.DEFINE_string('workdir', None, 'Parent of the per-allocation workdirs.', required=True)
_RUNS = flags.DEFINE_list(
    'runs', ['1200/scratch:0.5', '1200/vanilla_first:0.4898:0.1224', '2450/vanilla_first:0.4898:0.1224'],
    "'budget/allocation' pairs: the total optimizer steps, split as 'scratch:g' or 'vanilla_first:v:g' (fractions).")
_OUT = flags.DEFINE_string('out', '', 'Output path prefix (.json, .md, .png); empty: print only.')
config_flags.DEFINE_config_file('config', 'configs/synthetic_scratch.py', 'The main job\'s config.', lock_config=False)


def parse(allocation: str) -> tuple[str, float, float]:
  """'scratch:g' -> ('scratch', 0, g); 'vanilla_first:v:g' -> ('vanilla_first', v, g)."""
  kind, *fractions = allocation.split(':')
  shapes = {'scratch': 1, 'vanilla_first': 2}
  if kind not in shapes or len(fractions) != shapes[kind]:
    raise ValueError(f"allocation {allocation!r}: expected 'scratch:g' or 'vanilla_first:v:g' with fractions of "
                     'the budget, e.g. scratch:0.5 or vanilla_first:0.49:0.12.')
  values = [float(f) for f in fractions]
  vanilla, generalist = (0.0, values[0]) if kind == 'scratch' else tuple(values)
  if min(values) <= 0 or vanilla + generalist >= 1:
    raise ValueError(f'allocation {allocation!r}: fractions must be > 0 and leave the specialists a share (< 1 in '
                     'all).')
  return kind, vanilla, generalist


def configure(config, budget: int, allocation: str):
  """The config of one (budget, allocation): stages and step budgets as the module docstring says."""
  from supersub_jax import setup_of, stages  # pylint: disable=g-import-not-at-top
  kind, vanilla, generalist = parse(allocation)
  config = config.copy_and_resolve_references()
  config.superclass.num_train_steps = max(1, round(generalist * budget))
  if kind == 'scratch':
    config.superclass.init_from_vanilla = False
    config.superclass.learning_rate = config.vanilla.learning_rate  # a fresh network: the vanilla recipe
    config.vanilla.num_train_steps = budget
    config.stages = ('vanilla', 'superclass', 'specialists')
    used = config.superclass.num_train_steps
  else:
    config.superclass.init_from_vanilla = True
    config.vanilla.num_train_steps = max(1, round(vanilla * budget))
    config.stages = ('vanilla', 'superclass', 'specialists', 'vanilla_matched')
    used = config.vanilla.num_train_steps + config.superclass.num_train_steps
  config.specialists.num_epochs = stages.specialist_epochs_for(config, setup_of.make_hierarchy(config), budget - used)
  return config


def run_one(config, workdir: str, flat_dir: str | None) -> dict:
  """Trains and evaluates one workdir (reusing a finished report.json); links the flat network in when given."""
  from supersub_jax import evaluation, recipe  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'report.json')
  if os.path.exists(path):
    return json.load(open(path))
  os.makedirs(workdir, exist_ok=True)
  if flat_dir and not os.path.exists(os.path.join(workdir, 'vanilla')):
    os.symlink(flat_dir, os.path.join(workdir, 'vanilla'))
  recipe.run(config, workdir)
  return evaluation.run(config, workdir)


def row(budget: int, allocation: str, report: dict) -> dict:
  """The numbers of one (budget, allocation) from its report."""
  steps = report['compute']['supersub_steps']
  matched = report.get('baselines', {}).get('vanilla_matched')
  flat = matched['top1'] if matched else report['vanilla']['top1']
  flat_steps = matched['steps'] if matched else report['compute']['vanilla_steps']
  batch = report['compute']['batch_size']
  return {'budget': budget, 'allocation': allocation, 'steps': steps, 'flat_steps': flat_steps, 'batch_size': batch,
          'images_seen': steps['total'] * batch,
          'supersub': report['supersub']['top1'], 'oracle': report['supersub']['oracle_top1'],
          'routing': report['superclass']['top1'], 'flat': flat, 'supersub_minus_flat': report['supersub']['top1'] - flat}


def markdown(rows: list[dict]) -> str:
  lines = ['| budget (steps) | allocation | vanilla + generalist + specialists | flat network | Super-Sub | '
           'oracle routing | generalist | Super-Sub - flat |', '|---|---|---|---|---|---|---|---|']
  for r in rows:
    s = r['steps']
    lines.append(f"| {r['budget']:,} | {r['allocation']} | {s['vanilla']:,} + {s['superclass']:,} + "
                 f"{s['specialists']:,} = {s['total']:,} | {100 * r['flat']:.2f} ({r['flat_steps']:,} steps) | "
                 f"{100 * r['supersub']:.2f} | {100 * r['oracle']:.2f} | {100 * r['routing']:.2f} | "
                 f"{100 * r['supersub_minus_flat']:+.2f} |")
  return '\n'.join(lines) + '\n'


def plot(rows: list[dict], path: str) -> None:
  """Top-1 against images seen: the flat network, and Super-Sub per allocation (routed; oracle dotted)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.5, 4))
  flat = sorted({(r['flat_steps'] * r['batch_size'], r['flat']) for r in rows})
  ax.plot([x for x, _ in flat], [100 * y for _, y in flat], 'k-o', label='flat network (all subclasses)')
  for allocation in dict.fromkeys(r['allocation'] for r in rows):
    mine = sorted((r['images_seen'], r['supersub'], r['oracle']) for r in rows if r['allocation'] == allocation)
    line, = ax.plot([m[0] for m in mine], [100 * m[1] for m in mine], '-s', label=f'Super-Sub, {allocation}')
    ax.plot([m[0] for m in mine], [100 * m[2] for m in mine], ':', color=line.get_color(), marker='.',
            label='  oracle routing')
  ax.set_xlabel('images seen (optimizer steps x batch)')
  ax.set_ylabel('test top-1 (%)')
  ax.set_title('Equal compute: Super-Sub against one network', fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  plots.save_figure(fig, path, dpi=120)


def main(argv):
  del argv
  from supersub_jax import checkpoint as ckpt  # pylint: disable=g-import-not-at-top
  parent = ckpt.abs_path(_WORKDIR.value)
  rows, flat_dirs = [], {}  # budget -> the first scratch run's vanilla stage: the flat network at that budget
  for spec in _RUNS.value:
    budget, allocation = spec.split('/', 1)
    budget = int(budget)
    config = configure(flags.FLAGS.config, budget, allocation)
    workdir = os.path.join(parent, f"B{budget}_{allocation.replace(':', '_')}")
    scratch = parse(allocation)[0] == 'scratch'
    report = run_one(config, workdir, flat_dirs.get(budget) if scratch else None)
    if scratch:
      flat_dirs.setdefault(budget, os.path.join(workdir, 'vanilla'))
    rows.append(row(budget, allocation, report))
    print(f"[B={budget} {allocation}] Super-Sub {rows[-1]['supersub']:.4f} flat {rows[-1]['flat']:.4f}", flush=True)
  text = markdown(rows)
  if _OUT.value:
    common.write_results(_OUT.value, rows, text, plot)
  print(text)


if __name__ == '__main__':
  app.run(main)
