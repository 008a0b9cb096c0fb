"""Two-stage Super-Sub inference, compiled: the generalist picks a superclass, that superclass's specialist the
subclass.

State. The predictors take a ``bank.SuperSub`` pytree (built once on the host by ``bank.build_supersub``): the
generalist, the ``SpecialistBank`` holding the N specialists in their compact exported encodings, and the
hierarchy's label maps. ``specialist_variables`` unpacks ONE specialist inside the compiled function (packed codes,
bitmask or index positions, its head's columns) into dense ``{'params', 'batch_stats'}``, bit for bit what
``exported.materialize_compressed`` gives on the host.

Routing. ``route`` sorts the images of a batch by specialist on device, then visits the non-empty groups in a
``lax.fori_loop`` with a dynamic trip count. Each visit materializes that group's specialist once and runs it over
the group in chunks: as many chunks of the largest of ``chunk_sizes`` as fit, then the rest in chunks of the next
sizes (the last size rounds up). So the peak memory is the bank + ONE dense specialist + one chunk's activations
whatever N, and the work is the batch plus fewer than N x (the smallest chunk size) padding images. The sizes
trade that padding against the efficiency of small chunks; docs/benchmarks.md has the measurement that chose the
default.

Shared trunk. Specialists change the generalist only from their cut on (``state.cut``, from their specs), so the
predictors run the generalist's trunk once per batch and route its activations, not the images: each specialist
runs only the layers from the cut, and ``specialist_variables`` materializes only those.

Predictions. ``predict`` (top-1 routing), ``predict_oracle`` (routing by the true superclass) and ``predict_top2``
(a second specialist for images the generalist is unsure about) are jitted with the flax models and the chunk
sizes as static arguments. They target a single device: plain ``jax.jit``, no sharding annotations; evaluation
batches are small enough for one accelerator, and the specialist loop is sequential anyway. The model-free cores
``decide_top1``/``decide_top2``/``decide_oracle`` take superclass logits and a ``Specialists`` pair, so routing can
be tested on hand-built outputs.

Padded classes (heads are padded to ``max_subclasses``) and skipped images get the logit ``NEG_LOGIT``, the value
``step.mask_logits`` uses in training.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from flax.core import meta

from supersub_jax import bank as bank_lib
from supersub_jax import decide as decide_lib
from supersub_jax import delta as delta_lib

PyTree = Any

# Same value as step.mask_logits: finite, so a softmax over an all-masked row stays defined (uniform).
NEG_LOGIT = float(np.finfo(np.float32).min / 2)


class Specialists(NamedTuple):
  """How routing reaches the specialists.

  Attributes:
    load: ``(k int32[]) -> v``: whatever specialist ``k`` needs (a pytree; e.g. its dense variables). Called once
      per group of images, with a traced ``k``.
    apply: ``(v, images [C, ...]) -> logits [C, S]``.
  """
  load: Callable[[jax.Array], PyTree]
  apply: Callable[[PyTree, jax.Array], jax.Array]


# ----------------------------------------------------------------------------------------------------------------------
# One specialist, dense and transient


def _codes_at(packed: jax.Array, bits: jax.Array, which: jax.Array) -> jax.Array:
  """Signed codes int32[...] number ``which`` of ``quant.pack_int`` bytes uint8[P] with ``bits`` (traced) bits."""
  bitpos = which * bits
  byte = jnp.take(packed, bitpos >> 3, mode='clip').astype(jnp.int32)
  raw = (byte >> (bitpos & 7)) & ((1 << bits) - 1)
  return raw - ((raw >> (bits - 1)) << bits)  # two's complement of `bits` bits


def _bitmask_ranks(bitmask: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
  """(kept bool[size], rank int32[size]) of an ``np.packbits`` mask: entry i is kept entry number rank[i].

  The rank is a prefix count. One over 32-bit words (popcounts), then within the word, so the scan runs over
  size / 32 elements: XLA's cumsum over all entries cost more than the rest of a specialist's materialization.
  """
  pad = (-bitmask.shape[0]) % 4
  b = jnp.pad(bitmask, (0, pad)).astype(jnp.uint32).reshape(-1, 4)
  words = (b[:, 0] << 24) | (b[:, 1] << 16) | (b[:, 2] << 8) | b[:, 3]  # entry 32 w + j is bit 31 - j
  counts = jax.lax.population_count(words).astype(jnp.int32)
  before = jnp.cumsum(counts) - counts
  # Per entry [W, 32] by broadcasting, not gathering: gathers of every entry dominated on CPU.
  j = jnp.arange(32, dtype=jnp.uint32)[None, :]
  word = words[:, None]
  kept = ((word >> (31 - j)) & 1).astype(bool)
  # Kept entries before entry j of its word: the bits above bit 31 - j (none for j = 0: a shift by 32 is undefined).
  above = jnp.where(j == 0, 0, jax.lax.population_count((word >> 1) >> (31 - j)).astype(jnp.int32))
  return kept.reshape(-1)[:size], (before[:, None] + above).reshape(-1)[:size]


def _leaf_delta(rec: Mapping[str, jax.Array], k: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Specialist k's dense effective delta float32[L] of one leaf, from its bank record.

  Codes times scale is an exact float32 product on the scale grid (quant docstring): the bits of
  quant.dequantize and of the numpy dequantization inside exported.materialize_compressed.
  """
  size = int(np.prod(shape))
  scale = rec.get('scale')
  channels = 1 if scale is None else scale.shape[1]
  if 'indices' in rec:  # scatter the K kept entries
    slots = jnp.arange(rec['indices'].shape[1], dtype=jnp.int32)
    idx = jnp.where(slots < rec['count'][k], rec['indices'][k].astype(jnp.int32), size)  # size: dropped
    if scale is None:
      vals = rec['values'][k]
    else:
      vals = (_codes_at(rec['codes'][k], rec['bits'][k], slots).astype(jnp.float32)
              * jnp.take(scale[k], idx % channels, mode='clip'))
    return jnp.zeros(size, jnp.float32).at[idx].set(vals, mode='drop')
  # Bitmask: every entry reads its value by rank (one gather over the leaf, no scatter).
  kept, rank = _bitmask_ranks(rec['bitmask'][k], size)
  if scale is None:
    dense = jnp.take(rec['values'][k], rank, mode='clip')
  else:  # flat entry i is in channel i % C: broadcast the scales over the leaf's rows
    dense = _codes_at(rec['codes'][k], rec['bits'][k], rank).astype(jnp.float32)
    dense = (dense.reshape(-1, channels) * scale[k][None, :]).reshape(-1)
  return jnp.where(kept, dense, 0.0).astype(jnp.float32)


