r"""Super-Sub against the flat network at equal compute, in two regimes, for every decision rule, with and without
dustbins, over seeds: where (if anywhere) the hierarchy pays.

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m studies.regimes --workdir=runs/regimes \
      --seeds=0,1,2 --out=docs/results/regimes

Regimes:

* ``converged`` (--converged_config, default configs/synthetic.py): the real path's shape. Both arms start from one
  converged flat network, ``config.init`` (the demo's committed network: its sidecar JSON records how long it
  trained and what doubling gained). An extra budget E (--extra: fractions of the base's own steps, or 'config':
  the config's own budgets, the demo's) is spent either on the flat network (the workdir's vanilla stage continues
  it, ``init.keep_head``), or on Super-Sub started from it: the generalist from its backbone for --generalist_share
  of E, the specialists the rest (``specialists.num_epochs`` fitted to it). The vanilla stage trains exactly
  Super-Sub's total.
* ``scratch`` (--scratch_config, default configs/synthetic_scratch.py): the pipeline from random weights, the vanilla
  network first; the ``vanilla_matched`` stage is the flat network trained for the whole pipeline's steps.

Every (regime, E, seed) runs in ``<workdir>/<regime>/E<E>/seed<s>/`` (``scratch``: ``E1``); with --dustbin true too,
``.../seed<s>_dustbin/`` reuses that run's flat network and generalist (linked) and trains dustbin specialists
(``specialists.dustbin``). A finished report.json is reused, so a rerun resumes. For each (regime, E, dustbin, rule of
``config.evaluate.rules``): Super-Sub minus the flat network at equal compute, paired over seeds, mean and 95%
Student-t interval; and the specialists minus the flat network, both given the true superclass (oracle routing).
That term is not a bound on its own: for every rule, Super-Sub - flat <= (specialists - flat, both given the
superclass) + (flat given the superclass - flat), since a rule can at best route as the oracle does. Writes <out>.json, <out>.md and <out>.png (top-1 against images seen, both regimes).
--train=false summarises the finished runs only (a partial study: several invocations of other flags, one table).
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from studies import common
from supersub_jax import plots

_WORKDIR = flags.DEFINE_string('workdir', None, 'Parent of the per-run workdirs.', required=True)
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'config.seed values (3 or more for an interval).')
_REGIMES = flags.DEFINE_list('regimes', ['converged', 'scratch'], 'Which regimes.')
_EXTRA = flags.DEFINE_list('extra', ['config', '0.25', '0.5', '1.0'], 'Converged regime: extra budgets, as '
                           "fractions of the base network's steps; 'config': --converged_config's own budgets (the "
                           "demo's, when it is configs/synthetic.py).")
_GENERALIST = flags.DEFINE_float('generalist_share', 0.25, 'Converged regime: the generalist\'s share of E.')
_BASE_STEPS = flags.DEFINE_integer('base_steps', 0, 'The base network\'s steps (0: from its sidecar JSON).')
_DUSTBIN = flags.DEFINE_list('dustbin', ['false', 'true'], 'Without and/or with dustbin specialists.')
_OUT = flags.DEFINE_string('out', '', 'Output path prefix (.json, .md, .png); empty: print only.')
_TRAIN = flags.DEFINE_bool('train', True, 'False: train nothing, summarise the runs already finished under --workdir '
                           '(a partial study; the others are listed as missing).')
config_flags.DEFINE_config_file('converged_config', 'configs/synthetic.py', 'The converged regime\'s config.',
                                lock_config=False)
config_flags.DEFINE_config_file('scratch_config', 'configs/synthetic_scratch.py', 'The scratch regime\'s config.',
                                lock_config=False)


def base_record(config) -> dict:
  """The converged base network's sidecar JSON (its 'steps' overridden by --base_steps)."""
  sidecar = os.path.splitext(os.path.expanduser(config.init.path))[0] + '.json'
  record = json.load(open(sidecar)) if os.path.exists(sidecar) else {}
  if _BASE_STEPS.value:
    record['steps'] = _BASE_STEPS.value
  if 'steps' not in record:
    raise ValueError(f'{sidecar} does not exist: pass --base_steps, the steps {config.init.path} trained for.')
  return record


