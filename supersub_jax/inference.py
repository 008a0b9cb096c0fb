"""Two-stage Super-Sub inference: the generalist picks a superclass, that superclass's specialist the subclass.

Storage on device. The N exported specialists (``specialists.export``: compressed delta over the generalist's
backbone, the head's real columns, BatchNorm statistics) are loaded into one ``SpecialistBank`` whose arrays carry
a leading specialist axis, so a compiled function picks specialist ``k`` with a *traced* index. Deltas stay sparse:
per delta leaf, flat int32 positions plus int8 codes and float32 scales (or float32 values for unquantized
deltas). A specialist's dense params exist only transiently (``specialist_variables``), one at a time.

Routing. ``route`` groups the images of a batch by specialist on device (stable argsort of the routes) and runs a
``lax.fori_loop`` with a dynamic trip count over chunks of ``chunk_size`` images of one group each. Every iteration
materializes one specialist, so the peak memory is the bank + ONE dense network + one chunk's activations
whatever N, and the work is ``sum_k ceil(n_k / chunk_size) * chunk_size <= B + N * chunk_size`` images, not N * B.
The specialist is re-materialized per chunk (a scatter over its kept entries, cheap next to the forward pass of
a chunk of ``chunk_size`` >~ 32 images).

Predictions. ``predict`` (top-1 routing), ``predict_oracle`` (routing by the true superclass) and ``predict_top2``
(a second specialist for images the generalist is unsure about) are jitted with the flax models and the chunk size
as static arguments, over a ``SuperSub`` state pytree (``build_supersub``). They target a single device: plain
``jax.jit``, no sharding annotations; evaluation batches are small enough for one accelerator, and the
specialist loop is sequential anyway. The model-free cores ``decide_top1``/``decide_top2``/``decide_oracle`` take
superclass logits and a specialist function, so routing can be tested on hand-built outputs.

Padded classes (heads are padded to ``max_subclasses``) and skipped images get the logit ``NEG_LOGIT``, the value
``train.mask_logits`` uses in training.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from supersub_jax import delta as delta_lib

PyTree = Any
SpecialistLogitsFn = Callable[[jax.Array, jax.Array], jax.Array]

# Same value as train.mask_logits: finite, so a softmax over an all-masked row stays defined (uniform).
NEG_LOGIT = float(np.finfo(np.float32).min / 2)


# ----------------------------------------------------------------------------------------------------------------------
# State pytrees


@struct.dataclass
class SpecialistBank:
  """N specialists stacked on a leading axis (see ``make_bank``). All leaves are jax arrays.

  Attributes:
    deltas: '/'-joined backbone param path -> record, for every leaf that any specialist changes. A record holds
      ``'indices'`` int32[N, K]: ascending flat (C-order) positions of the kept entries, padded with the leaf size
      (out of range: dropped by the scatter); and either ``'codes'`` int8[N, K] + ``'scale'`` float32[N, C]
      (C = the leaf's last dim for per-channel scales, 1 for per-tensor ones; entry i uses ``scale[i % C]``),
      or ``'values'`` float32[N, K] when some specialist stored this leaf unquantized. Padding codes/values are 0.
    head: ``'kernel'`` float32[N, D, S], ``'bias'`` float32[N, S]; columns >= n_k are zero (S = max_subclasses).
    batch_stats: the generalist's batch_stats tree with every leaf stacked to [N, ...].
    num_subclasses: int32[N], n_k of each specialist.
  """
  deltas: dict
  head: dict
  batch_stats: PyTree
  num_subclasses: jax.Array

  @property
  def num_specialists(self) -> int:
    return int(self.num_subclasses.shape[0])

  @property
  def max_subclasses(self) -> int:
    return int(self.head['bias'].shape[-1])


@struct.dataclass
class HierarchyArrays:
  """The parts of a ``hierarchy.Hierarchy`` that inference needs, as device arrays.

  Attributes:
    local_to_label: int32[N, S], global subclass label of (superclass, local index); -1 on padding.
    local_valid: bool[N, S], True where the local index is a real subclass.
  """
  local_to_label: jax.Array
  local_valid: jax.Array

  @classmethod
  def from_hierarchy(cls, hierarchy) -> 'HierarchyArrays':
    return cls(local_to_label=jnp.asarray(hierarchy.local_to_label, jnp.int32),
               local_valid=jnp.asarray(hierarchy.local_valid, bool))


@struct.dataclass
class SuperSub:
  """Everything two-stage inference reads: a pytree, passed as a traced argument to the jitted predictors.

  Attributes:
    generalist: ``{'params', 'batch_stats'}`` of the generalist (head of N outputs).
    bank: the N specialists (``SpecialistBank``).
    hierarchy: ``HierarchyArrays`` of the N superclasses.
  The specialists' base is ``generalist['params']`` without its head (``base``): derived, not stored, so the
  backbone is held once on device.
  """
  generalist: dict
  bank: SpecialistBank
  hierarchy: HierarchyArrays

  @property
  def base(self) -> dict:
    return backbone(self.generalist['params'])


def backbone(params: Mapping[str, Any]) -> dict:
  """Params without the top-level ``'head'`` (the specialists' base)."""
  return {k: v for k, v in params.items() if k != 'head'}


# ----------------------------------------------------------------------------------------------------------------------
# Loading: exported specialists -> bank


def _flat_leaves(tree: PyTree) -> dict[str, Any]:
  return {delta_lib.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _stack_records(decoded: list[delta_lib.DecodedRecord | None],
                   leaf_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
  """Per-specialist decoded records of one leaf (None = no delta) -> one padded bank record."""
  size = int(np.prod(leaf_shape, dtype=np.int64))
  n = len(decoded)
  present = [d for d in decoded if d is not None]
  k_max = max(1, max(d.indices.size for d in present))  # >= 1: no zero-size device arrays
  indices = np.full((n, k_max), size, np.int32)  # pad = size: out of range, dropped by the scatter
  for i, d in enumerate(decoded):
    if d is not None:
      indices[i, :d.indices.size] = d.indices
  channels = leaf_shape[-1] if leaf_shape else 1
  c = channels if any(d.scale is not None and d.scale.size > 1 for d in present) else 1

  if any(d.values is not None for d in present):
    # Some specialist stored this leaf unquantized: hold float values for all of them. codes * scale is an exact
    # float32 product (grid scales, see quant), so dequantizing here gives the bits materialize_compressed gives.
    values = np.zeros((n, k_max), np.float32)
    for i, d in enumerate(decoded):
      if d is None:
        continue
      if d.values is not None:
        v = d.values
      else:
        ch = d.indices % channels if d.scale.size > 1 else np.zeros_like(d.indices)
        v = d.codes.astype(np.float32) * d.scale[ch]
      values[i, :v.size] = v
    return {'indices': indices, 'values': values}

  codes = np.zeros((n, k_max), np.int8)
  scale = np.ones((n, c), np.float32)  # 1.0 for specialists without this leaf: their codes are all padding
  for i, d in enumerate(decoded):
    if d is not None:
      codes[i, :d.codes.size] = d.codes
      scale[i] = np.broadcast_to(d.scale, (c,)) if d.scale.size == 1 else d.scale
  return {'indices': indices, 'codes': codes, 'scale': scale}


def make_bank(exported: Sequence[Mapping[str, Any]], base: PyTree, max_subclasses: int) -> SpecialistBank:
  """Stacks N exported specialists into a device ``SpecialistBank`` (host-side; run once at load time).

  Args:
    exported: specialist k's ``specialists.export`` dict: ``'delta'`` (``CompressedDelta`` over ``base``),
      ``'head'`` (``'kernel'`` float32[D, n_k], ``'bias'`` float32[n_k]), ``'batch_stats'`` (one tree shared by all).
      Specialists may differ in bits (8/4/2/unquantized), scale granularity, kept entries and delta leaves.
    base: the generalist's backbone params (no ``'head'``); only its structure and shapes are read here.
    max_subclasses: S, the padded head width (``hierarchy.max_subclasses``).
  Returns:
    The bank with arrays on the default device. Bitmask positions are converted to indices and int4/int2 codes
    unpacked to int8 here, so nothing is decoded inside the compiled predictors.
  """
  if not exported:
    raise ValueError('make_bank needs at least one exported specialist.')
  if 'head' in base:
    raise ValueError("base has a 'head' entry; pass the generalist's backbone params (inference.backbone(params)).")
  base_leaves = {p: tuple(np.shape(x)) for p, x in _flat_leaves(base).items()}
  n = len(exported)
  decoded: dict[str, list] = {}
  heads, stats, sizes = [], [], []
  stats_struct = None
  for k, ex in enumerate(exported):
    missing = {'delta', 'head', 'batch_stats'} - set(ex)
    if missing:
      raise ValueError(f'exported specialist {k} lacks {sorted(missing)}; build it with specialists.export.')
    for keys, rec in delta_lib.walk_records(ex['delta']):
      path = '/'.join(keys)
      where = f'specialist {k}, delta leaf {path!r}'
      if path not in base_leaves:
        raise ValueError(f'{where} is not a base param (base has e.g. {sorted(base_leaves)[:4]}); export the '
                         'delta against the same backbone as the generalist.')
      decoded.setdefault(path, [None] * n)[k] = delta_lib.decode_record(rec, where, expected_shape=base_leaves[path])
    kernel = np.asarray(ex['head']['kernel'], np.float32)
    bias = np.asarray(ex['head']['bias'], np.float32)
    if kernel.ndim != 2 or bias.shape != (kernel.shape[1],):
      raise ValueError(f'specialist {k} head has kernel {kernel.shape} and bias {bias.shape}; expected [D, n_k] '
                       'and [n_k].')
    if not 1 <= kernel.shape[1] <= max_subclasses:
      raise ValueError(f'specialist {k} has {kernel.shape[1]} subclasses, outside [1, max_subclasses='
                       f'{max_subclasses}]; pass hierarchy.max_subclasses.')
    if heads and kernel.shape[0] != heads[0][0].shape[0]:
      raise ValueError(f'specialist {k} head has {kernel.shape[0]} input features, specialist 0 has '
                       f'{heads[0][0].shape[0]}; all specialists share the backbone.')
    heads.append((kernel, bias))
    sizes.append(kernel.shape[1])
    struct_k = jax.tree.structure(ex['batch_stats'])
    if stats_struct is None:
      stats_struct = struct_k
    elif struct_k != stats_struct:
      raise ValueError(f'specialist {k} batch_stats tree differs from specialist 0\'s; every specialist keeps '
                       'the generalist\'s BatchNorm layout.')
    stats.append(ex['batch_stats'])

  deltas = {p: _stack_records(decoded[p], base_leaves[p]) for p in sorted(decoded)}
  d = heads[0][0].shape[0]
  head = {'kernel': np.zeros((n, d, max_subclasses), np.float32), 'bias': np.zeros((n, max_subclasses), np.float32)}
  for k, (kernel, bias) in enumerate(heads):
    head['kernel'][k, :, :kernel.shape[1]] = kernel
    head['bias'][k, :bias.shape[0]] = bias
  try:
    batch_stats = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *stats)
  except ValueError as e:
    raise ValueError(f'specialists\' batch_stats leaves differ in shape: {e}') from e
  bank = SpecialistBank(deltas=deltas, head=head, batch_stats=batch_stats,
                        num_subclasses=np.asarray(sizes, np.int32))
  return jax.device_put(bank)


def bank_nbytes(bank: SpecialistBank) -> int:
  """Bytes the bank holds on device (sparse deltas, padded heads, BatchNorm statistics, sizes)."""
  return delta_lib.tree_nbytes(bank)


def build_supersub(generalist_variables: Mapping[str, Any], exported: Sequence[Mapping[str, Any]],
                   hierarchy) -> SuperSub:
  """The inference state: generalist variables, the bank of ``exported`` (one per superclass, in order), and
  the hierarchy's label maps, all on the default device.

  Raises ValueError if the counts of superclasses, generalist outputs and specialists or the specialists'
  subclass counts disagree with ``hierarchy``.
  """
  params = generalist_variables['params']
  n = int(hierarchy.num_superclasses)
  if 'head' not in params:
    raise ValueError("generalist params have no 'head'; pass the generalist's {'params', 'batch_stats'}.")
  outputs = int(np.shape(params['head']['bias'])[-1])
  if outputs != n:
    raise ValueError(f'the generalist has {outputs} outputs but the hierarchy has {n} superclasses.')
  if len(exported) != n:
    raise ValueError(f'{len(exported)} exported specialists for {n} superclasses; export one per superclass, '
                     'in superclass order.')
  bank = make_bank(exported, backbone(params), int(hierarchy.max_subclasses))
  got = np.asarray(bank.num_subclasses)
  want = np.asarray(hierarchy.sizes)
  if not np.array_equal(got, want):
    bad = int(np.flatnonzero(got != want)[0])
    raise ValueError(f'specialist {bad} has {got[bad]} subclasses but superclass {bad} has {want[bad]}; the '
                     'exported specialists do not match this hierarchy.')
  generalist = jax.device_put({'params': params, 'batch_stats': generalist_variables.get('batch_stats', {})})
  return SuperSub(generalist=generalist, bank=bank, hierarchy=HierarchyArrays.from_hierarchy(hierarchy))


# ----------------------------------------------------------------------------------------------------------------------
# One specialist, dense and transient


def _materialize_leaf(b: jax.Array, rec: Mapping[str, jax.Array], k: jax.Array) -> jax.Array:
  b = jnp.asarray(b)
  idx = rec['indices'][k]
  if 'values' in rec:
    vals = rec['values'][k]
  else:
    scale = rec['scale'][k]
    # Exact product on the scale grid (quant docstring): the bits of quant.dequantize and of the numpy
    # dequantization inside delta.materialize_compressed.
    vals = rec['codes'][k].astype(jnp.float32) * jnp.take(scale, idx % scale.shape[0])
  flat = b.reshape(-1)
  # Scatter into zeros, then add densely: exactly materialize_compressed's ``base + dense_delta`` (untouched entries
  # get + 0.0, kept ones + value), signed zeros included. ``set`` with the out-of-range padding dropped is exact
  # whatever order the scatter runs in.
  dense = jnp.zeros(flat.shape, jnp.float32).at[idx].set(vals, mode='drop')
  return (flat + dense).astype(b.dtype).reshape(b.shape)


def specialist_variables(bank: SpecialistBank, base: PyTree, k: jax.Array | int) -> dict:
  """Dense ``{'params', 'batch_stats'}`` of specialist ``k`` (int or traced int32 scalar), for the specialist model.

  ``params`` is ``base`` plus the dequantized sparse delta, with the padded head [D, S] under ``'head'``; it is
  bit-for-bit ``{**delta.materialize_compressed(base, exported[k]['delta']), 'head': padded head}``. Jittable;
  under jit the dense params are a transient of the surrounding computation. An out-of-range traced ``k`` is
  clamped by jax's indexing.
  """
  k = jnp.asarray(k, jnp.int32)
  base_paths = set(_flat_leaves(base))
  unknown = sorted(set(bank.deltas) - base_paths)
  if unknown:
    raise ValueError(f'bank deltas {unknown[:4]} are not params of base; pass the same backbone the bank was '
                     'built against (inference.backbone(generalist params)).')

  def leaf(path, b):
    rec = bank.deltas.get(delta_lib.path_str(path))
    return b if rec is None else _materialize_leaf(b, rec, k)

  params = jax.tree_util.tree_map_with_path(leaf, dict(base))
  params['head'] = {'kernel': bank.head['kernel'][k], 'bias': bank.head['bias'][k]}
  return {'params': params, 'batch_stats': jax.tree.map(lambda x: x[k], bank.batch_stats)}


# ----------------------------------------------------------------------------------------------------------------------
# Routing core


def route(images: jax.Array, routes: jax.Array, specialist_logits_fn: SpecialistLogitsFn, *,
          num_superclasses: int, chunk_size: int) -> jax.Array:
  """Runs each image through its routed specialist, grouping images by specialist on device.

  Args:
    images: [B, ...] any dtype.
    routes: int32[B], the specialist of each image in [0, num_superclasses), or -1 to skip the image. Values
      outside [-1, N) cannot be reported under jit and are treated as -1.
    specialist_logits_fn: ``(k int32[], chunk [chunk_size, ...]) -> logits [chunk_size, S]``; traced once, with
      ``k`` a traced index. Rows of a chunk past its group's end are zero padding or other groups' images; their
      outputs are discarded.
    num_superclasses: N (static).
    chunk_size: images per specialist call (static, >= 1).
  Returns:
    float32[B, S]: row i is ``specialist_logits_fn(routes[i], ...)``'s row for image i, or ``NEG_LOGIT`` for
    skipped images. The loop runs ``sum_k ceil(n_k / chunk_size)`` iterations (n_k = images routed to k).
  """
  if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1:
    raise ValueError(f'chunk_size={chunk_size!r} must be a positive Python int (it is a static shape).')
  if num_superclasses < 1:
    raise ValueError(f'num_superclasses={num_superclasses} must be >= 1.')
  images = jnp.asarray(images)
  routes = jnp.asarray(routes)
  if routes.ndim != 1 or images.ndim < 1 or routes.shape[0] != images.shape[0]:
    raise ValueError(f'routes must be int [B] for images [B, ...]; got routes {routes.shape}, images {images.shape}.')
  b, c, n = images.shape[0], int(chunk_size), int(num_superclasses)
  chunk_spec = jax.ShapeDtypeStruct((c,) + images.shape[1:], images.dtype)
  out_spec = jax.eval_shape(specialist_logits_fn, jax.ShapeDtypeStruct((), jnp.int32), chunk_spec)
  if len(out_spec.shape) != 2 or out_spec.shape[0] != c:
    raise ValueError(f'specialist_logits_fn must return [chunk_size={c}, S] logits, got {out_spec.shape}.')
  s = out_spec.shape[1]
  if b == 0:
    return jnp.zeros((0, s), jnp.float32)

  # Skipped images form an extra group N, sorted last and never visited.
  groups = jnp.where((routes >= 0) & (routes < n), routes, n).astype(jnp.int32)
  order = jnp.argsort(groups, stable=True)
  counts = jnp.bincount(groups, length=n + 1)[:n].astype(jnp.int32)
  starts = jnp.cumsum(counts) - counts
  num_chunks = (counts + c - 1) // c
  chunk_end = jnp.cumsum(num_chunks)  # chunks of groups 0..g
  # Padding by one chunk keeps every dynamic_slice in bounds: a clamped start would shift rows out of place.
  padded = jnp.concatenate([jnp.take(images, order, axis=0), jnp.zeros((c,) + images.shape[1:], images.dtype)])
  rows = jnp.arange(c, dtype=jnp.int32)

  def body(t, out):
    g = jnp.sum(chunk_end <= t).astype(jnp.int32)  # the group that chunk t belongs to
    start = starts[g] + (t - (chunk_end[g] - num_chunks[g])) * c
    chunk = jax.lax.dynamic_slice_in_dim(padded, start, c, axis=0)
    logits = specialist_logits_fn(g, chunk).astype(jnp.float32)
    valid = rows < starts[g] + counts[g] - start
    current = jax.lax.dynamic_slice_in_dim(out, start, c, axis=0)
    return jax.lax.dynamic_update_slice_in_dim(out, jnp.where(valid[:, None], logits, current), start, axis=0)

  out = jax.lax.fori_loop(0, chunk_end[-1], body, jnp.full((b + c, s), NEG_LOGIT, jnp.float32))
  return jnp.zeros((b, s), jnp.float32).at[order].set(out[:b], unique_indices=True)


# ----------------------------------------------------------------------------------------------------------------------
# Model-free decision rules


def _local_logits(images, routes, specialist_logits_fn, hierarchy: HierarchyArrays, chunk_size):
  n = hierarchy.local_valid.shape[0]
  logits = route(images, routes, specialist_logits_fn, num_superclasses=n, chunk_size=chunk_size)
  valid = hierarchy.local_valid[jnp.clip(routes, 0, n - 1)]
  return jnp.where(valid, logits, NEG_LOGIT)


def _check_superclass_logits(superclass_logits, hierarchy: HierarchyArrays):
  n = hierarchy.local_valid.shape[0]
  if superclass_logits.ndim != 2 or superclass_logits.shape[1] != n:
    raise ValueError(f'superclass logits must be [B, N={n}], got {superclass_logits.shape}; the generalist '
                     'must have one output per superclass.')


def decide_oracle(superclass: jax.Array, images: jax.Array, specialist_logits_fn: SpecialistLogitsFn,
                  hierarchy: HierarchyArrays, *, chunk_size: int) -> dict[str, jax.Array]:
  """Routes image i to specialist ``superclass[i]`` (int32[B], the true superclass).

  Returns dict: 'superclass' int32[B] (the input), 'local' int32[B], 'label' int32[B] (global subclass label;
  -1 where superclass is -1, a skipped image), 'prob' float32[B] = p(sub = local | superclass) (no generalist).
  """
  superclass = jnp.asarray(superclass, jnp.int32)
  local_probs = jax.nn.softmax(_local_logits(images, superclass, specialist_logits_fn, hierarchy, chunk_size))
  local = jnp.argmax(local_probs, axis=-1).astype(jnp.int32)
  label = jnp.where(superclass >= 0, hierarchy.local_to_label[jnp.maximum(superclass, 0), local], -1)
  return {'superclass': superclass, 'local': local, 'label': label, 'prob': jnp.max(local_probs, axis=-1)}


def decide_top1(superclass_logits: jax.Array, images: jax.Array, specialist_logits_fn: SpecialistLogitsFn,
                hierarchy: HierarchyArrays, *, chunk_size: int) -> dict[str, jax.Array]:
  """Top-1 Super-Sub decision from the generalist's logits float[B, N].

  Returns dict: 'superclass_probs' float32[B, N], 'superclass' int32[B] (argmax), 'local' int32[B], 'label'
  int32[B], 'prob' float32[B] = p(super) * p(sub | super).
  """
  _check_superclass_logits(superclass_logits, hierarchy)
  probs = jax.nn.softmax(superclass_logits.astype(jnp.float32), axis=-1)
  superclass = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  out = decide_oracle(superclass, images, specialist_logits_fn, hierarchy, chunk_size=chunk_size)
  p_super = jnp.take_along_axis(probs, superclass[:, None], axis=-1)[:, 0]
  return {**out, 'superclass_probs': probs, 'prob': p_super * out['prob']}


def decide_top2(superclass_logits: jax.Array, images: jax.Array, specialist_logits_fn: SpecialistLogitsFn,
                hierarchy: HierarchyArrays, *, chunk_size: int, threshold: float | jax.Array
                ) -> dict[str, jax.Array]:
  """Top-2 Super-Sub decision: images with top superclass probability < ``threshold`` also run the second most
  likely specialist; the answer is the (superclass, subclass) with the larger p(super=k) * max_j p(sub=j | k)
  (the first on a tie).

  Returns ``decide_top1``'s keys for the chosen answer plus 'second' bool[B] (the image ran a second
  specialist), 'num_second' int32[] (their count: the extra cost), 'used_second' bool[B] (the second won).
  """
  top1 = decide_top1(superclass_logits, images, specialist_logits_fn, hierarchy, chunk_size=chunk_size)
  probs = top1['superclass_probs']
  n = probs.shape[1]
  if n < 2:  # no second superclass to try
    false = jnp.zeros(probs.shape[:1], bool)
    return {**top1, 'second': false, 'num_second': jnp.zeros((), jnp.int32), 'used_second': false}
  top_p, top_k = jax.lax.top_k(probs, 2)
  second_sc = top_k[:, 1].astype(jnp.int32)
  second = top_p[:, 0] < threshold
  # Images that do not need a second opinion skip the second pass (route -1) and cost nothing there.
  out2 = decide_oracle(jnp.where(second, second_sc, -1), images, specialist_logits_fn, hierarchy,
                       chunk_size=chunk_size)
  score2 = top_p[:, 1] * out2['prob']
  use2 = second & (score2 > top1['prob'])
  pick = lambda a, b: jnp.where(use2, b, a)
  return {'superclass_probs': probs, 'superclass': pick(top1['superclass'], second_sc),
          'local': pick(top1['local'], out2['local']), 'label': pick(top1['label'], out2['label']),
          'prob': pick(top1['prob'], score2), 'second': second,
          'num_second': jnp.sum(second).astype(jnp.int32), 'used_second': use2}


# ----------------------------------------------------------------------------------------------------------------------
# Jitted predictors over a SuperSub state


def make_specialist_logits_fn(state: SuperSub, specialist_model) -> SpecialistLogitsFn:
  """``(k, images [C, ...]) -> logits float32[C, S]`` of specialist k (eval-mode BatchNorm, padding not masked)."""
  base = state.base

  def fn(k, images):
    return specialist_model.apply(specialist_variables(state.bank, base, k), images, train=False)

  return fn


def _generalist_logits(state: SuperSub, images, generalist_model):
  return generalist_model.apply(state.generalist, images, train=False)


_MODELS = ('generalist_model', 'specialist_model', 'chunk_size')


@functools.partial(jax.jit, static_argnames=_MODELS)
def predict(state: SuperSub, images: jax.Array, *, generalist_model, specialist_model,
            chunk_size: int = 64) -> dict[str, jax.Array]:
  """Top-1 Super-Sub prediction for images float[B, H, W, C] (single device; see module docstring).

  ``generalist_model``/``specialist_model`` are the flax ResNets with N and S = max_subclasses outputs (static,
  hashable). Returns ``decide_top1``'s dict: 'superclass_probs' [B, N], 'superclass', 'local', 'label' int32[B],
  'prob' float32[B] = p(super) * p(sub | super).
  """
  return decide_top1(_generalist_logits(state, images, generalist_model), images,
                     make_specialist_logits_fn(state, specialist_model), state.hierarchy, chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=('specialist_model', 'chunk_size'))
def predict_oracle(state: SuperSub, images: jax.Array, superclass: jax.Array, *, specialist_model,
                   chunk_size: int = 64) -> dict[str, jax.Array]:
  """Specialist prediction routed by the true ``superclass`` int32[B]; ``decide_oracle``'s dict (no generalist)."""
  return decide_oracle(superclass, images, make_specialist_logits_fn(state, specialist_model), state.hierarchy,
                       chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=_MODELS)
def predict_top2(state: SuperSub, images: jax.Array, *, generalist_model, specialist_model, threshold,
                 chunk_size: int = 64) -> dict[str, jax.Array]:
  """Top-2 routing (``decide_top2``): a second specialist where the top superclass probability < ``threshold``
  (a traced float; 0 never asks, > 1 always asks). Returns 'num_second' for the cost report."""
  return decide_top2(_generalist_logits(state, images, generalist_model), images,
                     make_specialist_logits_fn(state, specialist_model), state.hierarchy, chunk_size=chunk_size,
                     threshold=threshold)
