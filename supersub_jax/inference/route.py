"""Routing images to specialists, compiled: each image through its routed specialist, grouped on device.

``route`` sorts the images of a batch by specialist on device, then visits the non-empty groups in a
``lax.fori_loop`` with a dynamic trip count. Each visit materializes that group's specialist once and runs it over
the group in chunks: as many chunks of the largest of ``chunk_sizes`` as fit, then the rest in chunks of the next
sizes (the last size rounds up). So the peak memory is the bank + ONE dense specialist + one chunk's activations
whatever N, and the work is the batch plus fewer than N x (the smallest chunk size) padding images. The sizes
trade that padding against the efficiency of small chunks; docs/benchmarks.md has the measurement that chose the
default. ``route_padded`` gives the same result in one call of fixed shape (slots of images under ``jax.vmap``).

``local_distributions`` is what the decision rules read: the routed specialists' softmax over their real
subclasses (padded classes masked by ``mask_local_logits``) and a dustbin. Padded classes and skipped images
(route -1) get the logit ``decide.NEG_LOGIT``, the value ``step.mask_logits`` uses in training.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from supersub_jax.choices import ROUTINGS
from supersub_jax import bank as bank_lib
from supersub_jax.decide import NEG_LOGIT
from supersub_jax.inference.unpack import Specialists

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



# routing='auto' by platform. cpu: 'loop': the padded call runs its padding images for real, which a CPU pays in full
# (0.13x against the loop's 0.27x of the single network in a toy CPU run; docs/benchmarks.md, "Three paths"). gpu:
# 'padded', NOT yet measured -- benchmarks/gpu.sh's routed_inference item times both; set this entry by what it prints.
ROUTING_BY_PLATFORM = {'cpu': 'loop', 'gpu': 'padded', 'tpu': 'padded'}


def mask_local_logits(logits: jax.Array, routes: jax.Array, hierarchy: bank_lib.HierarchyArrays) -> jax.Array:
  """Specialist logits float32[B, S + d] with the padded classes of each image's specialist (routes int32[B]) set
  to ``NEG_LOGIT`` (a dustbin column, d = 1, is always valid)."""
  n = hierarchy.local_valid.shape[0]
  valid = hierarchy.local_valid[jnp.clip(routes, 0, n - 1)]
  valid = jnp.concatenate([valid, jnp.ones((valid.shape[0], logits.shape[1] - valid.shape[1]), bool)], axis=1)
  return jnp.where(valid, logits, NEG_LOGIT)


def local_logits(images: jax.Array, routes: jax.Array, specialists: Specialists, hierarchy: bank_lib.HierarchyArrays,
                 *, chunk_sizes: Sequence[int], routing: str = 'loop', slot_size: int = 32) -> jax.Array:
  """The routed specialists' logits float32[B, S + d], padded classes masked (``mask_local_logits``).

  images [B, ...] (trunk outputs), routes int32[B] (-1: skipped, its row all ``NEG_LOGIT``), by ``routing``
  ('loop': ``route`` with ``chunk_sizes``; 'padded': ``route_padded`` with ``slot_size``)."""
  n = hierarchy.local_valid.shape[0]
  if routing == 'loop':
    logits = route(images, routes, specialists, num_superclasses=n, chunk_sizes=chunk_sizes)
  elif routing == 'padded':
    logits = route_padded(images, routes, specialists, num_superclasses=n, slot_size=slot_size)
  else:
    raise ValueError(f'routing={routing!r}: use one of {ROUTINGS}.')
  return mask_local_logits(logits, routes, hierarchy)


def local_distributions(images: jax.Array, routes: jax.Array, specialists: Specialists,
                        hierarchy: bank_lib.HierarchyArrays, *, chunk_sizes: Sequence[int], routing: str = 'loop',
                        slot_size: int = 32) -> jax.Array:
  """The routed specialists' local distributions float32[B, S + d] (``decide``'s layout: real subclasses, zero on
  padding, then the dustbin's mass); arguments as ``local_logits``. A skipped image's row is uniform: ignore it."""
  return jax.nn.softmax(local_logits(images, routes, specialists, hierarchy, chunk_sizes=chunk_sizes,
                                     routing=routing, slot_size=slot_size), axis=-1)