def specialist_variables(bank: bank_lib.SpecialistBank, base: PyTree, k: jax.Array | int,
                         max_subclasses: int) -> dict:
  """Dense ``{'params', 'batch_stats'}`` of specialist ``k`` (int or traced int32 scalar) for the specialist model
  from its cut on (``base`` is ``SuperSub.base``; with a shared trunk apply it with ``start=cut.name``).

  ``params`` is ``base`` plus the dequantized sparse delta, with the head [D, S + d] under ``'head'``: S =
  max_subclasses columns (those >= n_k are zero), then with dustbins (d = 1) the dustbin column, its bias plus the
  bank's ``dustbin_correction``; without a dustbin it is bit-for-bit
  ``{**exported.materialize_compressed(base, exported[k]['delta']), 'head': zero-padded head}``. Jittable; under jit
  the dense params are a transient of the surrounding computation. An out-of-range traced ``k`` is clamped by
  jax's indexing.
  """
  k = jnp.asarray(k, jnp.int32)
  base_leaves = {delta_lib.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(base)[0]}
  unknown = sorted(set(bank.deltas) - set(base_leaves))
  if unknown:
    raise ValueError(f'bank deltas {unknown[:4]} are not params of base; pass the same backbone the bank was '
                     'built against (models.split_head(generalist params)[0]).')

  def leaf(path, b):
    rec = bank.deltas.get(delta_lib.path_str(path))
    if rec is None:
      return b
    b = jnp.asarray(b)
    # base + the dense delta (0.0 where nothing is kept), exactly materialize_compressed's sum, signed zeros
    # included.
    return (b.reshape(-1) + _leaf_delta(rec, k, b.shape)).astype(b.dtype).reshape(b.shape)

  params = jax.tree_util.tree_map_with_path(leaf, dict(base))
  params['head'] = _head(bank, k, max_subclasses)
  return {'params': params, 'batch_stats': jax.tree.map(lambda x: x[k], bank.batch_stats)}


def _head(bank: bank_lib.SpecialistBank, k: jax.Array, max_subclasses: int) -> dict:
  """Specialist k's head {'kernel' [D, S + d], 'bias' [S + d]}: its n_k real columns, zero padding to S, then with
  dustbins the dustbin column, whose bias inference corrects for the training mix (``dustbin_correction``)."""
  columns = bank.head['offset'][k] + jnp.arange(max_subclasses, dtype=jnp.int32)
  real = jnp.arange(max_subclasses) < bank.num_subclasses[k]
  kernel = jnp.where(real, jnp.take(bank.head['kernel'], columns, axis=1, mode='clip'), 0.0)
  bias = jnp.where(real, jnp.take(bank.head['bias'], columns, mode='clip'), 0.0)
  if bank.dustbin:
    column = bank.head['offset'][k] + bank.num_subclasses[k]
    kernel = jnp.concatenate([kernel, bank.head['kernel'][:, column, None]], axis=1)
    bias = jnp.concatenate([bias, bank.head['bias'][column, None] + bank.dustbin_correction[k, None]])
  return {'kernel': kernel, 'bias': bias}


