"""Measurement: one timing loop, compiled and resident memory, and real held-out batches to time on.

Every speed number of the project -- report.json's throughput, ``benchmarks/`` -- comes from ``time_calls``: the
functions under test take turns in one process (so a machine whose speed drifts slows them alike), each call is
timed to completion (``jax.block_until_ready``), and the first call of each, which compiles, is kept apart. A
``Timing`` holds every call's seconds; throughput is the mean (total images over total time), which a periodic cost
(a mask update every tenth step, a specialist that only some batches reach) cannot hide the way a median would.

Inputs are real: ``held_out_batches`` draws distinct batches of the held-out split in a fixed random order,
preprocessed as evaluation preprocesses them, so routing sees what it sees in use (never zeros, never one image).
"""

from __future__ import annotations

import dataclasses
import functools
import resource
import sys
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np

from supersub_jax import bank as bank_lib
from supersub_jax import decide
from supersub_jax import delta as delta_lib
from supersub_jax import inference
from supersub_jax import stages
from supersub_jax import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Timing:
  """Seconds of one function's timed calls (float64 [calls]) and of its first, compiling, call."""
  seconds: np.ndarray
  first_s: float

  @property
  def mean(self) -> float:
    return float(np.mean(self.seconds))

  @property
  def median(self) -> float:
    return float(np.median(self.seconds))


def time_calls(fns: Mapping[str, Callable[[int], Any]], calls: int, *, turn: int = 1,
               warmup: int = 1) -> dict[str, Timing]:
  """Times ``calls`` calls ``fn(i)`` (i = 0 .. calls - 1) of every function, taking turns.

  Args:
    fns: name -> ``fn(i)``; what it returns is waited for (``jax.block_until_ready``), so asynchronous dispatch is
      timed to completion. ``i`` picks the call's input (e.g. a batch); warm-up calls get ``i = 0``.
    calls: timed calls of each function.
    turn: consecutive calls of one function before the next takes over (e.g. a whole mask-update period, so that
      each function's share of the timed calls holds whole periods).
    warmup: untimed calls of each function first; the first one (compilation included) is ``Timing.first_s``.
  Returns:
    name -> ``Timing``.
  """
  if calls < 1 or turn < 1 or warmup < 1:
    raise ValueError(f'calls={calls}, turn={turn} and warmup={warmup} must each be >= 1.')
  first = {}
  for name, fn in fns.items():
    start = time.perf_counter()
    jax.block_until_ready(fn(0))
    first[name] = time.perf_counter() - start
    for _ in range(warmup - 1):
      jax.block_until_ready(fn(0))
  seconds = {name: np.zeros(calls) for name in fns}
  for begin in range(0, calls, turn):
    for name, fn in fns.items():
      for i in range(begin, min(begin + turn, calls)):
        start = time.perf_counter()
        jax.block_until_ready(fn(i))
        seconds[name][i] = time.perf_counter() - start
  return {name: Timing(seconds[name], first[name]) for name in fns}


def compiled_bytes(fn: Callable, *args) -> dict[str, int]:
  """XLA's compiled memory analysis of the jitted ``fn(*args)`` (args may be ShapeDtypeStructs): 'argument',
  'output', 'temp', 'alias' bytes and their 'total' (arguments + outputs + temporaries - aliases); {} when the
  backend gives no analysis."""
  analysis = fn.lower(*args).compile().memory_analysis()
  if analysis is None:
    return {}
  out = {k: int(getattr(analysis, f'{k}_size_in_bytes')) for k in ('argument', 'output', 'temp', 'alias')}
  out['total'] = out['argument'] + out['output'] + out['temp'] - out['alias']
  return out


