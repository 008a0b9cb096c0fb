"""What the studies share: one converged-regime run (config, train and evaluate, its row), their statistics, and
the files of their results (``write_results``, from ``supersub_jax.files``, which the benchmarks use too).

No flags here: each study (``python -m studies.<name>``) defines its own and passes the values in.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

from supersub_jax.files import write_results  # pylint: disable=unused-import,g-importing-member  (the studies' name)


def converged(config, extra: float | None, seed: int, *, base_steps: int,
              generalist_share: float = 0.25) -> tuple[object, float]:
  """(config, E as a fraction of the base's steps) of the converged regime at an extra budget of ``extra`` x the
  base's ``base_steps``: the generalist gets ``generalist_share`` of it, the specialists the rest; ``extra`` None
  keeps the config's own generalist steps and specialist epochs. The flat network (the vanilla stage, continuing
  ``config.init``) gets exactly Super-Sub's total steps."""
  from supersub_jax import setup_of, stages  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  if not (config.init.path and config.init.keep_head and not config.superclass.init_from_vanilla):
    raise ValueError('the converged regime continues config.init: give it init.path, init.keep_head=True and '
                     'superclass.init_from_vanilla=False (as configs/synthetic.py does).')
  config.seed = seed
  config.stages = ('vanilla', 'superclass', 'specialists')
  hierarchy = setup_of.make_hierarchy(config)
  if extra is not None:
    budget = round(extra * base_steps)
    config.superclass.num_train_steps = max(1, round(generalist_share * budget))
    config.specialists.num_epochs = stages.specialist_epochs_for(config, hierarchy,
                                                                 budget - config.superclass.num_train_steps)
  config.vanilla.num_train_steps = stages.pipeline_steps(config, hierarchy)['total']  # equal compute, exactly
  return config, round(config.vanilla.num_train_steps / base_steps, 4)


def scratch(config, seed: int):
  config = config.copy_and_resolve_references()
  config.seed = seed
  config.stages = ('vanilla', 'superclass', 'specialists', 'vanilla_matched')
  return config


def run(config, workdir: str, reuse: tuple[str, ...] = (), source: str | None = None,
        train: bool = True) -> dict | None:
  """Trains and evaluates one workdir (a finished report.json is reused); links ``reuse``'s stage directories
  from ``source`` first. With ``train`` False, an unfinished workdir gives None and nothing runs."""
  from supersub_jax import config as config_lib, evaluation, recipe  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'report.json')
  if os.path.exists(path):
    # Another base network (init.path, harmless to a checkpoint's resume) is another run here.
    changed = [d for d in config_lib.differences(config_lib.read(workdir), config)
               if d.startswith('init.path:') or not d.split(':', 1)[0].startswith(config_lib.HARMLESS)]
    if changed:
      raise ValueError(f'{workdir} holds a finished run of other settings ({"; ".join(changed[:5])}): rerun with the '
                       'flags it was made with, or use a fresh --workdir.')
    return json.load(open(path))
  if not train:
    return None
  os.makedirs(workdir, exist_ok=True)
  for stage in reuse:
    if not os.path.exists(os.path.join(workdir, stage)):
      os.symlink(os.path.join(source, stage), os.path.join(workdir, stage))
  recipe.run(config, workdir)
  return evaluation.run(config, workdir)


def flat_arm(report: dict) -> tuple[float, int]:
  """(top-1, steps) of the flat network given Super-Sub's compute in ``report``."""
  matched = report.get('baselines', {}).get('vanilla_matched')
  if matched:
    return matched['top1'], matched['steps']
  return report['vanilla']['top1'], report['compute']['vanilla_steps']