class LazyLeaf(struct.PyTreeNode, meta.AxisMetadata):
  """One delta leaf of specialist ``k``, materialized only when its layer reads it.

  flax unboxes ``AxisMetadata`` when a module reads a param (``self.param``), so a params tree holding these runs
  through an unchanged flax model and each layer's dense kernel is computed right before its use and is dead right
  after: no whole dense specialist exists at any point of the forward (``lazy_specialist_variables``). ``unbox``
  is ``specialist_variables``'s leaf, bit for bit. Under ``jax.vmap`` over ``k`` each layer holds one dense kernel
  per mapped specialist, still one layer at a time.
  """
  base: jax.Array
  rec: Mapping[str, jax.Array]
  k: jax.Array
  shape: tuple[int, ...] = struct.field(pytree_node=False)

  def unbox(self) -> jax.Array:
    b = jnp.asarray(self.base)
    return (b.reshape(-1) + _leaf_delta(self.rec, self.k, self.shape)).astype(b.dtype).reshape(self.shape)

  def replace_boxed(self, val):  # flax asks this of boxes it re-wraps; a materialized leaf needs no box
    return val

  def add_axis(self, index, params):
    return self

  def remove_axis(self, index, params):
    return self


def lazy_specialist_variables(bank: bank_lib.SpecialistBank, base: PyTree, k: jax.Array | int,
                              max_subclasses: int) -> dict:
  """``specialist_variables`` with every delta leaf left as a ``LazyLeaf``: the same forward, the same bits, but
  each layer's dense kernel materialized inside the forward, when that layer runs. Heads and BatchNorm statistics
  (small) are materialized here."""
  k = jnp.asarray(k, jnp.int32)
  base_leaves = {delta_lib.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(base)[0]}
  unknown = sorted(set(bank.deltas) - base_leaves)
  if unknown:
    raise ValueError(f'bank deltas {unknown[:4]} are not params of base; pass the same backbone the bank was '
                     'built against (models.split_head(generalist params)[0]).')

  def leaf(path, b):
    rec = bank.deltas.get(delta_lib.path_str(path))
    return b if rec is None else LazyLeaf(b, rec, k, tuple(np.shape(b)))

  params = jax.tree_util.tree_map_with_path(leaf, dict(base))
  params['head'] = _head(bank, k, max_subclasses)
  return {'params': params, 'batch_stats': jax.tree.map(lambda x: x[k], bank.batch_stats)}


def largest_dense_leaf_bytes(bank: bank_lib.SpecialistBank, base: PyTree) -> int:
  """Bytes of the largest leaf a specialist materializes: what per-layer materialization holds at once (per
  specialist in flight), against a whole specialist for per-group materialization."""
  leaves = {delta_lib.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(base)[0]}
  return max([0] + [int(np.prod(np.shape(leaves[p]))) * np.dtype(leaves[p].dtype).itemsize for p in bank.deltas])


# ----------------------------------------------------------------------------------------------------------------------
# Routing core


def _chunk_plan(chunk_sizes: Sequence[int], batch: int) -> tuple[int, ...]:
  if isinstance(chunk_sizes, (int, np.integer)):
    chunk_sizes = (chunk_sizes,)
  sizes = tuple(chunk_sizes)
  if not sizes or any(not isinstance(c, (int, np.integer)) or isinstance(c, bool) or c < 1 for c in sizes):
    raise ValueError(f'chunk_sizes={chunk_sizes!r} must be positive Python ints (static shapes), e.g. (32, 8).')
  # Chunks larger than the batch only add padding.
  return tuple(sorted({min(int(c), max(batch, 1)) for c in sizes}, reverse=True))


