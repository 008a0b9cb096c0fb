"""One specialist unpacked from the bank, inside the compiled function: dense, transient, whole or layer by layer.

``specialist_variables`` unpacks ONE specialist of a ``bank.SpecialistBank`` (packed codes, bitmask or index
positions, its head's columns) into dense ``{'params', 'batch_stats'}``, bit for bit what
``exported.materialize_compressed`` gives on the host; ``lazy_specialist_variables`` leaves every delta leaf as a
``LazyLeaf`` that flax materializes when its layer reads it. ``make_specialists`` wraps either as the
``Specialists`` pair that routing (``inference.route``) calls.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from flax.core import meta

from supersub_jax.choices import MATERIALIZE
from supersub_jax import bank as bank_lib
from supersub_jax import delta as delta_lib

PyTree = Any


class Specialists(NamedTuple):
  """How routing reaches the specialists.

  Attributes:
    load: ``(k int32[]) -> v``: whatever specialist ``k`` needs (a pytree; e.g. its dense variables). Called once
      per group of images, with a traced ``k``.
    apply: ``(v, images [C, ...]) -> logits [C, S]``.
  """
  load: Callable[[jax.Array], PyTree]
  apply: Callable[[PyTree, jax.Array], jax.Array]


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
                     'built against (cut.split_head(generalist params)[0]).')

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
                     'built against (cut.split_head(generalist params)[0]).')

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


# materialize='auto' by platform. gpu/tpu: 'layer': an accelerator's memory is what runs out, and layer by layer keeps
# parameters resident near one network (ResNet-50 at delta.FRONTIER: 1.50x one network against 2.39x for whole
# specialists; docs/benchmarks.md, "Parameters resident on ResNet-50"); the padded routing wants it too. cpu:
# 'group': host memory is rarely the limit, and a whole dense specialist per group is unpacked once, not per layer
# call. The speed of 'layer' on a GPU is NOT yet measured (benchmarks/gpu.sh's routed_inference item).
MATERIALIZE_BY_PLATFORM = {'cpu': 'group', 'gpu': 'layer', 'tpu': 'layer'}


def make_specialists(state: bank_lib.SuperSub, specialist_model, materialize: str = 'group') -> Specialists:
  """``Specialists`` of the bank, eval-mode forward from the cut over trunk activations (``inference.trunk``;
  padded classes not masked): ``load(k)`` its variables, ``apply(v, x [C, ...])`` its logits float32[C, S + d].
  ``materialize``: 'group' unpacks a whole dense specialist once per group of images (``specialist_variables``;
  resident for the group's chunks); 'layer' unpacks each layer inside every forward, right before the layer runs
  (``lazy_specialist_variables``; one layer's dense kernel at a time)."""
  base, s = state.base, state.hierarchy.max_subclasses
  if materialize not in MATERIALIZE:
    raise ValueError(f'materialize={materialize!r}: use one of {MATERIALIZE}.')
  unpack = specialist_variables if materialize == 'group' else lazy_specialist_variables
  return Specialists(load=lambda k: unpack(state.bank, base, k, s),
                     apply=lambda v, x: specialist_model.apply(v, x, train=False, start=state.cut.name))