def base_steps(config) -> int:
  """The converged base network's own training steps: --base_steps, else its sidecar's 'steps'."""
  return int(base_record(config)['steps'])


def converged(config, extra: float | None, seed: int) -> tuple[object, float]:
  """common.converged with this study's --generalist_share and the base's steps."""
  return common.converged(config, extra, seed, base_steps=base_steps(config), generalist_share=_GENERALIST.value)


def summarise(rows: list[dict]) -> list[dict]:
  """Per (regime, extra, dustbin, rule): Super-Sub minus the flat network, paired over seeds."""
  groups = {}
  for r in rows:
    groups.setdefault((r['regime'], r['extra'], r['dustbin']), []).append(r)
  out = []
  for (regime, extra, dustbin), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
    for rule in rs[0]['rules']:
      diffs = [r['rules'][rule] - r['flat'] for r in rs]
      mean, low, high = common.mean_interval(diffs)
      out.append({'regime': regime, 'extra': extra, 'dustbin': dustbin, 'rule': rule, 'seeds': len(rs),
                  'steps': rs[0]['steps'], 'flat': sum(r['flat'] for r in rs) / len(rs),
                  'supersub': sum(r['rules'][rule] for r in rs) / len(rs), 'minus_flat': mean, 'low': low,
                  'high': high, 'per_seed': diffs})
  return out


def oracle_summary(rows: list[dict]) -> list[dict]:
  """Per (regime, extra, dustbin): Super-Sub's specialists minus the flat network, both given the true superclass
  (oracle routing), paired over the seeds whose reports have the flat network's oracle top-1. Not a bound by itself:
  Super-Sub - flat <= this + (flat given the superclass - flat) under every rule (a rule routes no better than the
  oracle); where this is not above 0, what a rule can add over the flat network is at most what the oracle adds to
  the flat network itself."""
  groups = {}
  for r in rows:
    if r.get('flat_oracle') is not None:
      groups.setdefault((r['regime'], r['extra'], r['dustbin']), []).append(r)
  out = []
  for (regime, extra, dustbin), rs in sorted(groups.items()):
    diffs = [r['oracle'] - r['flat_oracle'] for r in rs]
    mean, low, high = common.mean_interval(diffs)
    out.append({'regime': regime, 'extra': extra, 'dustbin': dustbin, 'steps': rs[0]['steps'],
                'seeds': [r['seed'] for r in rs], 'flat_oracle': sum(r['flat_oracle'] for r in rs) / len(rs),
                'oracle': sum(r['oracle'] for r in rs) / len(rs), 'minus_flat': mean, 'low': low, 'high': high,
                'per_seed': diffs})
  return out


def oracle_table(summary: list[dict]) -> str:
  lines = ['| regime | extra steps | dustbin | seeds | flat, oracle routing | Super-Sub, oracle routing | '
           'specialists - flat, superclass given (points) |', '|---' * 7 + '|']
  for s in summary:
    interval = (f" [{100 * s['low']:+.2f}, {100 * s['high']:+.2f}]" if len(s['seeds']) > 1 else ' (one seed)')
    lines.append(f"| {s['regime']} | {s['steps']:,} | {'yes' if s['dustbin'] else 'no'} | "
                 f"{','.join(map(str, s['seeds']))} | {s['flat_oracle']:.4f} | {s['oracle']:.4f} | "
                 f"{100 * s['minus_flat']:+.2f}{interval} |")
  return '\n'.join(lines)


def shared_flat_oracle(rows: list[dict]) -> list[dict]:
  """The rows, copied, where a row without the flat network's oracle top-1 takes its sibling's: a dustbin run links
  its sibling's flat network, so both rows have that network's number, but a report written before the key existed
  lacks it. Never across seeds, E or regimes."""
  known = {(r['regime'], r['extra'], r['seed']): r['flat_oracle'] for r in rows if r.get('flat_oracle') is not None}
  return [r if r.get('flat_oracle') is not None
          else {**r, 'flat_oracle': known.get((r['regime'], r['extra'], r['seed']))} for r in rows]