def route(images: jax.Array, routes: jax.Array, specialists: Specialists, *, num_superclasses: int,
          chunk_sizes: Sequence[int] | int) -> jax.Array:
  """Runs each image through its routed specialist, grouping images by specialist on device.

  Args:
    images: [B, ...] any dtype.
    routes: int32[B], the specialist of each image in [0, num_superclasses), or -1 to skip the image. Values
      outside [-1, N) cannot be reported under jit and are treated as -1.
    specialists: ``Specialists(load, apply)``; ``load`` runs once per non-empty group, ``apply`` once per chunk
      (traced once per chunk size). Rows of a chunk past its group's end are zero padding or other groups'
      images; their outputs are discarded.
    num_superclasses: N (static).
    chunk_sizes: static chunk sizes (any order; capped at B): each group is run in chunks of the largest size,
      then of the next ones, the smallest rounding up.
  Returns:
    float32[B, S]: row i is ``apply(load(routes[i]), ...)``'s row for image i, or ``NEG_LOGIT`` for skipped images.
  """
  images = jnp.asarray(images)
  routes = jnp.asarray(routes)
  if routes.ndim != 1 or images.ndim < 1 or routes.shape[0] != images.shape[0]:
    raise ValueError(f'routes must be int [B] for images [B, ...]; got routes {routes.shape}, images {images.shape}.')
  if num_superclasses < 1:
    raise ValueError(f'num_superclasses={num_superclasses} must be >= 1.')
  b, n = images.shape[0], int(num_superclasses)
  sizes = _chunk_plan(chunk_sizes, b)
  v_spec = jax.eval_shape(specialists.load, jax.ShapeDtypeStruct((), jnp.int32))
  out_spec = jax.eval_shape(specialists.apply, v_spec, jax.ShapeDtypeStruct((sizes[0],) + images.shape[1:],
                                                                            images.dtype))
  if len(out_spec.shape) != 2 or out_spec.shape[0] != sizes[0]:
    raise ValueError(f'specialists.apply must return [chunk={sizes[0]}, S] logits, got {out_spec.shape}.')
  s = out_spec.shape[1]
  if b == 0:
    return jnp.zeros((0, s), jnp.float32)

  # Skipped images form an extra group N, sorted last and never visited.
  groups = jnp.where((routes >= 0) & (routes < n), routes, n).astype(jnp.int32)
  order = jnp.argsort(groups, stable=True)
  counts = jnp.bincount(groups, length=n + 1)[:n].astype(jnp.int32)
  starts = jnp.cumsum(counts) - counts
  visit = jnp.argsort(counts == 0, stable=True).astype(jnp.int32)  # non-empty groups first
  # Padding by the largest chunk keeps every dynamic_slice in bounds: a clamped start would shift rows.
  pad = sizes[0]
  padded = jnp.concatenate([jnp.take(images, order, axis=0), jnp.zeros((pad,) + images.shape[1:], images.dtype)])

  def run_chunks(c, v, end, last, carry):
    out, pos = carry
    rows = jnp.arange(c, dtype=jnp.int32)
    num = (end - pos + c - 1) // c if last else (end - pos) // c

    def body(_, carry):
      out, pos = carry
      logits = specialists.apply(v, jax.lax.dynamic_slice_in_dim(padded, pos, c, axis=0)).astype(jnp.float32)
      current = jax.lax.dynamic_slice_in_dim(out, pos, c, axis=0)
      new = jnp.where((rows < end - pos)[:, None], logits, current)
      return jax.lax.dynamic_update_slice_in_dim(out, new, pos, axis=0), pos + c

    return jax.lax.fori_loop(0, num, body, (out, pos))

  def group(t, out):
    g = visit[t]
    v = specialists.load(g)
    carry = (out, starts[g])
    for i, c in enumerate(sizes):
      carry = run_chunks(c, v, starts[g] + counts[g], i == len(sizes) - 1, carry)
    return carry[0]

  out = jax.lax.fori_loop(0, jnp.sum(counts > 0), group, jnp.full((b + pad, s), NEG_LOGIT, jnp.float32))
  return jnp.zeros((b, s), jnp.float32).at[order].set(out[:b], unique_indices=True)


