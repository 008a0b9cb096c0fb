"""The report as a person reads it: the headline (its verdict), the terminal table and report.md, from a report
(``report.build``; the keys of ``report``'s schema).

Wherever a person reads (the terminal table, report.md, the plots), the network of the 'vanilla' stage is "the flat
network" (``FLAT``); the JSON keys keep the stage's name. Both open with ``headline``, the verdict.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# One name wherever a person reads: the network of the 'vanilla' stage (one network over all subclasses) is the
# flat network; report.json keeps the stage's name in its keys.
FLAT = 'flat network'
SEEDS_NOTE = ('one seed: the interval over seeds is in docs/benchmarks.md and docs/results/ '
              '(studies/seeds.py, studies/regimes.py)')


def _fmt_bytes(n: float) -> str:
  for unit in ('B', 'KiB', 'MiB', 'GiB'):
    if abs(n) < 1024 or unit == 'GiB':
      return f'{n:,.1f} {unit}' if unit != 'B' else f'{int(n):,} B'
    n /= 1024
  return str(n)


def _points(value: float, interval: Sequence[float] | None = None) -> str:
  text = f'{100 * value:+.2f}'
  if interval is not None and np.all(np.isfinite(interval)):
    text += f' [{100 * interval[0]:+.2f}, {100 * interval[1]:+.2f}]'
  return text


def _meaning(interval: Sequence[float] | None, count: int) -> str:
  if interval is None or not np.all(np.isfinite(interval)):
    return 'no interval'
  if interval[0] > 0:
    return f'Super-Sub ahead on these {count:,} test images'
  if interval[1] < 0:
    return f'Super-Sub behind on these {count:,} test images'
  return f'a tie on these {count:,} test images'


def _steps_of_supersub(compute: Mapping) -> str:
  """'generalist 60 + specialists 250' (+ the flat network it starts from, when it does)."""
  steps = compute['supersub_steps']
  parts = ([f"the {FLAT} it starts from {steps['vanilla']:,}"] if steps['vanilla'] else []) + [
      f"generalist {steps['superclass']:,}", f"specialists {steps['specialists']:,}"]
  return ' + '.join(parts)


def verdict(report: Mapping) -> dict:
  """What the headline reports: Super-Sub under ``report['verdict_rule']`` ('hard', the paper's rule routed by the
  generalist, unless the config names another) against the flat network, the compute-matched one
  (``vanilla_matched``) when the run has it and the vanilla network had less compute than Super-Sub. Returns
  {'name' (how Super-Sub is named), 'top1', 'flat', 'flat_name', 'flat_steps', 'gap', 'interval'}."""
  r = report
  rule = r.get('verdict_rule', 'hard')
  compute, matched = r.get('compute'), r.get('baselines', {}).get('vanilla_matched')
  total = compute['supersub_steps']['total'] if compute else None
  use_matched = bool(matched and compute and compute['vanilla_steps'] < total)
  if rule == 'hard':
    name, top1 = 'Super-Sub', r['supersub']['top1']
    if use_matched:
      gap, interval = matched['supersub_minus'], matched.get('supersub_minus_interval')
    else:
      gap, interval = top1 - r['vanilla']['top1'], r['supersub'].get('minus_vanilla_interval')
  else:
    row = r['rules'][rule]
    name, top1 = f'Super-Sub (rule {rule})', row['top1']
    key = 'minus_vanilla_matched' if use_matched else 'minus_vanilla'
    gap, interval = row[key], row.get(f'{key}_interval')
  if use_matched:
    flat, flat_steps, flat_name = matched['top1'], matched['steps'], f'the {FLAT} trained as long (vanilla_matched)'
  else:
    flat, flat_steps, flat_name = r['vanilla']['top1'], (compute or {}).get('vanilla_steps'), f'the {FLAT}'
  return {'name': name, 'top1': top1, 'flat': flat, 'flat_name': flat_name, 'flat_steps': flat_steps, 'gap': gap,
          'interval': interval}


def headline(report: Mapping) -> str:
  """The report's first line, its verdict (``verdict``): both arms' top-1, the difference in points with its 95%
  interval over the test images and what it means, the compute each arm got, the start they share, and where the
  interval over seeds lives."""
  r, v = report, verdict(report)
  compute = r.get('compute')
  total = compute['supersub_steps']['total'] if compute else None
  line = (f"{v['name']} {v['top1']:.4f} vs {v['flat_name']} {v['flat']:.4f} top-1: {_points(v['gap'], v['interval'])} "
          f"points ({_meaning(v['interval'], r.get('test_count', 0))})")
  if compute:
    if v['flat_steps'] == total:
      line += f"; equal compute, {total:,} optimizer steps each at batch {compute['batch_size']}"
    else:
      line += f"; NOT equal compute: the {FLAT} {v['flat_steps']:,} optimizer steps, Super-Sub {total:,}"
    line += f" (Super-Sub: {_steps_of_supersub(compute)})"
    if compute.get('start'):
      line += f"; both start from {compute['start']}"
  return line + f'; {SEEDS_NOTE}.'


def _cell_text(cell: Mapping) -> str:
  bases = cell['bases']
  return (f"{_points(cell['gap'], (cell['low'], cell['high']))} points over {cell['runs']} run(s) on "
          f"{len(bases)} base network(s)")


def map_line(report: Mapping) -> str | None:
  """Where the run sits on the committed map (``report['map']``, ``report.map_cell``): its cell, what the map
  measured there and in the control cell (specificity 1) beside it; None without a map."""
  where = report.get('map')
  if not where:
    return None
  cell, control = where.get('cell'), where.get('control')
  setting = where.get('setting', {})
  m, width, steps = setting.get('specificity'), setting.get('width'), setting.get('steps')
  kind = ('each superclass\'s subclasses differ by a cue kind only it uses' if m and m > 1 else
          'one kind of cue tells the subclasses apart in every superclass' if m == 1 else
          'the gratings of the default data')
  line = (f"This run is the cell specificity {m}, width {width:g}, {steps:,} steps an arm ({kind}) of the map "
          f"{where.get('source', '')}: Super-Sub ({where['rule']}) minus the {FLAT} there, paired 95% intervals: ")
  line += f"this cell {_cell_text(cell)}" if cell else 'this cell is not on the map'
  if m != 1:
    line += (f"; the control cell (specificity 1, the same width and steps) {_cell_text(control)}" if control
             else '; the control cell (specificity 1) is not on the map')
  wider = where.get('wider')
  if wider:
    line += (f"; against a flat network of width {wider['wide']:g} (about as many stored parameters as Super-Sub, "
             f"its own base networks, the same steps) {_points(wider['gap'], (wider['low'], wider['high']))} points "
             f"(Welch, {wider['runs'][0]} and {wider['runs'][1]} runs)")
  return line + '.'


def _matched_trained_as_long(r: Mapping) -> bool:
  """Whether the vanilla_matched baseline trained for exactly Super-Sub's total steps (a linked or reused stage may
  not have)."""
  matched, compute = r['baselines']['vanilla_matched'], r.get('compute')
  return not compute or matched['steps'] == compute['supersub_steps']['total']


def _baseline_rows(r: Mapping) -> list[tuple[str, str]]:
  baselines = r.get('baselines', {})
  compute, matched, head = r.get('compute'), baselines.get('vanilla_matched'), baselines.get('head_only')
  rows = []
  if compute:
    rows.append((f"optimizer steps at batch {compute['batch_size']}: {FLAT} vs Super-Sub",
                 f"{compute['vanilla_steps']:,} vs {compute['supersub_steps']['total']:,} "
                 f"({_steps_of_supersub(compute)})"))
  if matched:
    trained = (f"Super-Sub's {matched['steps']:,} steps" if _matched_trained_as_long(r)
               else f"{matched['steps']:,} steps (Super-Sub: {compute['supersub_steps']['total']:,})")
    rows += [(f'{FLAT} trained for {trained}, top-1', f"{matched['top1']:.4f}"),
             (f'Super-Sub - compute-matched {FLAT} (top-1 points)',
              _points(matched['supersub_minus'], matched.get('supersub_minus_interval')))]
  if head:
    rows += [("Super-Sub with head-only specialists (the generalist's features), top-1", f"{head['top1']:.4f}"),
             ('Super-Sub - head-only specialists (top-1 points)', f"{100 * head['supersub_minus']:+.2f}")]
  return rows


def _speed(images_per_s: float, batch: int, ms_range: Sequence[float] | None) -> str:
  """'859 img/s (812-901 over the timed calls)'; images/s is the batch over the mean seconds of a call."""
  text = f'{images_per_s:,.0f}'
  if ms_range and ms_range[0] != ms_range[1]:  # one timed call has no spread
    text += f' ({1e3 * batch / ms_range[1]:,.0f}-{1e3 * batch / ms_range[0]:,.0f})'
  return text


def _rule_rows(r: Mapping) -> list[tuple[str, str]]:
  """One row per decision rule other than the paper's: top-1, its gap to the flat network trained as long (or to
  the vanilla network), and what it costs."""
  rows = []
  for name, row in r.get('rules', {}).items():
    if name == 'hard':
      continue
    key = 'minus_vanilla_matched' if 'minus_vanilla_matched' in row else 'minus_vanilla'
    gap = (f'compute-matched {FLAT}' if key == 'minus_vanilla_matched' else f'the {FLAT}', row[key],
           row.get(f'{key}_interval'))
    speed = (f", {_speed(row['images_per_s'], row['batch_size'], row.get('ms_range'))} img/s"
             if 'images_per_s' in row else '')
    rows.append((f"rule {name}, top-1 ({row['specialists_per_image']} specialist(s) per image{speed})",
                 f"{row['top1']:.4f} ({_points(gap[1], gap[2])} against {gap[0]})"))
  return rows


# The paper's headline claims (Wen et al., arXiv 2201.08098), each with the report value that tests it.
PAPER_CLAIMS = (
    ('most errors of one network stay within the true superclass', 'most'),
    ('Super-Sub top-1 over one network trained on all subclasses', '+3.3 points'),
    ('storage of N specialists + generalist', '0.2N+1'),
    ('inference memory', 'that of one network'),
)


def paper_claims_rows(report: Mapping) -> list[tuple[str, str, str]]:
  """(claim, the paper's value, ours) for ``PAPER_CLAIMS``, from one report (one run: no interval)."""
  r = report
  rule = r.get('verdict_rule', 'hard')
  top1 = r['supersub']['top1'] if rule == 'hard' else r['rules'][rule]['top1']
  gain = f"{100 * (top1 - r['vanilla']['top1']):+.2f} points" + (f' (rule {rule})' if rule != 'hard' else '')
  matched, compute = r.get('baselines', {}).get('vanilla_matched'), r.get('compute')
  if matched:
    against = matched['supersub_minus'] if rule == 'hard' else r['rules'][rule]['minus_vanilla_matched']
    gain += (f"; {100 * against:+.2f} against one network trained "
             + ('as long' if _matched_trained_as_long(r) else f"for {matched['steps']:,} steps"))
  elif compute and compute['vanilla_steps'] >= compute['supersub_steps']['total']:
    gain += (f" at equal compute ({FLAT} {compute['vanilla_steps']:,} steps, Super-Sub "
             f"{compute['supersub_steps']['total']:,})")
  else:
    gain += '; not at equal compute (no vanilla_matched stage in this run)'
  mem, resident = r['memory'], r['memory'].get('params_resident')
  memory = (f"{mem['supersub_bytes'] / max(mem['single_bytes'], 1):.2f}x at batch {mem.get('batch_size', '?')} "
            '(compiled call)')
  if resident:
    memory += f"; parameters on device {resident['supersub_bytes'] / max(resident['single_bytes'], 1):.2f}x"
  ours = (f"{r['errors']['within_superclass_fraction']:.1%} of {r['errors']['errors']}", gain,
          f"{r['storage']['alpha']:.3f}N+1 (N={r['storage']['num_superclasses']})", memory)
  return [(claim, paper, value) for (claim, paper), value in zip(PAPER_CLAIMS, ours)]


def summary_rows(report: Mapping) -> list[tuple[str, str]]:
  """(metric, value) rows of the headline table (``headline`` is the line above it)."""
  r = report
  speed = r['throughput']
  largest = speed.get('by_batch', {}).get(str(speed.get('batch_size')), {})
  b = int(speed.get('batch_size', 1))
  # A verdict whose rule routes by the flat network leaves the generalist's routes unused: its rows say so.
  rule = r.get('verdict_rule', 'hard')
  router = rule.split('/')[1] if '/' in rule else 'generalist'
  unused = '' if router == 'generalist' else f" (not the router of the verdict's rule, {rule})"
  rows = [
      (f"{FLAT} top-1 (one network over all subclasses: the 'vanilla' stage)", f"{r['vanilla']['top1']:.4f}"),
      (f'generalist superclass top-1{unused}', f"{r['superclass']['top1']:.4f}"),
      (f'Super-Sub top-1 (routed by the generalist){unused}', f"{r['supersub']['top1']:.4f}"),
      ('Super-Sub top-1, oracle routing', f"{r['supersub']['oracle_top1']:.4f}"),
      *([(f'{FLAT} top-1, oracle routing (its best subclass of the true superclass)',
          f"{r['vanilla']['oracle_top1']:.4f}")] if 'oracle_top1' in r['vanilla'] else []),
      (f"Super-Sub top-1, top-2 routing (p<{r['supersub'].get('top2_threshold', 0):.2f}: "
       f"{r['supersub'].get('top2_second_fraction', 0):.1%} of images run 2 specialists)",
       f"{r['supersub']['top2_top1']:.4f}"),
      (f'Super-Sub (routed by the generalist) - {FLAT} (top-1 points, 95% interval over the test images)',
       _points(r['supersub']['top1'] - r['vanilla']['top1'], r['supersub'].get('minus_vanilla_interval'))),
      *_baseline_rows(r),
      *_rule_rows(r),
      (f'{FLAT} errors within the true superclass', f"{r['errors']['within_superclass_fraction']:.1%} "
       f"of {r['errors']['errors']}"),
      ('storage (networks): Super-Sub vs naive N+1', f"{r['storage']['factor']:.3f} vs "
       f"{r['storage'].get('naive_factor', r['storage']['num_superclasses'] + 1)}"),
      ('alpha in alpha*N+1', f"{r['storage']['alpha']:.4f} (N={r['storage']['num_superclasses']})"),
      (f"inference memory at batch {r['memory'].get('batch_size', '?')}: {FLAT} vs Super-Sub",
       f"{_fmt_bytes(r['memory']['single_bytes'])} vs {_fmt_bytes(r['memory']['supersub_bytes'])}"),
      (f"throughput at batch {speed.get('batch_size', '?')} (img/s, fastest-slowest call; noisy): {FLAT} vs "
       'Super-Sub', f"{_speed(speed['single_ips'], b, largest.get('single_ms_range'))} vs "
       f"{_speed(speed['supersub_ips'], b, largest.get('supersub_ms_range'))}"),
  ]
  resident = r['memory'].get('params_resident')
  if resident:
    rows.append((f'parameters on device: {FLAT} vs Super-Sub', f"{_fmt_bytes(resident['single_bytes'])} vs "
                 f"{_fmt_bytes(resident['supersub_bytes'])}"))
  return rows


def table(rows: Sequence[tuple[str, str]]) -> str:
  width = max(len(a) for a, _ in rows)
  return '\n'.join(f'{a:<{width}}  {b}' for a, b in rows)


NOISY = ('Timing is noisy: on a shared or busy machine the same command moves images/s by tens of percent from run '
         'to run. Each number is the batch over the mean seconds of the timed calls, with the fastest and slowest '
         'call beside it; compare the models of one run, which took turns, rather than runs.')


def render_markdown(report: Mapping) -> str:
  where = map_line(report)
  lines = ['# Super-Sub evaluation report', '', f'**{headline(report)}**', ''] + ([where, ''] if where else []) + [
           f"Dataset `{report.get('dataset', '?')}`, hierarchy `{report.get('hierarchy', '?')}` "
           f"({report['storage']['num_superclasses']} superclasses, {report.get('num_subclasses', '?')} subclasses), "
           f"{report.get('test_count', 0):,} held-out images (split `{report.get('split', 'test')}`). The {FLAT} is "
           "one network trained on all subclasses: the stage `vanilla` of `config.stages` and of report.json.", '',
           '## The paper\'s claims beside this run', '', '| claim | paper | this run |', '|---|---|---|']
  lines += [f'| {a} | {b} | {c} |' for a, b, c in paper_claims_rows(report)]
  lines += ['', f'{SEEDS_NOTE[0].upper()}{SEEDS_NOTE[1:]}.', '',
            '## Summary', '', '| metric | value |', '|---|---|']
  lines += [f'| {a} | {b} |' for a, b in summary_rows(report)]
  per = report.get('per_superclass')
  if per:
    optional = [(key, label) for key, label in (('vanilla_oracle_top1', f'{FLAT} (oracle)'),
                                                ('vanilla_matched_top1', f'compute-matched {FLAT}'),
                                                ('head_only_top1', 'head-only Super-Sub')) if key in per[0]]
    lines += ['', '## Per superclass (subclass top-1 on the superclass\'s held-out images)', '',
              f'| # | superclass | subclasses | {FLAT} | ' + ''.join(f'{label} | ' for _, label in optional)
              + 'Super-Sub | specialist (oracle) | generalist routing |',
              '|---|---|---|---|---|---|---|' + '---|' * len(optional)]
    for row in per:
      extra = ''.join(f" {row[key]:.4f} |" for key, _ in optional)
      lines.append(f"| {row['index']} | {row['name']} | {row['num_subclasses']} | {row['vanilla_top1']:.4f} |{extra} "
                   f"{row['supersub_top1']:.4f} | {row['oracle_top1']:.4f} | {row['routing_top1']:.4f} |")
  storage = report['storage']
  rules = report.get('rules')
  if rules:
    matched = any('minus_vanilla_matched' in row for row in rules.values())
    timed = [row for row in rules.values() if 'images_per_s' in row]
    batch = timed[0]['batch_size'] if timed else None
    lines += ['', '## Decision rules', '', 'Every rule on the same networks (`supersub_jax.decide`): `hard` is the '
              "paper's; `soft:k` averages the router's top k; `hinton:k` is Hinton et al.'s combination (a mixture; `product:k` in older reports); `poe:k` the product of experts; `/flat` and "
              f"`/mean` route by the {FLAT}'s summed subclass probabilities, or by their mean with the "
              "generalist's." + (f' Images/s at batch {batch}, timed in the same measurement as the throughput '
                                 'table below (`hard` is its Super-Sub column).' if timed else ''), '',
              f'| rule | top-1 | minus {FLAT} | ' + (f'minus compute-matched {FLAT} | ' if matched else '')
              + 'specialists per image |' + (' images/s (fastest-slowest call) |' if timed else ''),
              '|---|---|---|---|' + '---|' * matched + '---|' * bool(timed)]
    for name, row in rules.items():
      cells = [name, f"{row['top1']:.4f}", f"{100 * row['minus_vanilla']:+.2f}"]
      if matched:
        cells.append(f"{100 * row['minus_vanilla_matched']:+.2f}" if 'minus_vanilla_matched' in row else '')
      cells.append(str(row['specialists_per_image']))
      if timed:
        cells.append(_speed(row['images_per_s'], row['batch_size'], row.get('ms_range')) if 'images_per_s' in row
                     else '')
      lines.append('| ' + ' | '.join(cells) + ' |')
  lines += ['', '## Storage', '',
            f"- base (generalist) {storage['base_bytes']:,} B; specialists {sum(storage['specialists_bytes']):,} B "
            f"in all (delta {storage.get('delta_bytes', 0):,} B, heads {storage.get('head_bytes', 0):,} B, "
            f"BatchNorm statistics {storage.get('batch_stats_bytes', 0):,} B)",
            f"- factor {storage['factor']:.3f} networks = alpha*N+1 with alpha {storage['alpha']:.4f}; naive N+1 = "
            f"{storage.get('naive_factor', storage['num_superclasses'] + 1)}"]
  mem, speed = report['memory'], report['throughput']
  lines += ['', '## Memory and throughput', '', f'- {NOISY}', f"- throughput: {speed.get('method', '')}",
            f"- memory: {mem.get('method', '')}", '']
  by_time, by_mem = speed.get('by_batch', {}), mem.get('by_batch', {})
  if by_time:
    lines += [f'| batch | {FLAT} img/s | Super-Sub img/s | ratio | {FLAT} ms (fastest-slowest) | Super-Sub ms '
              f'(fastest-slowest) | specialists per batch | {FLAT} memory | Super-Sub memory |',
              '|---|---|---|---|---|---|---|---|---|']

    def ms(t, who):
      spread = t.get(f'{who}_ms_range')
      return f"{t[f'{who}_ms']:.2f}" + (f' ({spread[0]:.2f}-{spread[1]:.2f})' if spread and spread[0] != spread[1]
                                         else '')

    for b, t in sorted(by_time.items(), key=lambda kv: int(kv[0])):
      m = by_mem.get(b, {})
      lines.append(f"| {b} | {t['single_ips']:,.1f} | {t['supersub_ips']:,.1f} | {t['ratio']:.3f} | "
                   f"{ms(t, 'single')} | {ms(t, 'supersub')} | {t['specialists_per_batch']:.1f} | "
                   f"{m.get('single_bytes', 0):,} B | {m.get('supersub_bytes', 0):,} B |")
  else:
    lines += [f"- {FLAT} {mem['single_bytes']:,} B, Super-Sub {mem['supersub_bytes']:,} B; {FLAT} "
              f"{speed['single_ips']:,.1f} img/s, Super-Sub {speed['supersub_ips']:,.1f} img/s"]
  resident = mem.get('params_resident')
  if resident:
    lines += ['', f"- parameters on device: {FLAT} {resident['single_bytes']:,} B; Super-Sub "
              f"{resident['supersub_bytes']:,} B = generalist {resident['generalist_bytes']:,} B + bank "
              f"{resident['bank_bytes']:,} B (exported: {mem.get('bank_export_bytes', 0):,} B) + one materialized "
              f"specialist {resident['specialist_bytes']:,} B"]
  plots = report.get('plots', [])
  if plots:
    lines += ['', '## Plots', ''] + [f'![{p}]({p})' for p in plots]
  return '\n'.join(lines) + '\n'
