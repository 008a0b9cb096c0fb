r"""When does the hierarchy pay? Super-Sub minus the flat network at equal compute, over cue specificity x width.

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m studies.map --workdir=runs/map \
      --specificity=1,10 --widths=0.25,1.0 --bases=0 --seeds=0 --extra=config --out=docs/results/map

A cell is (specificity m, width w): the synthetic dataset with ``synthetic.specificity=m`` (m = 1: every
superclass's subclass is a texture grating, the control; m = 10: each superclass has a cue kind only it uses, the
paper's premise; data/render.py) and the small ResNet at ``config.width=w``. Per cell and base b (--bases):

1. the base network: the flat recipe (--base_config's vanilla stage) from random weights for --base_steps on the
   cell's data (seed 1000 + b), exported as ``<workdir>/m<m>_w<w>/base<b>/base.safetensors`` with a sidecar JSON;
2. per extra budget E (--extra, as in studies/regimes.py: 'config' is --converged_config's own budgets, the demo's)
   and seed s: the converged regime from that base (studies/common.py: the flat network continues for exactly
   Super-Sub's steps; Super-Sub's generalist starts from the base's backbone, its specialists from the generalist).

Each finished run's small summary goes to ``<runs_dir>/m<m>_w<w>_b<b>_E<E>_s<s>_v<dataset version>.json`` (default
docs/results/map_runs/, committed as runs land): a rerun takes a run from there first, so a lost ``--workdir`` costs
the runs not yet summarised, not the study. The tables (<out>.md, <out>.json) give, per cell and E, Super-Sub minus
the flat network for every rule over the (base, seed) pairs with a paired 95% Student-t interval, the same two arms
given the true superclass, and, per E and rule, one least-squares model of all runs, gap ~ 1 + m + w + m x w
(m scaled to [0, 1] over the grid's specificities, w as log2 width scaled to [0, 1]), whose m x w coefficient is the
interaction (does the gap grow with m faster where the network is narrow?) with its t interval. <out>.png colours
each cell by its mean gap under the paper's rule, with the interval written in it.

A variant of the method is a tag and config overrides; the stages it does not change are linked from the untagged
run of the same cell and seed (which must have kept its workdir: run the same command without --tag, --share_stages
and the override first), so that both share the flat arm exactly:

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m studies.map --workdir=runs/map \
      --specificity=1,10 --widths=0.25,1.0 --bases=0 --seeds=1 --extra=0.25 --tag=head_init \
      --share_stages=vanilla,superclass --converged_config.specialists.head_from=init --out=docs/results/map_head_init

The variant whose base network routes and whose specialists get all of E (tag base_router), the capacity baseline
(--capacity) and the tables' flags (--show_rules, --plot_rule): commands in docs/results.md, section 1. With a cell of
the 2 x 2 grid missing, the model keeps the main effects alone.
"""

from __future__ import annotations

import glob
import json
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from studies import common

_WORKDIR = flags.DEFINE_string('workdir', None, 'Parent of the per-cell workdirs.', required=True)
_SPECIFICITY = flags.DEFINE_list('specificity', ['1', '10'], 'synthetic.specificity values (cue kinds).')
_WIDTHS = flags.DEFINE_list('widths', ['0.25', '1.0'], 'config.width values.')
_BASES = flags.DEFINE_list('bases', ['0'], 'Base networks per cell (each its own random start, seed 1000 + b).')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'config.seed values of the runs from each base.')
_EXTRA = flags.DEFINE_list('extra', ['config'], "Extra budgets: fractions of --base_steps, or 'config' (the "
                           "converged config's own: the demo's).")
_BASE_STEPS = flags.DEFINE_integer('base_steps', 2400, 'Steps of each base network (the flat recipe from random '
                                   'weights).')
_GENERALIST = flags.DEFINE_float('generalist_share', 0.25, "The generalist's share of E (numeric E only).")
_RUNS_DIR = flags.DEFINE_string('runs_dir', 'docs/results/map_runs', 'Where each finished run\'s summary goes.')
_OUT = flags.DEFINE_string('out', '', 'Output path prefix (.json, .md, .png); empty: print only.')
_TAG = flags.DEFINE_string('tag', '', "A variant's name (with --converged_config.<field>=... overrides): its workdirs "
                           'and summaries carry it; empty: the method as configured.')
_SHARE = flags.DEFINE_list('share_stages', [], "With --tag: the stages linked from the untagged run's workdir of the same "
                           'cell, E and seed instead of trained again (that run must be finished), e.g. '
                           'vanilla,superclass for a variant of the specialists alone.')
