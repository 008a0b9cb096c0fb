"""The evaluation report: metrics from predictions (pure numpy), its JSON schema (below: its one home), and the
files report.json and report.md. What a person reads (the headline, the tables of report.md) is ``report_text``;
the PNG plots are ``plots``.

``report.json`` keys (nested objects; numbers are floats or ints), stable across versions:

=====================================  ==============================================================================
key                                    meaning
=====================================  ==============================================================================
``vanilla.top1``                       top-1 of the single network trained on all subclasses (the paper's baseline)
``superclass.top1``                    superclass accuracy of the generalist
``supersub.top1``                      Super-Sub top-1: generalist routes, the routed specialist classifies; a wrong
                                       superclass counts as an error
``supersub.oracle_top1``               Super-Sub with the true superclass given (the specialists' own accuracy)
``vanilla.oracle_top1``                the flat network with the true superclass given (its argmax among that
                                       superclass's subclasses): the reference for ``supersub.oracle_top1``
``supersub.top2_top1``                 Super-Sub with top-2 routing (uncertain images also run the second specialist)
``supersub.branch``                    the specialists' cut (their specs): layers before it are the generalist's, run once
``baselines.vanilla_matched.top1``     with the ``vanilla_matched`` stage: the flat network trained for Super-Sub's whole
                                       budget (``compute.supersub_steps.total`` steps); ``.supersub_minus`` the gap;
                                       ``.oracle_top1`` as ``vanilla.oracle_top1``
``baselines.head_only.top1``           with the ``head_only`` stage: Super-Sub with specialists that train a head on
                                       the generalist's features (no delta); ``.supersub_minus`` what deltas add
``compute.supersub_steps.total``       optimizer steps behind Super-Sub's predictions (``stages.pipeline_steps``)
``rules.<rule>.top1``                  Super-Sub's top-1 under each decision rule of ``config.evaluate.rules``
                                       (``decide.Rule.key``: 'hard', 'soft:2', 'hinton:2/mean', ...); beside it
                                       ``.specialists_per_image``, ``.images_per_s`` and ``.minus_vanilla`` (and
                                       ``.minus_vanilla_matched`` with the ``vanilla_matched`` stage)
``errors.within_superclass_fraction``  of the vanilla network's errors, the fraction whose prediction lies in the true
                                       superclass (the paper's finding (i))
``storage.factor``                     bytes of generalist + all specialists, in units of one network
``storage.alpha``                      alpha in storage = (alpha * N + 1) networks
``storage.num_superclasses``           N
``memory.single_bytes``                inference memory of the single network at ``memory.batch_size`` (see
                                       ``memory.method``; ``memory.by_batch`` has every timed batch size)
``memory.supersub_bytes``              inference memory of Super-Sub at the same batch
``throughput.single_ips``              images/s of the single network at ``throughput.batch_size``, on real
                                       held-out batches (``throughput.method``; ``throughput.by_batch``: batch 1 too)
``throughput.supersub_ips``            images/s of Super-Sub (top-1 routing, as the generalist routes those images)
=====================================  ==============================================================================

Also: ``supersub.minus_vanilla_interval`` and ``baselines.vanilla_matched.supersub_minus_interval``, the 95% paired
interval of the gap over the test images (``paired_difference``); ``compute.start``, the start both arms share;
``throughput.by_batch.<b>.{single,supersub}_ms_range`` and ``rules.<rule>.ms_range``, the fastest and slowest timed
call; ``rules.<rule>.minus_vanilla_interval`` (and ``.minus_vanilla_matched_interval``), each rule's paired interval;
``verdict_rule``, the rule the headline reports (``config.evaluate.verdict_rule``; 'hard' is ``supersub``);
``map``, where the run sits on a committed map of studies/map.py (``map_cell``, with ``config.evaluate.map_summary``);
``evaluation``: the fingerprints of what the evaluation read and the parts it kept (``evaluation.run``).

Other keys (per-superclass tables, counts, top-2 cost, the naive N+1 factor, ...) may be added; those above stay.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import numpy as np

from supersub_jax import files
from supersub_jax import report_text

REQUIRED_KEYS = (
    'vanilla.top1', 'superclass.top1', 'supersub.top1', 'supersub.oracle_top1', 'supersub.top2_top1',
    'errors.within_superclass_fraction', 'storage.factor', 'storage.alpha', 'storage.num_superclasses',
    'memory.single_bytes', 'memory.supersub_bytes', 'throughput.single_ips', 'throughput.supersub_ips',
)
_INT_KEYS = ('storage.num_superclasses', 'memory.single_bytes', 'memory.supersub_bytes')
def get_path(report: Mapping, key: str):
  node: Any = report
  for part in key.split('.'):
    node = node[part]
  return node


def validate(report: Mapping) -> None:
  """Raises ValueError naming every missing or non-numeric required key."""
  problems = []
  for key in REQUIRED_KEYS:
    try:
      value = get_path(report, key)
    except (KeyError, TypeError):
      problems.append(f'{key}: missing')
      continue
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      problems.append(f'{key}: {value!r} is not a number')
    elif key in _INT_KEYS and not isinstance(value, int):
      problems.append(f'{key}: {value!r} should be an int')
  if problems:
    raise ValueError('report.json does not follow the schema:\n  ' + '\n  '.join(problems))


def accuracy(pred: np.ndarray, true: np.ndarray) -> float:
  return float(np.mean(np.asarray(pred) == np.asarray(true))) if len(true) else float('nan')


def error_breakdown(pred: np.ndarray, true: np.ndarray, label_to_superclass: np.ndarray) -> dict:
  """Splits a subclass classifier's errors into within- and across-superclass. pred, true int [M]."""
  pred, true = np.asarray(pred), np.asarray(true)
  wrong = pred != true
  within = wrong & (label_to_superclass[pred] == label_to_superclass[true])
  n_wrong = int(wrong.sum())
  return {'errors': n_wrong, 'within_superclass': int(within.sum()), 'across_superclass': int(n_wrong - within.sum()),
          'within_superclass_fraction': float(within.sum() / n_wrong) if n_wrong else 0.0,
          'error_rate': float(wrong.mean()) if len(true) else 0.0}


