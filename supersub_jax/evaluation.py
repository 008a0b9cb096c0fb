"""Evaluation of a trained workdir: vanilla against Super-Sub on the held-out split (``config.eval_split``),
storage, memory and throughput.

``run(config, workdir)`` loads the checkpoints of the stages (``load_trained``), predicts every held-out image with
the vanilla network, the generalist and Super-Sub (top-1, oracle and top-2 routing; ``collect_predictions``), and
turns the predictions into the report (``report.build``), with the inference measurements of
``supersub_jax.measure``; ``report.write`` writes ``report.json``, ``report.md`` and the PNG plots into the workdir.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from supersub_jax import bank as bank_lib
from supersub_jax import checkpoint as ckpt
from supersub_jax import decide
from supersub_jax import delta as delta_lib
from supersub_jax import exported as exported_lib
from supersub_jax import inference
from supersub_jax import measure
from supersub_jax import report as report_lib
from supersub_jax import specialists
from supersub_jax import stages


def rules_of(config) -> list[decide.Rule]:
  """``config.evaluate.rules`` parsed, without repeats, in order."""
  return list(dict.fromkeys(decide.Rule.parse(spec) for spec in config.evaluate.rules))


def collect_predictions(config, workdir: str, hierarchy, vanilla, state, generalist_model, specialist_model,
                        *, threshold: float, paths: Mapping[str, Any],
                        vanilla_matched: stages.Network | None = None,
                        head_only: bank_lib.SuperSub | None = None,
                        rules: Sequence[decide.Rule] = (),
                        flat_router: stages.Network | None = None) -> dict[str, np.ndarray]:
  """Labels and predictions of every image of config.eval_split, as int arrays [M] (padding dropped), the flat
  network's within the true superclass too ('vanilla_oracle', ``decide.within_superclass``); with
  ``vanilla_matched``, its predictions too (and 'vanilla_matched_oracle'), with ``head_only``, Super-Sub's with the
  head-only specialists, and for each of ``rules``, Super-Sub's under that decision rule (key 'rule:<rule.key>'),
  routed by ``flat_router`` where the rule's router needs a flat network."""
  if flat_router is None and any(rule.router != 'generalist' for rule in rules):
    raise ValueError(f'decision rules {[r.key for r in rules if r.router != "generalist"]} route by a flat network, '
                     'and this pipeline has none (the generalist starts neither from the vanilla network nor from '
                     "config.init's): drop them from config.evaluate.rules.")
  router_vars = None if flat_router is None else {'params': flat_router.params,
                                                  'batch_stats': flat_router.batch_stats}
  source = stages.load_source(config, config.eval_split, hierarchy)
  batches = stages.eval_batches(config, source, label_mode='subclass', batch_size=config.evaluate.batch_size,
                                process_index=0, process_count=1, local_device_count=1)
  vanilla_apply = measure.eval_apply(vanilla.model)
  vanilla_vars = {'params': vanilla.params, 'batch_stats': vanilla.batch_stats}
  keys = ('subclass', 'superclass', 'vanilla', 'vanilla_oracle', 'generalist', 'supersub', 'oracle', 'top2', 'second')
  l2s = jnp.asarray(hierarchy.label_to_superclass, jnp.int32)
  if vanilla_matched is not None:
    keys += ('vanilla_matched', 'vanilla_matched_oracle')
    matched_apply = measure.eval_apply(vanilla_matched.model)
    matched_vars = {'params': vanilla_matched.params, 'batch_stats': vanilla_matched.batch_stats}
  if head_only is not None:
    keys += ('head_only',)
  keys += tuple(f'rule:{rule.key}' for rule in rules)
  out = {k: [] for k in keys}
  for batch in batches:
    keep = batch['mask'].reshape(-1) > 0
    images = jnp.asarray(batch['image'].reshape((-1,) + batch['image'].shape[2:]))
    superclass = batch['superclass'].reshape(-1)
    superclass_dev = jnp.asarray(superclass)
    top1 = inference.predict(state, images, generalist_model=generalist_model, specialist_model=specialist_model,
                             **paths)
    oracle = inference.predict_oracle(state, images, superclass_dev, specialist_model=specialist_model,
                                      **paths)
    top2 = inference.predict_top2(state, images, generalist_model=generalist_model,
                                  specialist_model=specialist_model, threshold=threshold, **paths)
    vanilla_logits = vanilla_apply(vanilla_vars, images)
    rows = {
        'subclass': batch['subclass'].reshape(-1), 'superclass': superclass,
        'vanilla': np.argmax(np.asarray(vanilla_logits), -1),
        'vanilla_oracle': np.asarray(decide.within_superclass(vanilla_logits, superclass_dev, l2s)),
        'generalist': np.asarray(top1['superclass']), 'supersub': np.asarray(top1['label']),
        'oracle': np.asarray(oracle['label']), 'top2': np.asarray(top2['label']),
        'second': np.asarray(top2['second']),
    }
    if vanilla_matched is not None:
      matched_logits = matched_apply(matched_vars, images)
      rows['vanilla_matched'] = np.argmax(np.asarray(matched_logits), -1)
      rows['vanilla_matched_oracle'] = np.asarray(decide.within_superclass(matched_logits, superclass_dev, l2s))
    if head_only is not None:
      rows['head_only'] = np.asarray(inference.predict(head_only, images, generalist_model=generalist_model,
                                                       specialist_model=specialist_model,
                                                       **paths)['label'])
    for rule in rules:
      rows[f'rule:{rule.key}'] = rows['supersub'] if rule == decide.Rule() else np.asarray(inference.predict_rule(
          state, images, router_vars, rule=rule, generalist_model=generalist_model, specialist_model=specialist_model,
          flat_model=flat_router and flat_router.model, **paths)['label'])
    for k in keys:
      out[k].append(np.asarray(rows[k])[keep])
  return {k: np.concatenate(v) for k, v in out.items()}