def num_slots(batch: int, num_superclasses: int, slot_size: int) -> int:
  """Slots of ``slot_size`` images that hold any routing of ``batch`` images over ``num_superclasses`` groups: each
  non-empty group fills ceil(n_g / c) slots, and sum_g ceil(n_g / c) <= (B + min(N, B) (c - 1)) / c."""
  return max(1, (batch + min(num_superclasses, batch) * (slot_size - 1)) // slot_size)


def route_padded(images: jax.Array, routes: jax.Array, specialists: Specialists, *, num_superclasses: int,
                 slot_size: int) -> jax.Array:
  """``route``'s result in ONE call of fixed shape: the batch, grouped by specialist, fills ``num_slots`` slots of
  ``slot_size`` images (a group takes ceil(n_g / c) slots, the rest is zero padding), and ``apply(load(k_s), slot
  s)`` runs for all slots at once under ``jax.vmap``. No loop and no dynamic trip count: on an accelerator one
  launch per layer instead of a chain of small calls, for at most ``min(N, B) * (c - 1)`` padding images. Use a
  ``load`` that materializes per layer (``lazy_specialist_variables``): under vmap it runs once per slot.

  Args and result as ``route`` (images [B, ...], routes int32[B] with -1 skipped; float32[B, S]).
  """
  images = jnp.asarray(images)
  routes = jnp.asarray(routes)
  if routes.ndim != 1 or images.ndim < 1 or routes.shape[0] != images.shape[0]:
    raise ValueError(f'routes must be int [B] for images [B, ...]; got routes {routes.shape}, images {images.shape}.')
  if not isinstance(slot_size, (int, np.integer)) or isinstance(slot_size, bool) or slot_size < 1:
    raise ValueError(f'slot_size={slot_size!r} must be a positive Python int (a static shape), e.g. 32.')
  b, n = images.shape[0], int(num_superclasses)
  c = min(int(slot_size), max(b, 1))
  k_slots = num_slots(b, n, c)
  v_spec = jax.eval_shape(specialists.load, jax.ShapeDtypeStruct((), jnp.int32))
  s = jax.eval_shape(specialists.apply, v_spec, jax.ShapeDtypeStruct((c,) + images.shape[1:], images.dtype)).shape[1]
  if b == 0:
    return jnp.zeros((0, s), jnp.float32)
  groups = jnp.where((routes >= 0) & (routes < n), routes, n).astype(jnp.int32)
  order = jnp.argsort(groups, stable=True)
  sorted_groups = groups[order]
  counts = jnp.bincount(groups, length=n + 1)[:n].astype(jnp.int32)
  starts = jnp.cumsum(counts) - counts
  slots_per_group = (counts + c - 1) // c
  first_slot = jnp.cumsum(slots_per_group) - slots_per_group
  # Sorted image j of group g (rank r = j - starts[g]) goes to slot first_slot[g] + r // c, row r % c; skipped images
  # (group N) go nowhere (slot index k_slots: dropped).
  real = sorted_groups < n
  g = jnp.minimum(sorted_groups, n - 1)
  rank = jnp.arange(b, dtype=jnp.int32) - starts[g]
  slot = jnp.where(real, first_slot[g] + rank // c, k_slots)
  row = rank % c
  slot_images = jnp.zeros((k_slots, c) + images.shape[1:], images.dtype).at[slot, row].set(
      jnp.take(images, order, axis=0), mode='drop')
  # Each slot's specialist: the group whose slots cover it (unused slots run specialist 0 on zeros, discarded).
  slot_ids = jnp.arange(k_slots, dtype=jnp.int32)
  slot_group = jnp.clip(jnp.searchsorted(first_slot + slots_per_group, slot_ids, side='right'), 0, n - 1)
  logits = jax.vmap(lambda k, x: specialists.apply(specialists.load(k), x).astype(jnp.float32))(
      slot_group.astype(jnp.int32), slot_images)
  picked = logits[jnp.minimum(slot, k_slots - 1), row]
  out_sorted = jnp.where(real[:, None], picked, NEG_LOGIT)
  return jnp.zeros((b, s), jnp.float32).at[order].set(out_sorted, unique_indices=True)


ROUTINGS = ('loop', 'padded')


def _route_any(images, routes, specialists, n, chunk_sizes, routing, slot_size):
  if routing == 'loop':
    return route(images, routes, specialists, num_superclasses=n, chunk_sizes=chunk_sizes)
  if routing == 'padded':
    return route_padded(images, routes, specialists, num_superclasses=n, slot_size=slot_size)
  raise ValueError(f'routing={routing!r}: use one of {ROUTINGS}.')


# ----------------------------------------------------------------------------------------------------------------------
# Model-free decision rules


def _local_logits(images, routes, specialists, hierarchy: bank_lib.HierarchyArrays, chunk_sizes, routing='loop',
                  slot_size=32):
  n = hierarchy.local_valid.shape[0]
  return mask_local_logits(_route_any(images, routes, specialists, n, chunk_sizes, routing, slot_size), routes,
                           hierarchy)


def mask_local_logits(logits: jax.Array, routes: jax.Array, hierarchy: bank_lib.HierarchyArrays) -> jax.Array:
  """Specialist logits float32[B, S + d] with the padded classes of each image's specialist set to ``NEG_LOGIT``
  (a dustbin column, d = 1, is always valid)."""
  n = hierarchy.local_valid.shape[0]
  valid = hierarchy.local_valid[jnp.clip(routes, 0, n - 1)]
  valid = jnp.concatenate([valid, jnp.ones((valid.shape[0], logits.shape[1] - valid.shape[1]), bool)], axis=1)
  return jnp.where(valid, logits, NEG_LOGIT)


def local_distributions(images, routes: jax.Array, specialists: Specialists, hierarchy: bank_lib.HierarchyArrays, *,
                        chunk_sizes: Sequence[int], routing: str = 'loop', slot_size: int = 32) -> jax.Array:
  """The routed specialists' local distributions float32[B, S + d] (``decide``'s layout: real subclasses, zero on
  padding, then the dustbin's mass)."""
  return jax.nn.softmax(_local_logits(images, routes, specialists, hierarchy, chunk_sizes, routing, slot_size),
                        axis=-1)


def oracle_from_local(superclass: jax.Array, local_logits: jax.Array,
                      hierarchy: bank_lib.HierarchyArrays) -> dict[str, jax.Array]:
  """``decide_oracle``'s answer from the masked specialist logits (``mask_local_logits``) of each image's route:
  the one place the subclass is read off, whichever way the logits were computed. A dustbin's mass lowers the
  answer's probability; the answer itself is a real subclass."""
  local_probs = jax.nn.softmax(local_logits)[:, :hierarchy.max_subclasses]
  local = jnp.argmax(local_probs, axis=-1).astype(jnp.int32)
  label = jnp.where(superclass >= 0, hierarchy.local_to_label[jnp.maximum(superclass, 0), local], -1)
  return {'superclass': superclass, 'local': local, 'label': label, 'prob': jnp.max(local_probs, axis=-1)}


def top1_from_local(superclass_logits: jax.Array, local_logits: jax.Array,
                    hierarchy: bank_lib.HierarchyArrays) -> dict[str, jax.Array]:
  """``decide_top1``'s answer from the generalist's logits and the masked logits of the routed specialists."""
  probs = jax.nn.softmax(superclass_logits.astype(jnp.float32), axis=-1)
  superclass = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  out = oracle_from_local(superclass, local_logits, hierarchy)
  p_super = jnp.take_along_axis(probs, superclass[:, None], axis=-1)[:, 0]
  return {**out, 'superclass_probs': probs, 'prob': p_super * out['prob']}


def _check_superclass_logits(superclass_logits, hierarchy: bank_lib.HierarchyArrays):
  n = hierarchy.local_valid.shape[0]
  if superclass_logits.ndim != 2 or superclass_logits.shape[1] != n:
    raise ValueError(f'superclass logits must be [B, N={n}], got {superclass_logits.shape}; the generalist '
                     'must have one output per superclass.')


def decide_oracle(superclass: jax.Array, images: jax.Array, specialists: Specialists,
                  hierarchy: bank_lib.HierarchyArrays, *, chunk_sizes: Sequence[int], routing: str = 'loop',
                  slot_size: int = 32) -> dict[str, jax.Array]:
  """Routes image i to specialist ``superclass[i]`` (int32[B], the true superclass), by ``routing`` ('loop':
  ``route`` with ``chunk_sizes``; 'padded': ``route_padded`` with ``slot_size``).

  Returns dict: 'superclass' int32[B] (the input), 'local' int32[B], 'label' int32[B] (global subclass label;
  -1 where superclass is -1, a skipped image), 'prob' float32[B] = p(sub = local | superclass) (no generalist).
  """
  superclass = jnp.asarray(superclass, jnp.int32)
  return oracle_from_local(superclass, _local_logits(images, superclass, specialists, hierarchy, chunk_sizes,
                                                     routing, slot_size), hierarchy)


def decide_top1(superclass_logits: jax.Array, images: jax.Array, specialists: Specialists,
                hierarchy: bank_lib.HierarchyArrays, *, chunk_sizes: Sequence[int], routing: str = 'loop',
                slot_size: int = 32) -> dict[str, jax.Array]:
  """Top-1 Super-Sub decision from the generalist's logits float[B, N] (``routing`` as ``decide_oracle``).

  Returns dict: 'superclass_probs' float32[B, N], 'superclass' int32[B] (argmax), 'local' int32[B], 'label'
  int32[B], 'prob' float32[B] = p(super) * p(sub | super).
  """
  _check_superclass_logits(superclass_logits, hierarchy)
  superclass = jnp.argmax(jax.nn.softmax(superclass_logits.astype(jnp.float32), axis=-1), axis=-1).astype(jnp.int32)
  return top1_from_local(superclass_logits, _local_logits(images, superclass, specialists, hierarchy, chunk_sizes,
                                                          routing, slot_size), hierarchy)


def decide_top2(superclass_logits: jax.Array, images: jax.Array, specialists: Specialists,
                hierarchy: bank_lib.HierarchyArrays, *, chunk_sizes: Sequence[int], threshold: float | jax.Array,
                routing: str = 'loop', slot_size: int = 32) -> dict[str, jax.Array]:
  """Top-2 Super-Sub decision: images with top superclass probability < ``threshold`` also run the second most
  likely specialist; the answer is the (superclass, subclass) with the larger p(super=k) * max_j p(sub=j | k)
  (the first on a tie).

  Returns ``decide_top1``'s keys for the chosen answer plus 'second' bool[B] (the image ran a second
  specialist), 'num_second' int32[] (their count: the extra cost), 'used_second' bool[B] (the second won).
  """
  paths = dict(chunk_sizes=chunk_sizes, routing=routing, slot_size=slot_size)
  top1 = decide_top1(superclass_logits, images, specialists, hierarchy, **paths)
  probs = top1['superclass_probs']
  n = probs.shape[1]
  if n < 2:  # no second superclass to try
    false = jnp.zeros(probs.shape[:1], bool)
    return {**top1, 'second': false, 'num_second': jnp.zeros((), jnp.int32), 'used_second': false}
  top_p, top_k = jax.lax.top_k(probs, 2)
  second_sc = top_k[:, 1].astype(jnp.int32)
  second = top_p[:, 0] < threshold
  # Images that do not need a second opinion skip the second pass (route -1) and cost nothing there.
  out2 = decide_oracle(jnp.where(second, second_sc, -1), images, specialists, hierarchy, **paths)
  score2 = top_p[:, 1] * out2['prob']
  use2 = second & (score2 > top1['prob'])
  pick = lambda a, b: jnp.where(use2, b, a)
  return {'superclass_probs': probs, 'superclass': pick(top1['superclass'], second_sc),
          'local': pick(top1['local'], out2['local']), 'label': pick(top1['label'], out2['label']),
          'prob': pick(top1['prob'], score2), 'second': second,
          'num_second': jnp.sum(second).astype(jnp.int32), 'used_second': use2}


# ----------------------------------------------------------------------------------------------------------------------
# Jitted predictors over a SuperSub state


MATERIALIZE = ('group', 'layer')


def make_specialists(state: bank_lib.SuperSub, specialist_model, materialize: str = 'group') -> Specialists:
  """``Specialists`` of the bank, eval-mode forward from the cut over trunk activations (``trunk``; padded classes
  not masked). ``materialize``: 'group' unpacks a whole dense specialist once per group of images
  (``specialist_variables``; resident for the group's chunks); 'layer' unpacks each layer inside every forward,
  right before the layer runs (``lazy_specialist_variables``; one layer's dense kernel at a time)."""
  base, s = state.base, state.hierarchy.max_subclasses
  if materialize not in MATERIALIZE:
    raise ValueError(f'materialize={materialize!r}: use one of {MATERIALIZE}.')
  unpack = specialist_variables if materialize == 'group' else lazy_specialist_variables
  return Specialists(load=lambda k: unpack(state.bank, base, k, s),
                     apply=lambda v, x: specialist_model.apply(v, x, train=False, start=state.cut.name))


def trunk(state: bank_lib.SuperSub, images: jax.Array, model) -> jax.Array:
  """The shared trunk's output for images [B, H, W, C]: the generalist's layers before ``state.cut`` (eval
  mode), run by ``model``, any ResNet of the generalist's architecture. The images themselves for 'stem'."""
  return model.apply(state.generalist, images, train=False, stop=state.cut.name)


def _trunk_and_superclass_logits(state: bank_lib.SuperSub, images, generalist_model):
  shared = trunk(state, images, generalist_model)
  return shared, generalist_model.apply(state.generalist, shared, train=False, start=state.cut.name)


DEFAULT_CHUNK_SIZES = (32, 8)
_STATIC = ('generalist_model', 'specialist_model', 'chunk_sizes', 'routing', 'slot_size', 'materialize')


def path_settings(config_evaluate, platform: str | None = None) -> dict:
  """``predict``'s routing keywords from ``config.evaluate`` (routing, slot_size, materialize, chunk_sizes),
  with routing and materialize 'auto' resolved for ``platform`` (default: jax's) by ``ROUTING_BY_PLATFORM`` and
  ``MATERIALIZE_BY_PLATFORM``."""
  platform = platform or jax.default_backend()
  routing = str(config_evaluate.routing)
  if routing == 'auto':
    routing = ROUTING_BY_PLATFORM.get(platform, 'loop')
  materialize = str(config_evaluate.materialize)
  if materialize == 'auto':
    materialize = MATERIALIZE_BY_PLATFORM.get(platform, 'group')
  return {'routing': routing, 'slot_size': int(config_evaluate.slot_size),
          'materialize': materialize,
          'chunk_sizes': tuple(int(c) for c in config_evaluate.chunk_sizes)}


# routing='auto' by platform. cpu: 'loop': the padded call runs its padding images for real, which a CPU pays in full
# (0.13x against the loop's 0.27x of the single network in a toy CPU run; docs/benchmarks.md, "Three paths"). gpu:
# 'padded', NOT yet measured -- benchmarks/gpu.sh's routed_inference item times both; set this entry by what it prints.
ROUTING_BY_PLATFORM = {'cpu': 'loop', 'gpu': 'padded', 'tpu': 'padded'}
# materialize='auto' by platform. gpu/tpu: 'layer': an accelerator's memory is what runs out, and layer by layer keeps
# parameters resident near one network (ResNet-50 at delta.FRONTIER: 1.50x one network against 2.39x for whole
# specialists; docs/benchmarks.md, "Parameters resident on ResNet-50"); the padded routing wants it too. cpu:
# 'group': host memory is rarely the limit, and a whole dense specialist per group is unpacked once, not per layer
# call. The speed of 'layer' on a GPU is NOT yet measured (benchmarks/gpu.sh's routed_inference item).
MATERIALIZE_BY_PLATFORM = {'cpu': 'group', 'gpu': 'layer', 'tpu': 'layer'}


@functools.partial(jax.jit, static_argnames=_STATIC)
def predict(state: bank_lib.SuperSub, images: jax.Array, *, generalist_model, specialist_model,
            chunk_sizes: tuple[int, ...] = DEFAULT_CHUNK_SIZES, routing: str = 'loop', slot_size: int = 32,
            materialize: str = 'group') -> dict[str, jax.Array]:
  """Top-1 Super-Sub prediction for images float[B, H, W, C] (single device; see module docstring).

  ``generalist_model``/``specialist_model`` are the flax ResNets with N and S = max_subclasses outputs (static,
  hashable). How the specialists run (all static): ``routing`` 'loop' (``route``, with ``chunk_sizes``) or 'padded'
  (``route_padded``, one call of ``slot_size`` slots); ``materialize`` 'group' or 'layer' (``make_specialists``;
  'padded' wants 'layer'). Every combination gives the same predictions. Returns ``decide_top1``'s dict:
  'superclass_probs' [B, N], 'superclass', 'local', 'label' int32[B], 'prob' float32[B] = p(super) * p(sub | super).
  """
  shared, superclass_logits = _trunk_and_superclass_logits(state, images, generalist_model)
  return decide_top1(superclass_logits, shared, make_specialists(state, specialist_model, materialize),
                     state.hierarchy, chunk_sizes=chunk_sizes, routing=routing, slot_size=slot_size)


@functools.partial(jax.jit, static_argnames=_STATIC[1:])
def predict_oracle(state: bank_lib.SuperSub, images: jax.Array, superclass: jax.Array, *, specialist_model,
                   chunk_sizes: tuple[int, ...] = DEFAULT_CHUNK_SIZES, routing: str = 'loop', slot_size: int = 32,
                   materialize: str = 'group') -> dict[str, jax.Array]:
  """Specialist prediction routed by the true ``superclass`` int32[B]; ``decide_oracle``'s dict (no generalist).
  Paths as ``predict``."""
  return decide_oracle(superclass, trunk(state, images, specialist_model),
                       make_specialists(state, specialist_model, materialize), state.hierarchy,
                       chunk_sizes=chunk_sizes, routing=routing, slot_size=slot_size)


@functools.partial(jax.jit, static_argnames=_STATIC)
def predict_top2(state: bank_lib.SuperSub, images: jax.Array, *, generalist_model, specialist_model, threshold,
                 chunk_sizes: tuple[int, ...] = DEFAULT_CHUNK_SIZES, routing: str = 'loop', slot_size: int = 32,
                 materialize: str = 'group') -> dict[str, jax.Array]:
  """Top-2 routing (``decide_top2``): a second specialist where the top superclass probability < ``threshold``
  (a traced float; 0 never asks, > 1 always asks). Returns 'num_second' for the cost report. Paths as
  ``predict``."""
  shared, superclass_logits = _trunk_and_superclass_logits(state, images, generalist_model)
  return decide_top2(superclass_logits, shared, make_specialists(state, specialist_model, materialize),
                     state.hierarchy, chunk_sizes=chunk_sizes, threshold=threshold, routing=routing,
                     slot_size=slot_size)


@functools.partial(jax.jit, static_argnames=_STATIC + ('rule', 'flat_model'))
def predict_rule(state: bank_lib.SuperSub, images: jax.Array, flat: PyTree | None = None, *, rule: decide_lib.Rule,
                 generalist_model, specialist_model, flat_model=None,
                 chunk_sizes: tuple[int, ...] = DEFAULT_CHUNK_SIZES, routing: str = 'loop', slot_size: int = 32,
                 materialize: str = 'group') -> dict[str, jax.Array]:
  """Super-Sub's answer under a decision ``rule`` (``decide.Rule``, static) for images float[B, H, W, C].

  The router (``rule.router``) gives p(s | x): the generalist's, a flat network's (``flat``: its
  ``{'params', 'batch_stats'}``, run by ``flat_model``; needed for the 'flat' and 'mean' routers) or their mean.
  Its top ``rule.k`` superclasses are each run as one more routing pass (paths as ``predict``), and
  ``decide.decide`` combines their local distributions. Returns 'label' int32[B], 'routes' int32[B, k] and 'router'
  float32[B, N]. ``Rule('hard')`` gives ``predict``'s labels.
  """
  shared, superclass_logits = _trunk_and_superclass_logits(state, images, generalist_model)
  _check_superclass_logits(superclass_logits, state.hierarchy)
  flat_logits = None
  if rule.router != 'generalist':
    if flat is None or flat_model is None:
      raise ValueError(f'rule {rule.key!r} routes by a flat network: pass flat= its variables and flat_model=.')
    flat_logits = flat_model.apply(flat, images, train=False)
  n = state.hierarchy.local_valid.shape[0]
  router = decide_lib.router_probs(rule.router, superclass_logits, flat_logits, state.hierarchy.label_to_superclass, n)
  routes = decide_lib.top_routes(router, min(rule.k, n))
  specialists = make_specialists(state, specialist_model, materialize)
  local = jnp.stack([local_distributions(shared, routes[:, j], specialists, state.hierarchy, chunk_sizes=chunk_sizes,
                                         routing=routing, slot_size=slot_size)
                     for j in range(routes.shape[1])], axis=1)
  label = decide_lib.decide(rule, router, routes, local, state.hierarchy.local_to_label,
                            state.hierarchy.label_to_superclass)
  return {'label': label, 'routes': routes, 'router': router}