def per_superclass_accuracy(pred: np.ndarray, true: np.ndarray, superclass: np.ndarray, num_superclasses: int) -> list:
  """Accuracy of ``pred`` against ``true`` within each true superclass -> list of N floats (nan when empty)."""
  out = []
  for k in range(num_superclasses):
    sel = superclass == k
    out.append(accuracy(pred[sel], true[sel]) if sel.any() else float('nan'))
  return out


def paired_difference(a_right: np.ndarray, b_right: np.ndarray, confidence_z: float = 1.96) -> list[float]:
  """[mean, low, high] of top-1(a) - top-1(b) on the same images (bool [M] each: right or not), with the normal
  interval of a paired difference: what the choice of test images moves, not what a new seed would."""
  d = np.asarray(a_right, float) - np.asarray(b_right, float)
  if d.size < 2:
    return [float(d.mean()) if d.size else float('nan'), float('nan'), float('nan')]
  half = confidence_z * float(d.std(ddof=1)) / np.sqrt(d.size)
  return [float(d.mean()), float(d.mean()) - half, float(d.mean()) + half]


def confusion_matrix(pred: np.ndarray, true: np.ndarray, num_classes: int) -> np.ndarray:
  """int64 [num_classes, num_classes], rows = true class, columns = predicted class."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (np.asarray(true), np.asarray(pred)), 1)
  return cm


def build(p: Mapping[str, np.ndarray], hierarchy, *, dataset: str, split: str, storage: Mapping,
          compute: Mapping, top2_threshold: float, cut: str, matched_steps: int | None = None,
          rules: Mapping[str, int] | None = None, verdict_rule: str = 'hard') -> dict:
  """The report's metrics (the schema above, less memory and throughput) from held-out predictions.

  Args:
    p: int arrays [M] of one held-out split (``evaluation.collect_predictions``): 'subclass', 'superclass' (truth),
      'vanilla', 'generalist' (its superclass), 'supersub', 'oracle', 'top2' (labels), 'second' (bool: the image
      ran a second specialist), the optional baselines 'vanilla_matched' and 'head_only', and 'rule:<key>' for
      each decision rule (``decide.Rule.key``); optionally 'vanilla_oracle' and 'vanilla_matched_oracle' (the flat
      networks' labels within the true superclass).
    hierarchy: the ``hierarchy.Hierarchy`` of the labels.
    storage, compute: report.json's 'storage' and 'compute' (``evaluation.storage``, ``stages.pipeline_steps``).
    top2_threshold: the top-2 rule's threshold; cut: the specialists' cut; matched_steps: the steps the
      ``vanilla_matched`` network trained for (its checkpoint's); rules: decision rule key -> the specialists it
      runs per image, for the 'rule:<key>' predictions of ``p``.
    verdict_rule: the rule the headline reports (``config.evaluate.verdict_rule``): 'hard', the paper's, or a key
      of ``rules``.
  """
  if verdict_rule != 'hard' and verdict_rule not in (rules or {}):
    raise ValueError(f'verdict_rule {verdict_rule!r} is not among the rules evaluated ({sorted(rules or {})}): add it '
                     'to config.evaluate.rules.')
  l2s = np.asarray(hierarchy.label_to_superclass)
  truth = p['subclass']
  n = hierarchy.num_superclasses
  per_superclass = []
  for k, sup in enumerate(hierarchy.superclasses):
    sel = p['superclass'] == k
    per_superclass.append({
        'index': k, 'name': sup.name, 'wnid': sup.wnid, 'num_subclasses': len(sup.subclasses),
        'test_count': int(sel.sum()), 'vanilla_top1': accuracy(p['vanilla'][sel], truth[sel]),
        'supersub_top1': accuracy(p['supersub'][sel], truth[sel]),
        'oracle_top1': accuracy(p['oracle'][sel], truth[sel]),
        'routing_top1': accuracy(p['generalist'][sel], p['superclass'][sel])})
  supersub = accuracy(p['supersub'], truth)
  report = {
      'dataset': dataset, 'split': split, 'hierarchy': hierarchy.name, 'num_subclasses': hierarchy.num_subclasses,
      'test_count': int(len(truth)),
      'vanilla': {'top1': accuracy(p['vanilla'], truth), 'superclass_top1': accuracy(l2s[p['vanilla']], p['superclass'])},
      'superclass': {'top1': accuracy(p['generalist'], p['superclass'])},
      'supersub': {'top1': supersub, 'oracle_top1': accuracy(p['oracle'], truth),
                   'top2_top1': accuracy(p['top2'], truth), 'top2_threshold': float(top2_threshold),
                   'top2_second_fraction': float(np.mean(p['second'])), 'branch': cut,
                   'top1_minus_vanilla': supersub - accuracy(p['vanilla'], truth),
                   'minus_vanilla_interval': paired_difference(p['supersub'] == truth, p['vanilla'] == truth)[1:]},
      'errors': error_breakdown(p['vanilla'], truth, l2s),
      'supersub_errors': error_breakdown(p['supersub'], truth, l2s),
      'per_superclass': per_superclass,
      'storage': dict(storage),
      'compute': dict(compute),
  }
  # The optional baselines: the flat network trained for Super-Sub's whole budget, and Super-Sub with head-only
  # specialists (the same routes, no delta).
  for name in ('vanilla_matched', 'head_only'):
    if name in p:
      top1 = accuracy(p[name], truth)
      report.setdefault('baselines', {})[name] = {
          'top1': top1, 'supersub_minus': supersub - top1,
          'supersub_minus_interval': paired_difference(p['supersub'] == truth, p[name] == truth)[1:]}
      for row, top1 in zip(per_superclass, per_superclass_accuracy(p[name], truth, p['superclass'], n)):
        row[f'{name}_top1'] = top1
  if 'vanilla_matched' in p:
    report['baselines']['vanilla_matched']['steps'] = int(matched_steps)
  for name, where in (('vanilla', report['vanilla']), ('vanilla_matched', report.get('baselines', {}).get(
      'vanilla_matched'))):
    if f'{name}_oracle' in p and where is not None:
      where['oracle_top1'] = accuracy(p[f'{name}_oracle'], truth)
      for row, top1 in zip(per_superclass, per_superclass_accuracy(p[f'{name}_oracle'], truth, p['superclass'], n)):
        row[f'{name}_oracle_top1'] = top1
  report['rules'] = {}
  for name, routes in (rules or {}).items():
    top1 = accuracy(p[f'rule:{name}'], truth)
    right = p[f'rule:{name}'] == truth
    row = {'top1': top1, 'specialists_per_image': routes, 'minus_vanilla': top1 - report['vanilla']['top1'],
           'minus_vanilla_interval': paired_difference(right, p['vanilla'] == truth)[1:]}
    if 'vanilla_matched' in p:
      row['minus_vanilla_matched'] = top1 - report['baselines']['vanilla_matched']['top1']
      row['minus_vanilla_matched_interval'] = paired_difference(right, p['vanilla_matched'] == truth)[1:]
    report['rules'][name] = row
  report['verdict_rule'] = verdict_rule
  return report


def start_of(init_path: str) -> str:
  """How the report names the start both arms share: config.init's file (``init_path``), with the steps its
  record (the .json beside it, scripts/make_pretrained.py) says it trained for, or 'random weights'."""
  if not init_path:
    return 'random weights'
  record = os.path.splitext(os.path.abspath(os.path.expanduser(init_path)))[0] + '.json'
  try:
    with open(record) as f:
      steps = f" ({int(json.load(f)['steps']):,} steps)"
  except (OSError, ValueError, KeyError, TypeError):
    steps = ''
  return f'{os.path.basename(init_path)}{steps}, config.init'


def map_context(path: str, *, specificity: int, width: float, steps: int, rule: str) -> dict:
  """report.json's 'map': ``map_cell`` of the map that studies/map.py wrote at ``path`` (its <out>.json), with
  'source', the path as a reader finds it (relative to the working directory when under it)."""
  path = os.path.abspath(path)
  with open(path) as f:
    written = json.load(f)
  relative = os.path.relpath(path)
  return {**map_cell(written['summary'], specificity=specificity, width=width, steps=steps, rule=rule,
                     capacity=written.get('capacity')),
          'source': path if relative.startswith('..') else relative}


def map_cell(summary: Mapping, *, specificity: int, width: float, steps: int, rule: str,
             capacity: list | None = None) -> dict:
  """Where a run sits on a committed map (``studies.map``'s <out>.json 'summary'): the cell of its cue specificity,
  width and steps an arm, and the control cell (specificity 1) of the same width and steps, each as
  {'specificity', 'width', 'steps', 'runs', 'bases', 'gap', 'low', 'high'} under ``rule`` (Super-Sub minus the flat
  network, fractions; the interval is the map's paired 95% one), or None where the map has no such cell or rule;
  'setting' is the run's own (specificity, width, steps). With the map's ``capacity`` comparisons (its 'capacity'
  list), 'wider' is the one of this cell and rule: Super-Sub minus a wider flat network with about as many stored
  parameters ({'wide', 'runs', 'gap', 'low', 'high'}, Welch's interval), or None."""
  def find(m):
    for cell in summary.get('cells', []):
      if (int(cell['specificity']) == int(m) and abs(float(cell['width']) - float(width)) < 1e-9
          and int(cell['steps']) == int(steps) and rule in cell.get('rules', {})):
        row = cell['rules'][rule]
        return {'specificity': int(m), 'width': float(width), 'steps': int(steps), 'runs': len(cell['runs']),
                'bases': sorted({int(b) for b in cell['bases']}), 'gap': float(row['gap']),
                'low': float(row['low']), 'high': float(row['high'])}
    return None
  wider = None
  for c in capacity or []:
    if (int(c['specificity']) == int(specificity) and abs(float(c['width']) - float(width)) < 1e-9
        and int(c['steps']) == int(steps) and c['rule'] == rule):
      wider = {'wide': float(c['wide']), 'runs': [int(n) for n in c['runs']], 'gap': float(c['gap']),
               'low': float(c['low']), 'high': float(c['high'])}
  return {'rule': rule, 'setting': {'specificity': int(specificity), 'width': float(width), 'steps': int(steps)},
          'cell': find(specificity), 'control': find(1), 'wider': wider}


def write(report: dict, workdir: str, *, figures: Callable[[str], list[str]] | None = None) -> dict[str, str]:
  """Writes report.json, report.md and, given ``figures``, the PNG plots into ``workdir``; returns the paths of the
  two reports.

  ``figures(folder)`` writes the PNGs into ``folder`` and returns their file names (``plots.write_plots`` with the
  predictions bound); ``report['plots']`` lists them.
  """
  validate(report)
  with files.staged(workdir) as stage:  # all of them or none: a full disk half-way leaves the old report whole
    if figures is not None:
      report['plots'] = figures(stage)
    files.write_text(os.path.join(stage, 'report.json'), json.dumps(report, indent=2, default=float))
    files.write_text(os.path.join(stage, 'report.md'), report_text.render_markdown(report))
  return {'json': os.path.join(workdir, 'report.json'), 'md': os.path.join(workdir, 'report.md')}