def row(regime: str, extra: float, seed: int, dustbin: bool, report: dict, base: int,
        base_top1: float | None = None) -> dict:
  """One run's numbers; 'start' is the flat network's point before the extra budget (images seen, top-1): the base
  network in the converged regime, the vanilla stage in the scratch regime (the flat recipe at 1,200 steps: another
  run than the 2,450-step flat network, so the plot's scratch curve joins two budgets, not one run's trajectory)."""
  flat, flat_steps = flat_arm(report)
  steps = report['compute']['supersub_steps']['total']
  if flat_steps != steps:
    raise ValueError(f'{regime} E={extra} seed {seed}: the flat network trained {flat_steps} steps, Super-Sub '
                     f'{steps}: not equal compute.')
  batch = report['compute']['batch_size']
  seen = (base + steps) * batch  # images seen since a random start: the base network's, then the extra budget
  if regime == 'scratch':
    start = {'images_seen': report['compute']['vanilla_steps'] * batch, 'top1': report['vanilla']['top1']}
  else:
    start = {'images_seen': base * batch, 'top1': base_top1}
  return {'regime': regime, 'extra': extra, 'seed': seed, 'dustbin': dustbin, 'steps': steps, 'base_steps': base,
          'start': start, 'images_seen': seen, 'flat': flat, 'generalist': report['superclass']['top1'],
          # the flat network's summed subclass probabilities as a router (the continued network's; the scratch
          # regime's compute-matched one is not measured by evaluation.py)
          'flat_superclass': None if report.get('baselines', {}).get('vanilla_matched')
                             else report['vanilla'].get('superclass_top1'),
          # the flat arm with the true superclass given: the reference for oracle routing (reports since 2026-12-03)
          'flat_oracle': (report.get('baselines', {}).get('vanilla_matched') or report['vanilla']).get('oracle_top1'),
          'oracle': report['supersub']['oracle_top1'],
          'rules': {name: r['top1'] for name, r in report['rules'].items()},
          'images_per_s': {name: r.get('images_per_s') for name, r in report['rules'].items()}}


# ----------------------------------------------------------------------------------------------------------------------
# Statistics


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
  """(mean, low, high): the Student-t interval for the mean of ``values`` (paired differences over seeds); NaN bounds for fewer
  than two values."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  v = np.asarray(values, float)
  mean = float(v.mean())
  if v.size < 2:
    return mean, float('nan'), float('nan')
  half = float(stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
  return mean, mean - half, mean + half


def welch_interval(a, b, confidence: float = 0.95) -> tuple[float, float, float]:
  """(mean(a) - mean(b), low, high): Welch's Student-t interval for a difference of means of two unpaired samples
  (runs from different base networks share no randomness); NaN bounds when either has fewer than two values."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  a, b = np.asarray(a, float), np.asarray(b, float)
  diff = float(a.mean() - b.mean())
  if a.size < 2 or b.size < 2:
    return diff, float('nan'), float('nan')
  va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
  se = np.sqrt(va + vb)
  if se == 0:
    return diff, diff, diff
  dof = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
  half = float(stats.t.ppf(0.5 + confidence / 2, dof) * se)
  return diff, diff - half, diff + half


