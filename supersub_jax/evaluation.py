"""Evaluation of a trained workdir: vanilla against Super-Sub on the held-out split (``config.eval_split``),
storage, memory and throughput.

``run(config, workdir)`` loads the checkpoints of the stages (``workdir.load_trained``), predicts every held-out
image with the vanilla network, the generalist and Super-Sub (top-1, oracle and top-2 routing;
``collect_predictions``), and turns the predictions into the report (``report.build``), with the inference
measurements of ``supersub_jax.measure``; ``report.write`` writes ``report.json``, ``report.md`` and the PNG plots
into the workdir.

Results are kept. Each part of an evaluation -- the held-out predictions of one network (``NETWORKS``), and the
timing and memory measurements -- is stored under ``<workdir>/evaluation/`` with the fingerprint of what it read
(``fingerprints``: its checkpoints' steps and integrity digests, the config fields it depends on, the held-out
split's files); report.json records the fingerprint of the whole. A rerun with nothing changed returns the stored
report without loading a network; one with a changed checkpoint or field redoes only the parts that read it;
``force`` redoes everything. Every phase prints a line, ``stage k/n``, with its counts and an ETA.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Collection, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from supersub_jax import bank as bank_lib
from supersub_jax import checkpoint as ckpt
from supersub_jax import decide
from supersub_jax import delta as delta_lib
from supersub_jax import exported as exported_lib
from supersub_jax import files
from supersub_jax import inference
from supersub_jax import measure
from supersub_jax import plots
from supersub_jax import report as report_lib
from supersub_jax import setup_of
from supersub_jax import stages
from supersub_jax import workdir as workdir_lib


def rules_of(config) -> list[decide.Rule]:
  """``config.evaluate.rules`` parsed, without repeats, in order."""
  return list(dict.fromkeys(decide.Rule.parse(spec) for spec in config.evaluate.rules))


NETWORKS = ('vanilla', 'supersub', 'vanilla_matched', 'head_only')
# The prediction arrays of each network (collect_predictions), besides the labels 'subclass' and 'superclass'.
_PREDICTIONS = {'vanilla': ('vanilla', 'vanilla_oracle'), 'vanilla_matched': ('vanilla_matched', 'vanilla_matched_oracle'),
                'head_only': ('head_only',), 'supersub': ('generalist', 'supersub', 'oracle', 'top2', 'second')}
_LABELS = ('subclass', 'superclass')
_NAMES = {'vanilla': 'flat network', 'supersub': 'Super-Sub', 'vanilla_matched': 'compute-matched flat network',
          'head_only': 'head-only Super-Sub'}


class Progress:
  """The evaluation's progress lines (process 0 only): ``stage`` starts stage k of n, ``step`` reports the i-th of n
  units within it -- at the first, every tenth of the way and the last -- with an ETA from the pace since the first
  unit (which compiles), and ``done`` ends the stage with its seconds.

  ``clock`` and ``say`` are time.monotonic and print in use; tests pass their own.
  """

  def __init__(self, stages_total: int, *, clock=time.monotonic, say=None):
    self.total, self.k = stages_total, 0
    self.clock = clock
    self.say = say or (lambda line: print(line, flush=True) if jax.process_index() == 0 else None)
    self.started = self.first = None
    self.shown = -1

  def stage(self, what: str) -> None:
    self.k += 1
    self.started, self.first, self.shown = self.clock(), None, -1
    self.say(f'[evaluate] stage {self.k}/{self.total}: {what}')

  def step(self, i: int, n: int, unit: str, detail: str = '') -> None:
    now = self.clock()
    if i == 1:
      self.first = now
    tenth = 10 * i // n
    if i not in (1, n) and tenth == self.shown:
      return
    self.shown = tenth
    if i == n:
      eta = 'done'
    elif i > 1:
      eta = f'ETA {(now - self.first) / (i - 1) * (n - i):,.0f}s'
    else:
      eta = f'first {unit} (compiles) took {now - self.started:,.1f}s'
    self.say(f'[evaluate]   {unit} {i}/{n}' + (f' ({detail})' if detail else '') + f', {eta}')

  def done(self, detail: str) -> None:
    self.say(f'[evaluate]   {detail} ({self.clock() - self.started:,.1f}s)')


def collect_predictions(config, workdir: str, hierarchy, vanilla, state, generalist_model, specialist_model,
                        *, threshold: float, paths: Mapping[str, Any],
                        vanilla_matched: workdir_lib.Network | None = None,
                        head_only: bank_lib.SuperSub | None = None,
                        rules: Sequence[decide.Rule] = (),
                        flat_router: workdir_lib.Network | None = None,
                        only: Collection[str] | None = None,
                        progress: Progress | None = None) -> dict[str, np.ndarray]:
  """Labels and predictions of every image of config.eval_split, as int arrays [M] (padding dropped), the flat
  network's within the true superclass too ('vanilla_oracle', ``decide.within_superclass``); with
  ``vanilla_matched``, its predictions too (and 'vanilla_matched_oracle'), with ``head_only``, Super-Sub's with the
  head-only specialists, and for each of ``rules``, Super-Sub's under that decision rule (key 'rule:<rule.key>'),
  routed by ``flat_router`` where the rule's router needs a flat network.

  ``only``: the networks of ``NETWORKS`` to predict with (default: all that are given); the labels 'subclass' and
  'superclass' always come. ``progress``: prints a line every tenth of the batches, with an ETA."""
  only = set(NETWORKS if only is None else only)
  run_vanilla, run_supersub = 'vanilla' in only, 'supersub' in only
  vanilla_matched = vanilla_matched if 'vanilla_matched' in only else None
  head_only = head_only if 'head_only' in only else None
  rules = rules if run_supersub else ()
  if flat_router is None and any(rule.needs_flat for rule in rules):
    raise ValueError(f'decision rules {[r.key for r in rules if r.needs_flat]} route by a flat network, '
                     'and this pipeline has none (the generalist starts neither from the vanilla network nor from '
                     "config.init's): drop them from config.evaluate.rules.")
  router_vars = None if flat_router is None else {'params': flat_router.params,
                                                  'batch_stats': flat_router.batch_stats}
  source = stages.load_source(config, config.eval_split, hierarchy)
  batches = stages.eval_batches(config, source, label_mode='subclass', batch_size=config.evaluate.batch_size,
                                process_index=0, process_count=1, local_device_count=1)
  keys = ('subclass', 'superclass')
  if run_vanilla:
    vanilla_apply = measure.eval_apply(vanilla.model)
    vanilla_vars = {'params': vanilla.params, 'batch_stats': vanilla.batch_stats}
    keys += ('vanilla', 'vanilla_oracle')
  if run_supersub:
    keys += ('generalist', 'supersub', 'oracle', 'top2', 'second')
  l2s = jnp.asarray(hierarchy.label_to_superclass, jnp.int32)
  if vanilla_matched is not None:
    keys += ('vanilla_matched', 'vanilla_matched_oracle')
    matched_apply = measure.eval_apply(vanilla_matched.model)
    matched_vars = {'params': vanilla_matched.params, 'batch_stats': vanilla_matched.batch_stats}
  if head_only is not None:
    keys += ('head_only',)
  keys += tuple(f'rule:{rule.key}' for rule in rules)
  out = {k: [] for k in keys}
  total = -(-len(source) // int(config.evaluate.batch_size))
  nets = dict(generalist_model=generalist_model, specialist_model=specialist_model, **paths)  # predict's keywords
  for i, batch in enumerate(batches):
    keep = batch['mask'].reshape(-1) > 0
    images = jnp.asarray(batch['image'].reshape((-1,) + batch['image'].shape[2:]))
    superclass = batch['superclass'].reshape(-1)
    superclass_dev = jnp.asarray(superclass)
    rows = {'subclass': batch['subclass'].reshape(-1), 'superclass': superclass}
    if run_vanilla:
      vanilla_logits = vanilla_apply(vanilla_vars, images)
      rows['vanilla'] = np.argmax(np.asarray(vanilla_logits), -1)
      rows['vanilla_oracle'] = np.asarray(decide.within_superclass(vanilla_logits, superclass_dev, l2s))
    if run_supersub:
      top1 = inference.predict(state, images, decide.Rule('hard'), **nets)
      oracle = inference.predict(state, images, decide.Rule('hard', router='oracle'), superclass=superclass_dev,
                                 **nets)
      top2 = inference.predict(state, images, decide.Rule('soft', 2, threshold=threshold), **nets)
      rows.update({'generalist': np.asarray(top1['routes'][:, 0]), 'supersub': np.asarray(top1['label']),
                   'oracle': np.asarray(oracle['label']), 'top2': np.asarray(top2['label']),
                   'second': np.asarray(top2['second'])})
    if vanilla_matched is not None:
      matched_logits = matched_apply(matched_vars, images)
      rows['vanilla_matched'] = np.argmax(np.asarray(matched_logits), -1)
      rows['vanilla_matched_oracle'] = np.asarray(decide.within_superclass(matched_logits, superclass_dev, l2s))
    if head_only is not None:
      rows['head_only'] = np.asarray(inference.predict(head_only, images, decide.Rule('hard'), **nets)['label'])
    for rule in rules:
      rows[f'rule:{rule.key}'] = rows['supersub'] if rule == decide.Rule() else np.asarray(inference.predict(
          state, images, rule, superclass=superclass_dev, flat=router_vars,
          flat_model=flat_router and flat_router.model, **nets)['label'])
    for k in keys:
      out[k].append(np.asarray(rows[k])[keep])
    if progress is not None:
      progress.step(i + 1, max(total, i + 1), 'batch', f'{sum(len(x) for x in out["subclass"]):,} images')
  return {k: np.concatenate(v) for k, v in out.items()}


def storage(trained: workdir_lib.Trained) -> dict:
  """report.json's 'storage': the generalist (params + BatchNorm statistics) once, then each specialist's exported
  bytes, in bytes and in units of one network (``exported.storage_report``)."""
  generalist, vanilla = trained.generalist, trained.vanilla
  base_bytes = delta_lib.tree_nbytes(generalist.params) + delta_lib.tree_nbytes(generalist.batch_stats)
  parts = [exported_lib.exported_nbytes(e) for e in trained.exported]
  out = exported_lib.storage_report(base_bytes, [sum(b.values()) for b in parts])
  out.update({'num_superclasses': trained.hierarchy.num_superclasses, 'delta_bytes': sum(b['delta'] for b in parts),
              'head_bytes': sum(b['head'] for b in parts),
              'batch_stats_bytes': sum(b['batch_stats'] for b in parts),
              'vanilla_bytes': delta_lib.tree_nbytes(vanilla.params) + delta_lib.tree_nbytes(vanilla.batch_stats)})
  return out


# ----------------------------------------------------------------------------------------------------------------------
# Results kept: fingerprints of what each part read, and the stored parts

CACHE_DIR = 'evaluation'  # <workdir>/evaluation/: each network's predictions and the measurements, by fingerprint
FORMAT = 1  # in every fingerprint: raise it when what a stored part holds changes meaning
# Config fields that change no prediction and no measurement (how a run logs, saves, loads and is spread over
# hosts), and 'evaluate.', whose fields each part names itself (the top-2 threshold and rules change only
# Super-Sub's predictions, the benchmark settings only the measurements).
_HOST_FIELDS = ('log_every_steps', 'checkpoint_every_steps', 'profile_steps', 'max_to_keep', 'worker_count',
                'data_dir', 'manual_dir', 'distributed.', 'parallelism', 'stages', 'nonfinite',
                'compilation_cache_dir', 'eval_batch_size', 'evaluate.')
_PREDICTION_FIELDS = ('top2_threshold', 'rules')  # of config.evaluate; 'batch_size' changes no prediction
_REPORT_FIELDS = ('verdict_rule', 'map_summary')  # of config.evaluate: what the report says, not what it measures


def _digest(*parts) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, Mapping):
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f'{prefix}{key}.').items()}
  return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def dataset_identity(config, setup: setup_of.Setup) -> dict:
  """What identifies the held-out split an evaluation reads: the dataset, its knobs and split (``setup.data``), a
  SHA-256 of the labels the hierarchy gives its examples, and the size and modification time of each of its files."""
  hierarchy, data = setup.hierarchy, setup.data
  source = stages.load_source(config, data.eval_split, hierarchy)
  labels = hashlib.sha256()
  for array in dataclasses.astuple(source.labels):
    labels.update(np.ascontiguousarray(array).tobytes())
  shard_files = [(os.path.basename(f), skip, take, *workdir_lib.file_identity(f)[0][1:])
                 for f, skip, take in source.shards]
  return {'dataset': data.dataset, 'split': data.eval_split, 'kwargs': data.kwargs,
          'hierarchy': hierarchy.name, 'examples': len(source), 'labels_sha256': labels.hexdigest(),
          'files': shard_files}


def fingerprints(config, workdir: str, setup: setup_of.Setup) -> dict[str, str]:
  """A SHA-256 of what each part of the evaluation of ``workdir`` reads: each network of ``NETWORKS`` that
  ``config.stages`` trains (its predictions on the held-out split), 'measurements' (timing and memory) and 'report'
  (all of them). A part's fingerprint covers its checkpoints (``workdir.checkpoint_identity``), the held-out split
  (``dataset_identity``) and the config fields it depends on (every field but ``_HOST_FIELDS``, and the
  ``config.evaluate`` fields it uses)."""
  workdir = ckpt.abs_path(workdir)
  settings = {k: v for k, v in _flatten(stages.config_json(config)).items()
              if not k.startswith(_HOST_FIELDS) and k not in _HOST_FIELDS}
  hierarchy = setup.hierarchy
  base = (FORMAT, dataset_identity(config, setup), settings)
  evaluate = _flatten(config.evaluate.to_dict())

  def network(stage):
    return workdir_lib.checkpoint_identity(workdir_lib.stage_dir(workdir, stage))

  def bank(stage):
    return [workdir_lib.checkpoint_identity(workdir_lib.specialist_dir(workdir, hierarchy, k, stage))
            for k in range(hierarchy.num_superclasses)]

  if config.superclass.init_from_vanilla:
    flat = network('vanilla')
  else:
    flat = workdir_lib.file_identity(config.init.path) if config.init.keep_head and config.init.path else None
  supersub = (network('superclass'), bank('specialists'), flat)
  keys = {'vanilla': _digest(base, network('vanilla')),
          'supersub': _digest(base, supersub, {k: evaluate[k] for k in _PREDICTION_FIELDS})}
  if 'vanilla_matched' in config.stages:
    keys['vanilla_matched'] = _digest(base, network('vanilla_matched'))
  if 'head_only' in config.stages:
    keys['head_only'] = _digest(base, network('superclass'), bank('head_only'))
  devices = (jax.default_backend(), jax.devices()[0].device_kind, jax.device_count())
  keys['measurements'] = _digest(base, network('vanilla'), supersub, devices,
                                 {k: v for k, v in evaluate.items()
                                  if k not in ('top2_threshold', 'batch_size') + _REPORT_FIELDS},
                                 _source_sha256(measure))  # a new way of measuring measures again
  # The report is rebuilt (from the stored parts) when the code that writes it changed: a stored report.md in an
  # older layout is not shown as current.
  map_file = os.path.expanduser(config.evaluate.map_summary)
  keys['report'] = _digest(keys, _source_sha256(report_lib), _source_sha256(None),
                           {k: evaluate[k] for k in _REPORT_FIELDS},
                           workdir_lib.file_identity(map_file) if map_file and os.path.exists(map_file) else None)
  return keys


def _source_sha256(module) -> str:
  """SHA-256 of a module's source file (None: this one)."""
  with open(module.__file__ if module is not None else __file__, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def _part_path(workdir: str, part: str, key: str, ext: str) -> str:
  return os.path.join(workdir, CACHE_DIR, f'{part}-{key[:16]}.{ext}')


def _read_part(workdir: str, part: str, key: str, ext: str):
  """A stored part (npz: dict of arrays, json: its object), or None when absent or unreadable (then redone)."""
  path = _part_path(workdir, part, key, ext)
  if not os.path.exists(path):
    return None
  try:
    if ext == 'npz':  # a few int arrays over the held-out split: 1 GiB is ImageNet's 50,000 images many times over
      return files.load_npz(path, max_bytes=2 ** 30)
    with open(path) as f:
      return json.load(f)
  except Exception:  # pylint: disable=broad-except  (a damaged part is redone, never trusted nor fatal)
    return None


def _store_part(workdir: str, part: str, key: str, ext: str, value) -> None:
  """Writes a part atomically, then removes that part's files of other fingerprints."""
  path = _part_path(workdir, part, key, ext)
  folder = os.path.dirname(path)
  made = not os.path.isdir(folder)
  os.makedirs(folder, exist_ok=True)
  try:
    with files.atomic_write(path, 'wb' if ext == 'npz' else 'w') as f:
      if ext == 'npz':
        np.savez(f, **value)
      else:
        json.dump(value, f, default=float)
  except BaseException:
    if made and not os.listdir(folder):  # a full disk, a signal: no empty folder left in the workdir
      os.rmdir(folder)
    raise
  for name in os.listdir(os.path.dirname(path)):
    if name.startswith(f'{part}-') and name.endswith(f'.{ext}') and name != os.path.basename(path):
      os.remove(os.path.join(os.path.dirname(path), name))


# ----------------------------------------------------------------------------------------------------------------------
# The evaluation


def run(config, workdir: str, *, force: bool = False) -> dict:
  """Evaluates the trained workdir: predictions -> report; writes report.json, report.md and PNGs there (process 0)
  and returns the report. Parts whose fingerprint is unchanged (``fingerprints``) are read back, not redone, unless
  ``force``; with nothing changed, the stored report itself is returned. ``report['evaluation']``: the
  fingerprints, and 'kept': the parts read back ('report' alone: all of it)."""
  workdir = ckpt.abs_path(workdir)
  progress = Progress(5)
  progress.stage('fingerprints of the checkpoints, config fields and held-out split it reads')
  setup = setup_of.build(config)
  keys = fingerprints(config, workdir, setup)
  stored = workdir_lib.stored_report(workdir)
  if (not force and stored is not None and stored.get('evaluation', {}).get('fingerprints') == keys
      and os.path.exists(os.path.join(workdir, 'report.md'))):
    progress.done(f'nothing changed since the stored report of {stored["evaluation"].get("finished", "?")}: '
                  'shown as stored (--force evaluates again)')
    return {**stored, 'evaluation': {**stored['evaluation'], 'kept': ['report']}}
  networks = [name for name in NETWORKS if name in keys]
  kept = {} if force else {name: _read_part(workdir, name, keys[name], 'npz') for name in networks}
  kept = {name: p for name, p in kept.items() if p is not None}
  measured = None if force else _read_part(workdir, 'measurements', keys['measurements'], 'json')
  measured_kept = measured is not None
  progress.done(f'kept: {", ".join(_NAMES[n] for n in kept) or "no"} predictions, '
                f'{"the" if measured else "no"} measurements' + (' (--force)' if force else ''))

  progress.stage('load the checkpoints')
  trained = workdir_lib.load_trained(config, workdir, setup)
  progress.done(f'{len(trained.exported)} specialists and {2 + (trained.vanilla_matched is not None)} networks')
  threshold = float(config.evaluate.top2_threshold)
  paths = inference.path_settings(config.evaluate)  # how the specialists run (all give the same predictions)
  # Without a flat network of its own, Super-Sub has no flat router: those rules are skipped, and the report says so.
  rules = [r for r in rules_of(config) if not r.needs_flat or trained.flat_router is not None]
  skipped = [r.key for r in rules_of(config) if r not in rules]

  todo = [name for name in networks if name not in kept]
  progress.stage((f'predictions of {", ".join(_NAMES[n] for n in todo)} on the held-out split' if todo
                  else 'predictions on the held-out split')
                 + (f' ({len(rules)} decision rules)' if 'supersub' in todo else '')
                 + (f'; kept: {", ".join(_NAMES[n] for n in kept)}' if kept else ''))
  if todo:
    fresh = collect_predictions(config, workdir, trained.hierarchy, trained.vanilla, trained.state,
                                trained.generalist.model, trained.specialist_model, threshold=threshold,
                                paths=paths, vanilla_matched=trained.vanilla_matched,
                                head_only=trained.head_only, rules=rules, flat_router=trained.flat_router,
                                only=todo, progress=progress)
    for name in todo:
      part = {k: v for k, v in fresh.items() if k in _LABELS + _PREDICTIONS[name]
              or (name == 'supersub' and k.startswith('rule:'))}
      if jax.process_index() == 0:
        _store_part(workdir, name, keys[name], 'npz', part)
      kept[name] = part
  p = {k: v for name in networks for k, v in kept[name].items()}
  truth = p['subclass']
  for name in networks:
    top1 = report_lib.accuracy(p[name], truth)
    progress.say(f'[evaluate]   {_NAMES[name]}: top-1 {top1:.4f}' + (' (kept)' if name not in todo else ''))
  for rule in rules:
    top1 = report_lib.accuracy(p[f'rule:{rule.key}'], truth)
    progress.say(f'[evaluate]   Super-Sub, rule {rule.key}: top-1 {top1:.4f}')
  progress.done(f'{len(truth):,} images, {len(todo)} network(s) predicted')

  compute = {'vanilla_steps': trained.vanilla.steps, 'supersub_steps': stages.pipeline_steps(config, trained.hierarchy),
             'batch_size': int(config.batch_size),
             # The start both arms share: Super-Sub's generalist starts from it or from the flat network trained
             # from it (whose steps Super-Sub is then charged).
             'start': report_lib.start_of(config.init.path)}
  report = report_lib.build(p, trained.hierarchy, dataset=config.dataset, split=config.eval_split,
                            storage=storage(trained), compute=compute, top2_threshold=threshold,
                            cut=trained.state.cut.name,
                            matched_steps=trained.vanilla_matched.steps if trained.vanilla_matched else None,
                            rules={rule.key: rule.k for rule in rules},
                            verdict_rule=decide.Rule.parse(config.evaluate.verdict_rule).key)
  if config.evaluate.map_summary:  # where this run sits on a map of studies/map.py, under the verdict's rule
    report['map'] = report_lib.map_context(
        os.path.expanduser(config.evaluate.map_summary), specificity=int(config.synthetic.specificity),
        width=float(config.width), steps=int(compute['vanilla_steps']), rule=report['verdict_rule'])
  if skipped:
    report['rules_skipped'] = {key: 'no flat network of these subclasses in this pipeline to route by (the '
                                    "generalist starts from config.init, which is not one: init.keep_head False)"
                               for key in skipped}
  sizes = sorted({int(x) for x in config.evaluate.benchmark_batch_sizes})
  progress.stage(f'timing and memory of the flat network and Super-Sub at batch sizes {sizes} '
                 f'({len(rules)} decision rules at {max(sizes)}), {int(config.evaluate.benchmark_batches)} timed '
                 'calls each')
  if measured is None:
    measured = measure.measure_inference(config, trained.hierarchy, trained.vanilla, trained.state,
                                         generalist_model=trained.generalist.model,
                                         specialist_model=trained.specialist_model, paths=paths, rules=rules,
                                         flat=trained.flat_router,
                                         say=lambda line: progress.say(f'[evaluate]   {line}'))
    for key, speed in measured['rules'].items():
      progress.say(f'[evaluate]   rule {key}: {speed["images_per_s"]:,.0f} img/s at batch {speed["batch_size"]} '
                   f'(calls {speed["ms_range"][0]:,.1f}-{speed["ms_range"][1]:,.1f} ms)')
    progress.done('measured')
    if jax.process_index() == 0:
      _store_part(workdir, 'measurements', keys['measurements'], 'json', measured)
  else:
    progress.done('kept from the previous evaluation')
  report.update({'memory': measured['memory'], 'throughput': measured['throughput']})
  for rule in rules:
    report['rules'][rule.key].update(measured['rules'].get(rule.key, {}))  # oracle-routed rules are not timed
  report['memory']['bank_export_bytes'] = sum(report['storage']['specialists_bytes'])
  report['evaluation'] = {'fingerprints': keys, 'kept': sorted([n for n in networks if n not in todo]
                                                             + (['measurements'] if measured_kept else [])),
                          'finished': time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}
  progress.stage('report and plots')
  if jax.process_index() == 0:
    report_lib.write(report, workdir, figures=lambda folder: plots.write_plots(p, trained.hierarchy, report, folder))
  progress.done(f'wrote {workdir}/report.json, report.md and {len(report.get("plots", []))} plots')
  return report