@dataclasses.dataclass
class Trained:
  """A finished workdir, loaded for inference: the networks, the exported specialists and the SuperSub state
  (``vanilla_matched``: the compute-matched baseline, and ``head_only``: the SuperSub state of the head-only
  specialists, when ``config.stages`` trains them). ``flat_router``: the flat network Super-Sub's pipeline started
  from (``flat_router_of``), which the 'flat' and 'mean' decision rules route by; None when there is none."""
  hierarchy: Any
  vanilla: stages.Network
  generalist: stages.Network
  exported: list
  state: bank_lib.SuperSub
  specialist_model: Any
  vanilla_matched: stages.Network | None = None
  head_only: bank_lib.SuperSub | None = None
  flat_router: stages.Network | None = None


def flat_router_of(config, vanilla: stages.Network, hierarchy) -> stages.Network | None:
  """The flat network Super-Sub's own pipeline paid for or started from: the vanilla network when the generalist
  starts from it, else config.init's network when it is a flat network of these subclasses (``init.keep_head``;
  pretrained: paid for by neither Super-Sub nor the flat network it is compared with), else None (e.g. ImageNet
  weights of 1000 other classes). Routing by any other flat network would spend compute Super-Sub is not charged
  for."""
  if config.superclass.init_from_vanilla:
    return vanilla
  return stages.load_init_network(config, hierarchy) if config.init.keep_head else None


def load_trained(config, workdir: str) -> Trained:
  """Loads the vanilla network, the generalist and every specialist of ``workdir`` (checked against ``config``)."""
  hierarchy = stages.make_hierarchy(config)
  vanilla = stages.load_network(config, workdir, 'vanilla', hierarchy)
  generalist = stages.load_network(config, workdir, 'superclass', hierarchy)
  exported = [specialists.load_exported(config, workdir, k, generalist, hierarchy)
              for k in range(hierarchy.num_superclasses)]
  state = bank_lib.build_supersub({'params': generalist.params, 'batch_stats': generalist.batch_stats}, exported,
                                  hierarchy)
  matched = head_only = None
  if 'vanilla_matched' in config.stages:
    matched = stages.load_network(config, workdir, 'vanilla_matched', hierarchy)
  if 'head_only' in config.stages:
    head_only = bank_lib.build_supersub(
        {'params': generalist.params, 'batch_stats': generalist.batch_stats},
        [specialists.load_exported(config, workdir, k, generalist, hierarchy, stage='head_only')
         for k in range(hierarchy.num_superclasses)], hierarchy)
  return Trained(hierarchy, vanilla, generalist, exported, state, stages.make_model(config, state.num_outputs),
                 matched, head_only, flat_router_of(config, vanilla, hierarchy))


def storage(trained: Trained) -> dict:
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


def run(config, workdir: str) -> dict:
  """Evaluates the trained workdir: predictions -> report; writes report.json, report.md and PNGs there (process 0)
  and returns the report."""
  workdir = ckpt.abs_path(workdir)
  trained = load_trained(config, workdir)
  threshold = float(config.evaluate.top2_threshold)
  paths = inference.path_settings(config.evaluate)  # how the specialists run (all give the same predictions)
  # Without a flat network of its own, Super-Sub has no flat router: those rules are skipped, and the report says so.
  rules = [r for r in rules_of(config) if r.router == 'generalist' or trained.flat_router is not None]
  skipped = [r.key for r in rules_of(config) if r not in rules]
  p = collect_predictions(config, workdir, trained.hierarchy, trained.vanilla, trained.state,
                          trained.generalist.model, trained.specialist_model, threshold=threshold,
                          paths=paths, vanilla_matched=trained.vanilla_matched,
                          head_only=trained.head_only, rules=rules, flat_router=trained.flat_router)
  compute = {'vanilla_steps': trained.vanilla.steps, 'supersub_steps': stages.pipeline_steps(config, trained.hierarchy),
             'batch_size': int(config.batch_size)}
  report = report_lib.build(p, trained.hierarchy, dataset=config.dataset, split=config.eval_split,
                            storage=storage(trained), compute=compute, top2_threshold=threshold,
                            cut=trained.state.cut.name,
                            matched_steps=trained.vanilla_matched.steps if trained.vanilla_matched else None,
                            rules={rule.key: rule.k for rule in rules})
  if skipped:
    report['rules_skipped'] = {key: 'no flat network of these subclasses in this pipeline to route by (the '
                                    "generalist starts from config.init, which is not one: init.keep_head False)"
                               for key in skipped}
  report.update(measure.measure_inference(config, trained.hierarchy, trained.vanilla, trained.state,
                                          generalist_model=trained.generalist.model,
                                          specialist_model=trained.specialist_model, paths=paths))
  if rules:
    speed = measure.measure_rules(config, trained.hierarchy, trained.state, rules, flat=trained.flat_router,
                                  generalist_model=trained.generalist.model,
                                  specialist_model=trained.specialist_model, paths=paths)
    for rule in rules:
      report['rules'][rule.key].update(speed[rule.key])
  report['memory']['bank_export_bytes'] = sum(report['storage']['specialists_bytes'])
  if jax.process_index() == 0:
    report_lib.write(report, workdir, predictions=p, hierarchy=trained.hierarchy)
  return report