def interaction(m: np.ndarray, width: np.ndarray, gap: np.ndarray, confidence: float = 0.95) -> dict:
  """Least squares gap ~ b0 + b_m m' + b_w w' + b_mw m' w', with m' the specificity and w' the log2 width, each
  scaled to [0, 1] over the values present (a 2 x 2 grid: indicator coding). Returns every coefficient as (estimate,
  low, high) with Student-t intervals on the residual degrees of freedom (NaN bounds when there are none), and 'dof'.
  One model of all runs: the interaction is tested once, not read off separate intervals. With a cell of the 2 x 2
  grid missing the interaction is not identified and the model keeps the main effects alone."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  def scaled(x):
    x = np.asarray(x, float)
    span = x.max() - x.min()
    return (x - x.min()) / span if span else np.zeros_like(x)

  ms, ws = scaled(m), scaled(np.log2(width))
  columns = [np.ones_like(ms), ms, ws, ms * ws]
  names = ['intercept', 'specificity', 'width', 'specificity x width']
  keep = [i for i, c in enumerate(columns) if i == 0 or np.ptp(c) > 0]  # a grid with one m (or w) has no such term
  x = np.stack([columns[i] for i in keep], axis=1)
  if np.linalg.matrix_rank(x) < x.shape[1] and keep[-1] == 3:
    # Three cells of a 2 x 2 grid: the interaction is not identified; the main effects are.
    keep = keep[:-1]
    x = x[:, :-1]
  y = np.asarray(gap, float)
  beta, *_ = np.linalg.lstsq(x, y, rcond=None)
  dof = len(y) - x.shape[1]
  out = {'dof': int(dof)}
  if dof > 0:
    sigma2 = float(np.sum((y - x @ beta) ** 2) / dof)
    se = np.sqrt(np.diag(sigma2 * np.linalg.pinv(x.T @ x)))
    half = stats.t.ppf(0.5 + confidence / 2, dof) * se
  else:
    half = np.full(len(beta), np.nan)
  for i, b, h in zip(keep, beta, half):
    out[names[i]] = (float(b), float(b - h), float(b + h))
  return out


# ----------------------------------------------------------------------------------------------------------------------
# The map (studies/map.py)


def map_summary(rows: list[dict]) -> dict:
  """Per (E, specificity, width): every rule's gap (Super-Sub minus flat) over the (base, seed) runs, and both arms
  given the true superclass; per (E, rule): the interaction model over all runs."""
  cells, models = [], []
  for extra in sorted({r['extra'] for r in rows}):
    at = [r for r in rows if r['extra'] == extra]
    rules = list(dict.fromkeys(rule for r in at for rule in r['rules']))
    for m in sorted({r['specificity'] for r in at}):
      for width in sorted({r['width'] for r in at}):
        rs = [r for r in at if r['specificity'] == m and r['width'] == width]
        if not rs:
          continue
        cell = {'extra': extra, 'steps': rs[0]['steps'], 'specificity': m, 'width': width,
                'runs': [(r['base'], r['seed']) for r in rs], 'bases': sorted({r['base'] for r in rs}),
                'flat': float(np.mean([r['flat'] for r in rs])), 'rules': {}}
        for rule in rules:
          gaps = [r['rules'][rule] - r['flat'] for r in rs if rule in r['rules']]
          mean, low, high = mean_interval(gaps)
          cell['rules'][rule] = {'supersub': float(np.mean([r['rules'][rule] for r in rs if rule in r['rules']])),
                                 'gap': mean, 'low': low, 'high': high, 'per_run': gaps}
        given = [r for r in rs if r.get('flat_oracle') is not None]
        if given:
          mean, low, high = mean_interval([r['oracle'] - r['flat_oracle'] for r in given])
          cell['given_superclass'] = {'flat': float(np.mean([r['flat_oracle'] for r in given])),
                                      'supersub': float(np.mean([r['oracle'] for r in given])),
                                      'gap': mean, 'low': low, 'high': high}
        cells.append(cell)
    for rule in rules:
      rs = [r for r in at if rule in r['rules']]
      if len({r['specificity'] for r in rs}) > 1 or len({r['width'] for r in rs}) > 1:
        models.append({'extra': extra, 'rule': rule, 'runs': len(rs), **interaction(
            np.array([r['specificity'] for r in rs]), np.array([r['width'] for r in rs]),
            np.array([r['rules'][rule] - r['flat'] for r in rs]))})
  return {'cells': cells, 'models': models}


def capacity_comparison(rows: list[dict], width: float, wide: float) -> list[dict]:
  """Per (E, specificity, rule): Super-Sub at ``width`` minus the flat network at ``wide`` (a width with about as
  many stored parameters as Super-Sub's generalist plus its deltas), each over its own runs: the two come from
  different base networks, so the interval is Welch's, unpaired. The wider network also spends more FLOPs a step:
  equal compute here is equal steps and images."""
  out = []
  for extra in sorted({r['extra'] for r in rows}):
    for m in sorted({r['specificity'] for r in rows}):
      ours = [r for r in rows if (r['extra'], r['specificity'], r['width']) == (extra, m, width)]
      theirs = [r['flat'] for r in rows if (r['extra'], r['specificity'], r['width']) == (extra, m, wide)]
      if not ours or not theirs:
        continue
      for rule in dict.fromkeys(rule for r in ours for rule in r['rules']):
        values = [r['rules'][rule] for r in ours if rule in r['rules']]
        diff, low, high = welch_interval(values, theirs)
        out.append({'extra': extra, 'steps': ours[0]['steps'], 'specificity': m, 'width': width, 'wide': wide,
                    'rule': rule, 'supersub': float(np.mean(values)), 'wide_flat': float(np.mean(theirs)),
                    'runs': (len(values), len(theirs)), 'gap': diff, 'low': low, 'high': high})
  return out


def capacity_lines(comparisons: list[dict]) -> list[str]:
  if not comparisons:
    return []
  lines = ['', 'Against a wider flat network (about as many stored parameters as Super-Sub\'s generalist plus its deltas, '
           'its own base network, the same steps): Super-Sub minus it, points, Welch 95% interval (unpaired):', '',
           '| extra steps | specificity m | Super-Sub width | flat width | rule | runs (Super-Sub, flat) | Super-Sub | '
           'wider flat | difference |', '|---' * 9 + '|']
  for c in comparisons:
    lines.append(f"| {c['steps']:,} | {c['specificity']} | {c['width']:g} | {c['wide']:g} | {c['rule']} | "
                 f"{c['runs'][0]}, {c['runs'][1]} | {c['supersub']:.4f} | {c['wide_flat']:.4f} | "
                 f"{_points(c['gap'], c['low'], c['high'])} |")
  return lines


def per_base_lines(rows: list[dict], rules: list[str]) -> list[str]:
  """Markdown lines: for each cell run from more than one base network, every rule's gap over each base's seeds
  alone (paired 95% t interval): whether a cell pays on each base, not only pooled."""
  keys = sorted({(r['extra'], r['specificity'], r['width']) for r in rows})
  multi = [k for k in keys if len({r['base'] for r in rows if (r['extra'], r['specificity'], r['width']) == k}) > 1]
  if not multi:
    return []
  lines = ['', 'Cells run from more than one base network, each base alone (paired 95% t interval over its seeds):', '',
           '| extra steps | specificity m | width | base | runs | ' + ' | '.join(rules) + ' |', '|---' * (5 + len(rules)) + '|']
  for extra, m, width in multi:
    at = [r for r in rows if (r['extra'], r['specificity'], r['width']) == (extra, m, width)]
    for base in sorted({r['base'] for r in at}):
      rs = [r for r in at if r['base'] == base]
      cells = [_points(*mean_interval([r['rules'][rule] - r['flat'] for r in rs if rule in r['rules']]))
               if any(rule in r['rules'] for r in rs) else '-' for rule in rules]
      lines.append(f"| {rs[0]['steps']:,} | {m} | {width:g} | {base} | {len(rs)} | " + ' | '.join(cells) + ' |')
  return lines


def _points(mean, low, high) -> str:
  if np.isnan(low):
    return f'{100 * mean:+.2f} (one run)'
  return f'{100 * mean:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]'


def grid_rows(rows: list[dict], capacity: tuple[float, float] | None) -> list[dict]:
  """The runs of the map's cells: with ``capacity``, the wider width's runs are a baseline, not a cell."""
  return [r for r in rows if not capacity or r['width'] != capacity[1]]


def _cell_lines(cells: list[dict], rules: list[str]) -> list[str]:
  """One markdown row per cell of ``map_summary``: its runs, flat top-1, every rule's gap, the gap given the
  superclass."""
  lines = []
  for c in cells:
    given = c.get('given_superclass')
    lines.append(f"| {c['steps']:,} | {c['specificity']} | {c['width']:g} | {len(c['runs'])} | {c['flat']:.4f} | "
                 + ' | '.join(_points(c['rules'][r]['gap'], c['rules'][r]['low'], c['rules'][r]['high'])
                              if r in c['rules'] else '-' for r in rules)
                 + f" | {_points(given['gap'], given['low'], given['high']) if given else '-'} |")
  return lines


def map_tables(rows: list[dict], capacity: tuple[float, float] | None = None) -> str:
  """The map's markdown; with ``capacity`` (width, wider width), also Super-Sub at the first against the flat
  network at the second (``capacity_comparison``)."""
  every, rows = rows, grid_rows(rows, capacity)
  summary = map_summary(rows)
  lines = []
  cells = summary['cells']
  rules = list(dict.fromkeys(rule for c in cells for rule in c['rules']))
  lines += ['Super-Sub minus the flat network at equal compute, points, paired 95% Student-t interval over the '
            '(base, seed) runs of each cell:', '',
            '| extra steps | specificity m | width | runs | flat top-1 | ' + ' | '.join(rules)
            + ' | given the superclass: specialists - flat |', '|---' * (6 + len(rules)) + '|']
  lines += _cell_lines(cells, rules)
  lines += per_base_lines(rows, rules)
  if summary['models']:
    lines += ['', 'One model of all runs per budget and rule: gap ~ 1 + m + w + m x w (m: specificity, w: log2 width, '
              'each scaled to [0, 1] over the grid), coefficients in points [95% t interval]:', '',
              '| extra steps | rule | runs | dof | intercept | specificity | width | specificity x width |',
              '|---' * 8 + '|']
    steps = {c['extra']: c['steps'] for c in cells}
    for mdl in summary['models']:
      lines.append(f"| {steps[mdl['extra']]:,} | {mdl['rule']} | {mdl['runs']} | {mdl['dof']} | "
                   + ' | '.join(_points(*mdl[k]) if k in mdl else '-'
                                for k in ('intercept', 'specificity', 'width', 'specificity x width')) + ' |')
  if capacity:
    lines += capacity_lines(capacity_comparison(every, *capacity))
    wide = map_summary([r for r in every if r['width'] == capacity[1]])['cells']
    if wide:
      lines += ['', f'Super-Sub at the wider width ({capacity[1]:g}) against the flat network of that width, from the '
                'same base network (paired, as the cells above):', '',
                '| extra steps | specificity m | width | runs | flat top-1 | ' + ' | '.join(rules)
                + ' | given the superclass: specialists - flat |', '|---' * (6 + len(rules)) + '|']
      lines += _cell_lines(wide, rules)
  lines += ['', 'Difficulty of each superclass\'s cue: the flat network given the true superclass, per superclass '
            '(mean over runs; cue kind at that specificity, data/cues.py), and Super-Sub\'s specialists given it:', '']
  lines += difficulty_table(rows)
  lines += ['', 'Per run (held-out top-1):', '',
            '| specificity m | width | base | extra steps | seed | flat | flat, superclass given | '
            'Super-Sub, superclass given | ' + ' | '.join(rules) + ' |', '|---' * (8 + len(rules)) + '|']
  for r in sorted(every, key=lambda r: (r['extra'], r['specificity'], r['width'], r['base'], r['seed'])):
    lines.append(f"| {r['specificity']} | {r['width']:g} | {r['base']} | {r['steps']:,} | {r['seed']} | "
                 f"{r['flat']:.4f} | {r['flat_oracle'] if r.get('flat_oracle') is None else format(r['flat_oracle'], '.4f')} | "
                 f"{r['oracle']:.4f} | " + ' | '.join(f"{r['rules'][x]:.4f}" if x in r['rules'] else '-' for x in rules)
                 + ' |')
  return '\n'.join(lines)


def difficulty_table(rows: list[dict]) -> list[str]:
  """Markdown lines: per superclass, per (specificity, width, extra) column, 'flat / specialists' given the true
  superclass (the per-superclass oracle top-1 of both arms), mean over the runs that report it."""
  from supersub_jax.data import cues  # pylint: disable=g-import-not-at-top
  have = [r for r in rows if r.get('per_superclass') and 'vanilla_oracle_top1' in r['per_superclass'][0]]
  if not have:
    return ['(no run reports per-superclass oracle accuracy)']
  columns = sorted({(r['specificity'], r['width'], r['extra']) for r in have})
  steps = {r['extra']: r['steps'] for r in have}
  lines = ['| superclass | subclasses | ' + ' | '.join(f'm={m}, w={w:g}, {steps[e]:,} steps' for m, w, e in columns)
           + ' |', '|---' * (2 + len(columns)) + '|']
  for s, first in enumerate(have[0]['per_superclass']):
    cells = []
    for m, w, e in columns:
      rs = [r for r in have if (r['specificity'], r['width'], r['extra']) == (m, w, e)]
      flat = np.mean([r['per_superclass'][s]['vanilla_oracle_top1'] for r in rs])
      spec = np.mean([r['per_superclass'][s]['oracle_top1'] for r in rs])
      kind = cues.CUE_KINDS[s % m] if m else 'grating'
      cells.append(f'{kind}: {flat:.3f} / {spec:.3f}')
    lines.append(f"| {s} | {first['num_subclasses']} | " + ' | '.join(cells) + ' |')
  return lines


def plot_map(data: dict, path: str, rule: str = 'hard') -> None:
  """One panel per extra budget: cells (specificity x width) coloured by Super-Sub minus flat under ``rule``, with
  the mean and interval written in each; one colour bar."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  cells = [c for c in data['summary']['cells'] if rule in c['rules']]
  if not cells:
    rules = sorted({r for c in data['summary']['cells'] for r in c['rules']})
    raise ValueError(f'no cell has the rule {rule!r} to colour the map by: use one of {rules} (--plot_rule).')
  extras = sorted({c['extra'] for c in cells})
  ms = sorted({c['specificity'] for c in cells})
  ws = sorted({c['width'] for c in cells})
  bound = max([abs(100 * c['rules'][rule]['gap']) for c in cells] + [0.5])
  fig, axes = plt.subplots(1, len(extras), figsize=(4.2 * len(extras) + 1.6, 3.8), squeeze=False,
                           layout='constrained')
  image = None
  for ax, extra in zip(axes[0], extras):
    grid = np.full((len(ws), len(ms)), np.nan)
    for c in (c for c in cells if c['extra'] == extra):
      i, j = ws.index(c['width']), ms.index(c['specificity'])
      r = c['rules'][rule]
      grid[i, j] = 100 * r['gap']
      interval = '' if np.isnan(r['low']) else f"\n[{100 * r['low']:+.2f}, {100 * r['high']:+.2f}]"
      dark = abs(100 * r['gap']) > 0.6 * bound  # white on the deep colours, black on the pale ones
      ax.text(j, i, f"{100 * r['gap']:+.2f}{interval}\n{len(c['runs'])} run{'s' * (len(c['runs']) > 1)}",
              ha='center', va='center', fontsize=8, color='white' if dark else 'black')
    for i, j in zip(*np.nonzero(np.isnan(grid))):
      ax.text(j, i, 'not run', ha='center', va='center', fontsize=8, color='grey')  # blank must not read as 0
    image = ax.imshow(grid, cmap='RdBu', vmin=-bound, vmax=bound, origin='lower')
    steps = next(c['steps'] for c in cells if c['extra'] == extra)
    ax.set_title(f'{steps:,} extra steps an arm', fontsize=9)
    ax.set_xticks(range(len(ms)), [str(m) for m in ms])
    ax.set_yticks(range(len(ws)), [f'{w:g}' for w in ws])
    ax.set_xlabel('cue specificity m (1: shared cue, 10: one kind per superclass)', fontsize=8)
    ax.set_ylabel('width multiplier', fontsize=8)
  fig.colorbar(image, ax=axes[0].tolist(), label=f'Super-Sub ({rule}) - flat, points')
  fig.suptitle('Super-Sub minus the flat network at equal compute (blue: Super-Sub ahead)', fontsize=10)
  # The capacity baseline is not a cell: it is said under the map, where a reader of the colours looks next.
  wider = [c for c in data.get('capacity', []) if c['rule'] == rule]
  if wider:
    fig.supxlabel('\n'.join(
        f"m {c['specificity']}, width {c['width']:g}, {c['steps']:,} steps: Super-Sub minus a flat network of width "
        f"{c['wide']:g}\n(about as many stored parameters) {_points(c['gap'], c['low'], c['high'])} points, Welch, "
        f"{c['runs'][0]} and {c['runs'][1]} runs" for c in wider), fontsize=8)
  from supersub_jax import plots  # pylint: disable=g-import-not-at-top
  plots.save_figure(fig, path, dpi=120)


def write_map(prefix: str, rows: list[dict], with_plot: bool = False, rule: str = 'hard',
              capacity: tuple[float, float] | None = None) -> None:
  """<prefix>.json and .md (map_summary, map_tables, and the capacity comparison where ``capacity`` is given); with
  ``with_plot``, <prefix>.png coloured by ``rule``."""
  plot = functools.partial(plot_map, rule=rule) if with_plot else None
  data = {'rows': rows, 'summary': map_summary(grid_rows(rows, capacity))}
  if capacity:
    data['capacity'] = capacity_comparison(rows, *capacity)
  write_results(prefix, data, map_tables(rows, capacity), plot)


def given_superclass(logits: np.ndarray, labels: np.ndarray, sizes) -> list[float]:
  """Per superclass s, the top-1 of its images (global ``labels``, int [N]) when the argmax runs over s's subclasses
  alone (``logits`` float [N, sum(sizes)]): the flat network given the true superclass, as evaluation computes it
  (``decide.within_superclass``, ``report.per_superclass_accuracy``)."""
  from supersub_jax import decide, report  # pylint: disable=g-import-not-at-top  (decide imports jax)
  label_to_superclass = np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)
  superclass = label_to_superclass[labels]
  pred = np.asarray(decide.within_superclass(logits, superclass, label_to_superclass))
  return [float(a) for a in report.per_superclass_accuracy(pred, np.asarray(labels), superclass, len(sizes))]