def peak_rss_bytes() -> int:
  """This process's peak resident memory."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(peak if sys.platform == 'darwin' else peak * 1024)


class _Shuffled:
  """A random-access view of ``source`` in a fixed random order: held-out splits are often stored class by class,
  and consecutive images would all go to one specialist (routing's best case)."""

  def __init__(self, source, count: int, seed: int):
    self.source = source
    self.index = np.random.default_rng(seed).permutation(len(source))[:count]

  def __len__(self):
    return len(self.index)

  def __getitem__(self, i):
    return self.source[int(self.index[i])]


def held_out_batches(config, hierarchy, batch_size: int, count: int, seed: int = 0) -> list[np.ndarray]:
  """Up to ``count`` distinct batches float32[B, H, W, 3] of held-out images (config.eval_split), drawn in a fixed
  random order and preprocessed as evaluation preprocesses them; B = ``batch_size``, or the whole split if smaller.
  """
  source = stages.load_source(config, config.eval_split, hierarchy)
  batch_size = min(batch_size, len(source))
  count = max(1, min(count, len(source) // batch_size))
  view = _Shuffled(source, count * batch_size, seed)
  batches = stages.eval_batches(config, view, label_mode='subclass', batch_size=batch_size, process_index=0,
                                process_count=1, local_device_count=1)
  out = [np.asarray(b['image']).reshape((-1,) + b['image'].shape[2:]) for b in batches]
  return [x for x in out if x.shape[0] == batch_size][:count]


def eval_apply(model) -> Callable:
  """The jitted eval-mode forward ``(variables, images) -> logits`` of a flax model."""
  return jax.jit(functools.partial(model.apply, train=False))


def measure_inference(config, hierarchy, single: workdir_lib.Network, state: bank_lib.SuperSub, *, generalist_model,
                      specialist_model, paths: Mapping[str, Any], rules=(), flat: workdir_lib.Network | None = None,
                      say: Callable[[str], None] | None = None) -> dict:
  """Throughput and memory of a single network and of Super-Sub (top-1 routing) on real held-out batches.

  For each of ``config.evaluate.benchmark_batch_sizes``: ``config.evaluate.benchmark_batches`` distinct batches of
  held-out images in random order, so the generalist routes them as it routes the split; both models take turns
  (``time_calls``), and images/s is the batch over the mean seconds per call. Memory: XLA's compiled memory
  analysis of one call at each batch size, and the parameter-resident bytes (what stays on device between calls,
  plus the one specialist materialized during a call). Returns report.json's 'memory' and 'throughput'. ``say``
  gets a progress line per batch size.

  ``rules`` (``decide.Rule``; ``flat``: the flat router of those that need one) take their turns with the two models
  at the largest batch size, so that every speed of the report at that batch comes from one measurement: 'rules'
  (rule key -> images/s, batch size and the range of per-call seconds) is returned too; the paper's rule ('hard')
  is Super-Sub's own call; rules routed by the true superclass ('oracle') have no speed in use and are left out.
  Every time has its spread: '*_ms_range', the fastest and slowest timed call.
  """
  repeats = int(config.evaluate.benchmark_batches)
  single_vars = jax.device_put({'params': single.params, 'batch_stats': single.batch_stats})
  single_apply = eval_apply(single.model)
  generalist_apply = eval_apply(generalist_model)
  predict = jax.jit(functools.partial(inference.predict, rule=decide.Rule('hard'), generalist_model=generalist_model,
                                      specialist_model=specialist_model, **paths))
  device = jax.devices()[0]
  by_batch_time, by_batch_memory = {}, {}
  sizes = sorted({int(x) for x in config.evaluate.benchmark_batch_sizes})
  flat_vars = None if flat is None else jax.device_put({'params': flat.params, 'batch_stats': flat.batch_stats})
  extra = {}  # the rules other than the paper's, timed at the largest batch size only
  # A rule routed by the true superclass ('oracle') has no speed in use: it is not timed.
  rules = [rule for rule in rules if not rule.needs_superclass]
  for rule in rules:
    if rule.key != 'hard':
      extra[rule.key] = functools.partial(inference.predict, rule=rule, generalist_model=generalist_model,
                                          specialist_model=specialist_model, flat_model=flat and flat.model, **paths)
  rule_speed = {}
  for n, requested in enumerate(sizes):
    batches = [jax.device_put(x) for x in held_out_batches(config, hierarchy, requested, repeats)]
    b = int(batches[0].shape[0])
    start = time.perf_counter()
    fns = {'single': lambda i: single_apply(single_vars, batches[i]), 'supersub': lambda i: predict(state, batches[i])}
    if requested == sizes[-1]:
      fns.update({f'rule:{key}': (lambda i, run=run: run(state, batches[i], flat=flat_vars))
                  for key, run in extra.items()})
    timing = time_calls(fns, len(batches))
    single_s, supersub_s = timing['single'].mean, timing['supersub'].mean
    if requested == sizes[-1]:
      rule_speed = {key: _speed(b, timing[f'rule:{key}' if key != 'hard' else 'supersub'])
                    for key in [r.key for r in rules]}
    # How many specialists a batch reaches: the generalist's argmax alone (a second Super-Sub pass is not needed).
    groups = [len(np.unique(np.argmax(np.asarray(generalist_apply(state.generalist, x)), -1))) for x in batches]
    by_batch_time[str(b)] = {'single_ips': b / single_s, 'supersub_ips': b / supersub_s,
                             'ratio': single_s / supersub_s, 'single_ms': 1e3 * single_s,
                             'supersub_ms': 1e3 * supersub_s, 'batches': len(batches),
                             'single_ms_range': _ms_range(timing['single']),
                             'supersub_ms_range': _ms_range(timing['supersub']),
                             'specialists_per_batch': float(np.mean(groups))}
    spec = jax.ShapeDtypeStruct(batches[0].shape, batches[0].dtype)
    single_mem = compiled_bytes(single_apply, single_vars, spec)
    supersub_mem = compiled_bytes(predict, state, spec)
    by_batch_memory[str(b)] = {'single_bytes': single_mem.get('total', 0),
                               'supersub_bytes': supersub_mem.get('total', 0),
                               'single_detail': single_mem, 'supersub_detail': supersub_mem}
    if say is not None:
      say(f'batch size {b} ({n + 1}/{len(sizes)}): {len(batches)} timed calls each, '
          f'{b / single_s:,.0f} vs {b / supersub_s:,.0f} img/s, compiled memory '
          f'{single_mem.get("total", 0):,} vs {supersub_mem.get("total", 0):,} B '
          f'({time.perf_counter() - start:,.1f}s)')
  largest = str(max(int(b) for b in by_batch_time))
  one_specialist = jax.eval_shape(lambda: inference.specialist_variables(
      state.bank, state.base, 0, state.hierarchy.max_subclasses))
  resident = {'single_bytes': delta_lib.tree_nbytes(single_vars),
              'generalist_bytes': delta_lib.tree_nbytes(state.generalist),
              'bank_bytes': bank_lib.nbytes(state.bank),
              'specialist_bytes': int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(one_specialist)))}
  resident['supersub_bytes'] = resident['generalist_bytes'] + resident['bank_bytes'] + resident['specialist_bytes']
  # With materialize='layer' (inference.unpack.lazy_specialist_variables) one layer's dense kernel is materialized
  # at a time.
  resident['largest_layer_bytes'] = inference.largest_dense_leaf_bytes(state.bank, state.base)
  resident['per_layer_supersub_bytes'] = (resident['generalist_bytes'] + resident['bank_bytes']
                                          + resident['largest_layer_bytes'])
  memory = {'single_bytes': by_batch_memory[largest]['single_bytes'],
            'supersub_bytes': by_batch_memory[largest]['supersub_bytes'],
            'batch_size': int(largest), 'by_batch': by_batch_memory, 'params_resident': resident,
            'bank_bytes': resident['bank_bytes'], 'process_peak_rss_bytes': peak_rss_bytes(),
            'method': 'XLA compiled memory analysis (arguments + outputs + temporaries - aliases) of one jitted '
                      f'call per batch size on {device.platform}; params_resident: generalist + bank + one '
                      'materialized specialist, against the flat network\'s params and BatchNorm statistics'}
  stats = getattr(device, 'memory_stats', lambda: None)()
  if stats and 'peak_bytes_in_use' in stats:
    memory['device_peak_bytes_in_use'] = int(stats['peak_bytes_in_use'])
  throughput = {'single_ips': by_batch_time[largest]['single_ips'],
                'supersub_ips': by_batch_time[largest]['supersub_ips'], 'batch_size': int(largest),
                'ratio': by_batch_time[largest]['ratio'], 'by_batch': by_batch_time,
                'device': str(device.device_kind), 'repeats': repeats,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in paths.items()},
                'method': f'mean seconds per call over {repeats} distinct {config.eval_split} batches per batch '
                          'size, drawn in random order and routed as the generalist routes them; flat network '
                          'and Super-Sub (and, at the largest batch, each decision rule) taking turns in one process, '
                          'after a compiling call'}
  return {'memory': memory, 'throughput': throughput, 'rules': rule_speed}


def _ms_range(timing: Timing) -> list[float]:
  """[fastest, slowest] timed call, in milliseconds."""
  return [1e3 * float(np.min(timing.seconds)), 1e3 * float(np.max(timing.seconds))]


def _speed(batch: int, timing: Timing) -> dict:
  return {'images_per_s': batch / timing.mean, 'batch_size': batch, 'ms': 1e3 * timing.mean,
          'ms_range': _ms_range(timing)}