_PLOT_RULE = flags.DEFINE_string('plot_rule', 'hard', "The decision rule <out>.png colours the cells by (a variant that "
                                 "routes by the base network: 'hard/flat').")
_CAPACITY = flags.DEFINE_list('capacity', [], "'<width>,<wider width>': also compare Super-Sub at the first width with "
                              'the flat network at the second (give both in --widths), a width with about as many '
                              "stored parameters as Super-Sub's generalist plus its deltas (1.0 and 1.125: 1.26x).")
_SHOW = flags.DEFINE_list('show_rules', [], "The rules the tables and figure show (default: every rule the runs have); "
                          "the variant whose generalist trains one step hides its 'hard' (a router that never trained).")
_SHARE_FROM = flags.DEFINE_string('share_from', '', "With --share_stages: the tag of the run they are linked from "
                                  '(default: the untagged run).')
_TRAIN = flags.DEFINE_bool('train', True, 'False: train nothing, summarise the runs already summarised.')
config_flags.DEFINE_config_file('converged_config', 'configs/synthetic.py', 'The runs\' config (its init is '
                                'replaced by the cell\'s base network).', lock_config=False)
config_flags.DEFINE_config_file('base_config', 'configs/synthetic_scratch.py', 'The base networks\' flat recipe '
                                '(its vanilla stage).', lock_config=False)

BASE_SEED = 1000  # the base networks' seeds: apart from the runs' seeds, so no run shares a base's data order


def cell_name(m: int, width: float, base: int) -> str:
  return f'm{m}_w{width:g}_b{base}'


def cell_config(config, m: int, width: float):
  config = config.copy_and_resolve_references()
  config.synthetic.specificity = m
  config.width = width
  return config


def dataset_version() -> str:
  """The synthetic dataset's version: a summary or a base network of another version (other cues) is not reused."""
  from supersub_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  return synthetic.VERSION


def cell_dir(m: int, width: float, base: int) -> str:
  """The cell's workdir under --workdir, by dataset version, so that no base or run of other images is resumed."""
  return os.path.join(os.path.abspath(_WORKDIR.value), f'v{dataset_version()}', f'm{m}_w{width:g}', f'base{base}')


def base_network(m: int, width: float, base: int) -> dict:
  """Trains (or reuses) the cell's base network; returns its record (the sidecar JSON beside the weights)."""
  from supersub_jax import convert, files, recipe  # pylint: disable=g-import-not-at-top
  folder = cell_dir(m, width, base)
  path = os.path.join(folder, 'base.safetensors')
  sidecar = os.path.join(folder, 'base.json')
  if os.path.exists(sidecar) and os.path.exists(path):
    return json.load(open(sidecar))
  config = cell_config(flags.FLAGS.base_config, m, width)
  config.stages = ('vanilla',)
  config.vanilla.num_train_steps = _BASE_STEPS.value
  config.seed = BASE_SEED + base
  print(f'{cell_name(m, width, base)}: base network, {_BASE_STEPS.value} steps from random weights', flush=True)
  top1 = float(recipe.run(config, os.path.join(folder, 'train'))['vanilla']['accuracy'])
  if os.path.exists(path):
    os.remove(path)  # a half-made base: its record is written after it
  convert.export_network(config, os.path.join(folder, 'train'), 'vanilla', 'safetensors', path)
  record = {'path': path, 'steps': _BASE_STEPS.value, 'seed': int(config.seed), 'specificity': m, 'width': width,
            'test_top1': top1, 'dataset_version': dataset_version()}
  files.write_text(sidecar, json.dumps(record, indent=2) + '\n')
  return record


def tagged(name: str, tag: str) -> str:
  return f'{name}_{tag}' if tag else name


def summary_path(m: int, width: float, base: int, extra: float, seed: int, tag: str = '') -> str:
  return os.path.join(_RUNS_DIR.value,
                      f'{tagged(cell_name(m, width, base), tag)}_E{extra:g}_s{seed}_v{dataset_version()}.json')