def table(summary: list[dict]) -> str:
  lines = ['| regime | extra E | steps | dustbin | rule | flat top-1 | Super-Sub top-1 | Super-Sub - flat (points) | '
           '95% interval | seeds |', '|---|---|---|---|---|---|---|---|---|---|']
  for s in summary:
    interval = (f"[{100 * s['low']:+.2f}, {100 * s['high']:+.2f}]" if s['seeds'] > 1 else 'one seed')
    lines.append(f"| {s['regime']} | {s['extra']:g} | {s['steps']:,} | {'yes' if s['dustbin'] else 'no'} | "
                 f"{s['rule']} | {s['flat']:.4f} | {s['supersub']:.4f} | {100 * s['minus_flat']:+.2f} | {interval} | "
                 f"{s['seeds']} |")
  return '\n'.join(lines)


def wide_table(summary: list[dict]) -> str:
  """One line per (regime, E, dustbin), one column per rule: Super-Sub minus flat in points [95% interval]."""
  rules = list(dict.fromkeys(s['rule'] for s in summary))
  groups = {}
  for s in summary:
    groups.setdefault((s['regime'], s['extra'], s['dustbin']), {})[s['rule']] = s
  lines = ['| regime | extra steps | dustbin | seeds | flat top-1 | ' + ' | '.join(rules) + ' |',
           '|---' * (5 + len(rules)) + '|']
  for (regime, _, dustbin), by_rule in groups.items():
    first = next(iter(by_rule.values()))
    cells = []
    for rule in rules:
      s = by_rule.get(rule)
      if s is None:
        cells.append('-')
      elif s['seeds'] > 1:
        cells.append(f"{100 * s['minus_flat']:+.2f} [{100 * s['low']:+.2f}, {100 * s['high']:+.2f}]")
      else:
        cells.append(f"{100 * s['minus_flat']:+.2f} (one seed)")
    lines.append(f"| {regime} | {first['steps']:,} | {'yes' if dustbin else 'no'} | {first['seeds']} | "
                 f"{first['flat']:.4f} | " + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def tables(rows: list[dict], summary: list[dict], oracle: list[dict]) -> str:
  return ('Super-Sub minus the flat network at equal compute, points, paired 95% Student-t interval over seeds:\n\n'
          + wide_table(summary) + '\n\nThe same, one line per rule:\n\n' + table(summary)
          + '\n\nBoth arms given the true superclass (oracle routing); seeds whose reports have the flat network\'s '
          'oracle top-1. For every rule, Super-Sub - flat <= (specialists - flat, superclass given) + (flat given '
          'the superclass - flat):\n\n' + oracle_table(oracle)
          + '\n\nPer run (held-out top-1; the flat network\'s superclass top-1 sums its subclass probabilities; '
          'oracle routing: the true superclass given; the rules\' flat router is another network, the base '
          '(converged) or the vanilla stage (scratch)):\n\n' + seed_table(rows))


def seed_table(rows: list[dict]) -> str:
  """One line per run: both arms' top-1, the routers' superclass top-1 and oracle routing beside every rule."""
  rules = list(dict.fromkeys(rule for r in rows for rule in r['rules']))
  lines = ['| regime | extra E | seed | dustbin | flat top-1 | flat: superclass top-1 (summed) | '
           'generalist: superclass top-1 | flat, oracle routing | Super-Sub, oracle routing | ' + ' | '.join(rules)
           + ' |', '|---' * (9 + len(rules)) + '|']
  def cell(value):
    return '-' if value is None else f'{value:.4f}'
  for r in rows:
    lines.append(f"| {r['regime']} | {r['extra']:g} | {r['seed']} | {'yes' if r['dustbin'] else 'no'} | "
                 f"{cell(r['flat'])} | {cell(r.get('flat_superclass'))} | {cell(r['generalist'])} | "
                 f"{cell(r.get('flat_oracle'))} | {cell(r['oracle'])} | "
                 + ' | '.join(cell(r['rules'].get(rule)) for rule in rules) + ' |')
  return '\n'.join(lines)


def plot(data: dict, path: str) -> None:
  """Per regime, a column: top-1 of the flat network and of Super-Sub per rule against images seen (millions; mean
  over seeds; top row), and Super-Sub minus the flat network with its paired 95% interval per extra budget (bottom
  row: one slot per budget, the rules side by side within it, so no two intervals share an x). One legend."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rows, summary = data['rows'], data['summary']
  regimes = sorted({r['regime'] for r in rows})
  rules = sorted({s['rule'] for s in summary})
  colors = {rule: plt.get_cmap('tab10')(i % 10) for i, rule in enumerate(rules)}
  fig, axes = plt.subplots(2, len(regimes), figsize=(6.5 * len(regimes), 8.5), squeeze=False)
  handles = {}
  for column, regime in enumerate(regimes):
    top, bottom = axes[0][column], axes[1][column]
    seen_of = {}  # extra -> mean images seen (millions)
    for r in rows:
      if r['regime'] == regime:
        seen_of.setdefault(r['extra'], []).append(r['images_seen'] / 1e6)
    seen_of = {e: float(np.mean(v)) for e, v in seen_of.items()}
    mine = [r for r in rows if r['regime'] == regime and not r['dustbin']]
    extras = sorted({r['extra'] for r in mine})
    seen = [seen_of[e] for e in extras]
    flat = [np.mean([r['flat'] for r in mine if r['extra'] == e]) for e in extras]
    starts = [r['start'] for r in mine if r['start']['top1'] is not None]
    if starts:  # where the flat network was before the extra budget: the curve's first point
      seen = [np.mean([p['images_seen'] for p in starts]) / 1e6] + seen
      flat = [np.mean([p['top1'] for p in starts])] + flat
    handles['flat network'] = top.plot(seen, flat, 'o-', color='black')[0]
    budgets = sorted({s['extra'] for s in summary if s['regime'] == regime})
    steps = {s['extra']: s['steps'] for s in summary if s['regime'] == regime}
    variants = [(rule, dustbin) for dustbin in (False, True) for rule in rules]
    width = 0.8 / len(variants)
    for dustbin, style, marker in ((False, '-', 'o'), (True, '--', 's')):
      for rule in rules:
        points = sorted((s for s in summary if s['regime'] == regime and s['rule'] == rule and
                         s['dustbin'] == dustbin), key=lambda s: s['extra'])
        if not points:
          continue
        label = f"Super-Sub {rule}{' + dustbin' if dustbin else ''}"
        xs = np.array([seen_of[s['extra']] for s in points])
        handles[label] = top.plot(xs, [s['supersub'] for s in points], marker + style, color=colors[rule],
                                  alpha=0.8)[0]
        mean = np.array([100 * s['minus_flat'] for s in points])
        spread = np.array([[100 * (s['minus_flat'] - s['low']) if s['seeds'] > 1 else 0.0 for s in points],
                           [100 * (s['high'] - s['minus_flat']) if s['seeds'] > 1 else 0.0 for s in points]])
        slot = np.array([budgets.index(s['extra']) for s in points], float)
        shift = (variants.index((rule, dustbin)) - (len(variants) - 1) / 2) * width
        bottom.errorbar(slot + shift, mean, yerr=spread, fmt=marker, color=colors[rule], capsize=2, alpha=0.85,
                        markerfacecolor='white' if dustbin else colors[rule])
    bottom.axhline(0.0, color='black', linewidth=0.8)
    bottom.set_xticks(range(len(budgets)), [f'{steps[e]:,} extra steps' for e in budgets], fontsize=8)
    bottom.set_xlim(-0.6, len(budgets) - 0.4)
    top.set_xlabel('images seen, millions' + (' (base network + extra budget)' if regime == 'converged' else ''))
    top.set_ylabel('top-1 (mean over seeds)')
    top.set_title(f'{regime} regime')
    bottom.set_ylabel('Super-Sub - flat (points, paired 95% interval)')
    bottom.set_xlabel('extra budget (each: the rules side by side; hollow markers: dustbin specialists)')
    for ax in (top, bottom):
      ax.grid(alpha=0.3)
  fig.legend(list(handles.values()), list(handles), loc='lower center', ncol=min(6, len(handles)), fontsize=8,
             frameon=False)
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  plots.save_figure(fig, path, dpi=120)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore at INFO; progress lines are printed
  from supersub_jax import preflight, recipe  # pylint: disable=g-import-not-at-top
  seeds = [int(s) for s in _SEEDS.value]
  dustbins = [d.lower() == 'true' for d in _DUSTBIN.value]
  runs = []  # (regime, extra, seed, config, base steps, base top-1)
  for regime in _REGIMES.value:
    if regime == 'converged':
      record = base_record(flags.FLAGS.converged_config)
      base, base_top1 = int(record['steps']), record.get('test_top1')
      for extra in (None if e == 'config' else float(e) for e in _EXTRA.value):
        for s in seeds:
          config, fraction = converged(flags.FLAGS.converged_config, extra, s)
          runs.append((regime, fraction, s, config, base, base_top1))
    elif regime == 'scratch':
      runs += [(regime, 1.0, s, common.scratch(flags.FLAGS.scratch_config, s), 0, None) for s in seeds]
    else:
      raise ValueError(f'--regimes: unknown {regime!r}; use converged and/or scratch.')
  for *_, config, _, _ in runs:
    preflight.check(config)  # every run's config before the first one trains
  rows = []
  for regime, extra, seed, config, base, base_top1 in runs:
    workdir = os.path.join(os.path.abspath(_WORKDIR.value), regime, f'E{extra:g}', f'seed{seed}')
    for dustbin in dustbins:
      if dustbin:
        variant = config.copy_and_resolve_references()
        variant.specialists.dustbin = True
        reuse = ('vanilla', 'superclass') + (('vanilla_matched',) if 'vanilla_matched' in config.stages else ())
        report = common.run(variant, workdir + '_dustbin', reuse, workdir, _TRAIN.value)
      else:
        report = common.run(config, workdir, train=_TRAIN.value)
      if report is None:
        print(f"{regime} E={extra:g} seed {seed}{' dustbin' if dustbin else ''}: missing (not finished; "
              '--train=false)', flush=True)
        continue
      rows.append(common.row(regime, extra, seed, dustbin, report, base, base_top1))
      print(f"{regime} E={extra:g} seed {seed}{' dustbin' if dustbin else ''}: flat {rows[-1]['flat']:.4f}, "
            + ', '.join(f'{k} {v:.4f}' for k, v in rows[-1]['rules'].items()), flush=True)
      if _OUT.value:  # after every run, so a stopped study still leaves its tables so far
        write_outputs(rows)
  if not rows:
    raise SystemExit(f'no finished run under {_WORKDIR.value}: run without --train=false first.')
  if _OUT.value:
    summary, oracle = write_outputs(rows, with_plot=True)
  else:
    _, summary, oracle = summaries(rows)
  print(table(summary))
  print(oracle_table(oracle))


def summaries(rows: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
  """(rows with the flat oracle shared, summarise's rows, oracle_summary's rows) for the runs so far."""
  rows = shared_flat_oracle(rows)
  return rows, summarise(rows), oracle_summary(rows)


def write_outputs(rows: list[dict], with_plot: bool = False) -> tuple[list[dict], list[dict]]:
  """Writes --out's JSON and markdown (and the plot) for the runs so far; returns (summary, oracle summary)."""
  rows, summary, oracle = summaries(rows)
  common.write_results(_OUT.value, {'rows': rows, 'summary': summary, 'oracle': oracle},
                       tables(rows, summary, oracle), plot if with_plot else None)
  return summary, oracle


if __name__ == '__main__':
  app.run(main)