def superclass_level(logits: np.ndarray, labels: np.ndarray, sizes) -> dict:
  """The flat network's superclass: top-1 of the superclass with the most summed subclass probability (logits float
  [N, sum(sizes)], global labels int [N]), per superclass and overall, and the share of its errors that name the true
  superclass's morph partner (render.partner). The superclass is the flat router's (``decide.router_probs('flat')``),
  as evaluation computes it."""
  from supersub_jax import decide  # pylint: disable=g-import-not-at-top  (decide imports jax)
  from supersub_jax.data import render  # pylint: disable=g-import-not-at-top
  label_to_superclass = np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)
  pred = np.argmax(np.asarray(decide.router_probs('flat', None, logits, label_to_superclass, len(sizes))), -1)
  true = label_to_superclass[labels]
  wrong = pred != true
  return {'top1': float(np.mean(~wrong)),
          'per_superclass': [float(np.mean(pred[true == s] == s)) if (true == s).any() else float('nan')
                             for s in range(len(sizes))],
          'partner_share': float(np.mean(pred[wrong] == render.partner(true[wrong]))) if wrong.any() else 0.0}


def superclass_readouts(logits: np.ndarray, sizes) -> dict[str, np.ndarray]:
  """Superclass scores (float [N, S] each) from subclass logits (float [N, sum(sizes)], superclass-major order):
  'logsumexp' (log of the summed subclass probabilities, up to a per-image constant), 'max' and 'mean + log n'."""
  label_to_superclass = np.repeat(np.arange(len(sizes)), sizes)
  shifted = logits - logits.max(-1, keepdims=True)
  groups = [shifted[:, label_to_superclass == s] for s in range(len(sizes))]
  return {'logsumexp': np.stack([np.log(np.exp(g).sum(-1)) for g in groups], -1),
          'max': np.stack([g.max(-1) for g in groups], -1),
          'mean + log n': np.stack([g.mean(-1) + np.log(g.shape[-1]) for g in groups], -1)}