def run_one(m: int, width: float, base: int, extra: float | None, seed: int) -> dict | None:
  """One run's summary: from --runs_dir if it was summarised, else trained and evaluated (None: not finished and
  --train=false)."""
  from supersub_jax import files  # pylint: disable=g-import-not-at-top
  tag = _TAG.value
  known = [path for pattern in (f'_E*_s{seed}.json', f'_E*_s{seed}_v*.json')  # the pilot's names had no version
           for path in glob.glob(os.path.join(_RUNS_DIR.value, tagged(cell_name(m, width, base), tag) + pattern))]
  for path in known:
    summary = json.load(open(path))
    # Summaries from before the version was recorded are the pilot's, on dataset 2.0.0.
    if summary.get('dataset_version', '2.0.0') != dataset_version():
      continue
    if summary['extra_flag'] == (None if extra is None else float(extra)):
      return summary
  if not _TRAIN.value:
    return None
  record = base_network(m, width, base)
  config = cell_config(flags.FLAGS.converged_config, m, width)
  config.init.path = record['path']
  config, fraction = common.converged(config, extra, seed, base_steps=record['steps'],
                                      generalist_share=_GENERALIST.value)
  untagged = os.path.join(cell_dir(m, width, base), f'E{fraction:g}', f'seed{seed}')
  workdir = tagged(untagged, tag)
  source = tagged(untagged, _SHARE_FROM.value)
  if tag and _SHARE.value and not os.path.exists(os.path.join(source, 'report.json')):
    # A linked stage that is not finished would be trained on inside the other run's folder.
    raise SystemExit(f'--share_stages: {source} is not a finished run: run this cell, E and seed '
                     f'{"with --tag=" + _SHARE_FROM.value if _SHARE_FROM.value else "without --tag"} first (with the '
                     'same --workdir), or share no stages.')
  print(f'{tagged(cell_name(m, width, base), tag)} E={fraction:g} seed {seed}: training '
        f'({config.vanilla.num_train_steps} steps an arm)', flush=True)
  report = common.run(config, workdir, reuse=tuple(_SHARE.value) if tag else (), source=source)
  summary = {**common.row('converged', fraction, seed, False, report, record['steps'], record['test_top1']),
             'specificity': m, 'width': width, 'base': base, 'extra_flag': None if extra is None else float(extra),
             'dataset_version': dataset_version(), 'tag': tag, 'shared_stages': list(_SHARE.value) if tag else [],
             'shared_from': _SHARE_FROM.value if tag and _SHARE.value else None,
             'per_superclass': report.get('per_superclass'), 'delta_alpha': report.get('storage', {}).get('alpha')}
  os.makedirs(_RUNS_DIR.value, exist_ok=True)
  files.write_text(summary_path(m, width, base, fraction, seed, tag), json.dumps(summary, indent=2, default=float) + '\n')
  return summary


def main(argv):
  del argv
  if _SHARE.value and not _TAG.value:
    raise app.UsageError('--share_stages links stages from the untagged run into a variant: give --tag too.')
  if _SHARE_FROM.value == _TAG.value and _SHARE.value:
    raise app.UsageError('--share_from names the run itself: give another tag, or none for the untagged run.')
  logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore at INFO; progress lines are printed
  specificities = [int(m) for m in _SPECIFICITY.value]
  widths = [float(w) for w in _WIDTHS.value]
  extras = [None if e == 'config' else float(e) for e in _EXTRA.value]
  capacity = tuple(float(w) for w in _CAPACITY.value) or None
  if capacity and (len(capacity) != 2 or not set(capacity) <= set(widths)):
    raise app.UsageError(f'--capacity={",".join(_CAPACITY.value)}: give two widths, both also in --widths.')
  rows = []
  # Seed-major: a stopped study has every cell at the same depth (the pilot's seed first, then the next seed).
  for seed in (int(s) for s in _SEEDS.value):
    for base in (int(b) for b in _BASES.value):
      for extra in extras:
        for m in specificities:
          for width in widths:
            summary = run_one(m, width, base, extra, seed)
            if summary is None:
              print(f"{cell_name(m, width, base)} E={'config' if extra is None else extra} seed {seed}: missing "
                    '(--train=false)', flush=True)
              continue
            if _SHOW.value:
              summary = {**summary, 'rules': {k: v for k, v in summary['rules'].items() if k in _SHOW.value}}
            rows.append(summary)
            print(f"{cell_name(m, width, base)} E={summary['extra']:g} seed {seed}: flat {summary['flat']:.4f}, "
                  + ', '.join(f'{k} {v:.4f}' for k, v in summary['rules'].items()), flush=True)
            if _OUT.value:
              common.write_map(_OUT.value, rows, capacity=capacity)
  if not rows:
    raise SystemExit(f'no finished run in {_RUNS_DIR.value}: run without --train=false first.')
  if _OUT.value:
    common.write_map(_OUT.value, rows, with_plot=True, rule=_PLOT_RULE.value, capacity=capacity)
  print(common.map_tables(rows, capacity))


if __name__ == '__main__':
  app.run(main)
