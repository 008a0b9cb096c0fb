"""Magnitude masks and density schedules for sparse deltas.

Masks are **bool** pytrees with the structure of the tree they mask: ``True`` =
kept, ``False`` = pruned, and ``None`` wherever the masked tree has ``None`` (e.g.
delta leaves that are not trained; ``None`` is an empty pytree node, not a leaf, so
``jax.tree`` functions skip it). Bool masks are exact, 4x smaller than float32 and
map directly to the packed bitmask of the export. Multiply by a mask
(``delta * mask`` promotes bool to the delta dtype) or use ``apply_masks``.

Every function here is jittable, including with a traced ``density``: the number of
kept entries ``k`` can be a traced value, because selection counts instead of sorting.
The intended training-loop use is::

    density = schedule(step)                      # jnp scalar, inside jit
    masks = update_masks(delta, masks, density)   # on mask-update steps only
    grads = grad(loss)(apply_masks(delta, masks)) # masked grads are 0
    delta = apply_masks(optax.apply_updates(delta, updates), masks)  # exact zeros
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from supersub_jax.choices import SCOPES, SCHEDULE_KINDS

PyTree = Any


def _is_none(x) -> bool:
  return x is None


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_density(density) -> None:
  if _is_concrete(density):
    d = float(np.asarray(density))
    if not 0.0 <= d <= 1.0:
      raise ValueError(f'density={d} must lie in [0, 1] (fraction of entries kept).')


def _check_scope(scope: str) -> None:
  if scope not in SCOPES:
    raise ValueError(f'scope={scope!r} is unknown; use one of {SCOPES}.')


def num_kept(density, size: int):
  """Number of kept entries, ``round(density * size)`` clamped to ``[0, size]``, half to even.

  Returns a Python int for a concrete density (computed in float64), or an int32 jnp
  scalar for a traced one (computed in float32, which can differ by one from the
  float64 value only when ``density * size`` lies within float32 rounding of a .5).
  """
  _check_density(density)
  if _is_concrete(density):
    return int(np.clip(np.round(float(np.asarray(density)) * size), 0, size))
  k = jnp.round(jnp.asarray(density, jnp.float32) * jnp.float32(size))
  return jnp.clip(k, 0, size).astype(jnp.int32)


@jax.jit  # k is a traced argument: one compile per shape, whatever the density
def _keep_top(keys: jax.Array, k) -> jax.Array:
  """Bool mask over flat uint32 ``keys`` keeping the ``k`` largest; ties go to the lower index.

  ``k`` may be traced. Exact selection without a sort (a stable argsort made the
  mask-update step cost about three plain steps on a CPU): the k-th largest key
  ``t``, the largest with ``count(keys >= t) >= k``, is found by bisection over the
  key range (32 counting passes, each O(size)), then the ties at ``t`` are kept in
  index order by a cumulative count.
  """
  def halve(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    enough = jnp.sum(keys >= mid, dtype=jnp.int32) >= k
    return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

  # Keys lie in [0, 2**31]: 32 halvings of [0, 2**31 + 1) leave one value.
  t, _ = jax.lax.fori_loop(0, 32, halve, (jnp.uint32(0), jnp.uint32(2**31 + 1)))
  above = keys > t
  tied = keys == t
  return above | (tied & (jnp.cumsum(tied, dtype=jnp.int32) <= k - jnp.sum(above, dtype=jnp.int32)))


def _keys(x: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Flat uint32 ranking keys in the order of |x|, and 0 (below any magnitude) where already pruned or NaN.

  A float32 >= 0 orders as its bit pattern, so a key is the bits of |x| plus one.
  """
  magnitude = jnp.abs(jnp.asarray(x).astype(jnp.float32)).reshape(-1)
  ranked = ~jnp.isnan(magnitude)
  if mask is not None:
    ranked &= jnp.asarray(mask, bool).reshape(-1)
  return jnp.where(ranked, jax.lax.bitcast_convert_type(magnitude, jnp.uint32) + 1, jnp.uint32(0))


def topk_mask(x: jax.Array, density) -> jax.Array:
  """Bool mask of ``x.shape`` keeping exactly ``num_kept(density, x.size)`` largest ``|x|``.

  Ties are broken by flat (C-order) index, lower index kept first, so the result is
  deterministic. ``density`` may be a traced scalar under jit.
  """
  x = jnp.asarray(x)
  return _keep_top(_keys(x, None), num_kept(density, x.size)).reshape(x.shape)


def _leaves_and_rebuild(tree: PyTree) -> tuple[list, Callable[[list], PyTree]]:
  leaves, treedef = jax.tree.flatten(tree)
  return leaves, lambda new: jax.tree.unflatten(treedef, new)


def _global_masks(tree: PyTree, density, old_masks: PyTree | None) -> PyTree:
  leaves, rebuild = _leaves_and_rebuild(tree)
  if not leaves:
    return tree
  old = [None] * len(leaves) if old_masks is None else jax.tree.leaves(old_masks)
  if len(old) != len(leaves):
    raise ValueError(f'masks have {len(old)} leaves but the tree has {len(leaves)}; build masks from the '
                     'same tree (None where the tree is None).')
  keys = jnp.concatenate([_keys(x, m) for x, m in zip(leaves, old)])
  flat = _keep_top(keys, num_kept(density, keys.size))
  sizes = [int(np.size(x)) for x in leaves]
  pieces = jnp.split(flat, np.cumsum(sizes)[:-1])
  return rebuild([p.reshape(np.shape(x)) for p, x in zip(pieces, leaves)])


def global_topk_masks(tree: PyTree, density) -> PyTree:
  """Masks with one magnitude threshold over all leaves of ``tree`` together.

  Exactly ``num_kept(density, total)`` entries are kept in total, where ``total`` is
  the number of entries of all (non-None) leaves; ties broken by leaf order, then
  index. ``None`` in ``tree`` stays ``None``.
  """
  return _global_masks(tree, density, None)


def masks_for(tree: PyTree, density, scope: str = 'per_leaf') -> PyTree:
  """Magnitude masks for ``tree``: ``topk_mask`` per leaf, or ``global_topk_masks``."""
  _check_scope(scope)
  if scope == 'global':
    return global_topk_masks(tree, density)
  return jax.tree.map(lambda x: topk_mask(x, density), tree)


def dense_masks(tree: PyTree) -> PyTree:
  """All-True masks for ``tree`` (the state before any pruning)."""
  return jax.tree.map(lambda x: jnp.ones(np.shape(x), bool), tree)


def update_masks(delta: PyTree, masks: PyTree, density, scope: str = 'per_leaf') -> PyTree:
  """Shrink ``masks`` to ``density`` by the magnitude of the currently kept entries of ``delta``.

  Pruned entries rank below every kept one and the result is ANDed with ``masks``,
  so a pruned entry never comes back. If ``density`` is at most the current kept
  fraction (of each leaf, or of the whole tree for ``scope='global'``) exactly
  ``num_kept(density, size)`` entries remain; if it is higher the masks are returned
  unchanged. Jittable with a traced density.
  """
  _check_scope(scope)
  if scope == 'global':
    new = _global_masks(delta, density, masks)
  else:
    def leaf(x, m):
      return _keep_top(_keys(x, m), num_kept(density, np.size(x))).reshape(np.shape(x))
    new = jax.tree.map(leaf, delta, masks)
  return jax.tree.map(lambda n, m: n & jnp.asarray(m, bool), new, masks)


def apply_masks(tree: PyTree, masks: PyTree | None) -> PyTree:
  """``tree`` with masked-out entries set to exactly +0.0, leafwise.

  ``None`` leaves of ``tree``, ``None`` masks, and ``masks=None`` pass the leaf
  through unchanged. Uses ``where`` rather than a product, so pruned entries become
  +0.0 even if they held -x, inf or NaN. Gradient w.r.t. ``tree``: the mask.
  """
  if masks is None:
    return tree

  def leaf(x, m):
    if x is None or m is None:
      return x
    x = jnp.asarray(x)
    return jnp.where(jnp.asarray(m, bool), x, jnp.zeros_like(x))

  return jax.tree.map(leaf, tree, masks, is_leaf=_is_none)


def kept_fraction(masks: PyTree) -> jax.Array:
  """Fraction of True entries over all (non-None) mask leaves, as a float32 scalar."""
  leaves = jax.tree.leaves(masks)
  if not leaves:
    raise ValueError('kept_fraction got a mask tree with no leaves.')
  kept = sum(jnp.sum(jnp.asarray(m, bool), dtype=jnp.float32) for m in leaves)
  return kept / float(sum(np.size(m) for m in leaves))


# ----------------------------------------------------------------------------- schedules


def polynomial_density(step, *, final_density: float, begin_step: int, end_step: int,
                       initial_density: float = 1.0, power: int = 3) -> jax.Array:
  """Gradual pruning density of Zhu & Gupta (2017), as a float32 scalar.

  ``d_t = d_f + (d_i - d_f) * (1 - (t - t0) / (t_end - t0)) ** power`` for
  ``t0 <= t <= t_end``; ``d_i`` before ``t0`` and ``d_f`` after ``t_end``.
  ``step`` may be a traced integer.
  """
  if end_step <= begin_step:
    raise ValueError(f'end_step={end_step} must be > begin_step={begin_step}; for pruning at a single step '
                     'use one_shot_density.')
  _check_density(final_density)
  _check_density(initial_density)
  t = jnp.asarray(step, jnp.float32)
  progress = jnp.clip((t - begin_step) / float(end_step - begin_step), 0.0, 1.0)
  return jnp.float32(final_density) + jnp.float32(initial_density - final_density) * (1.0 - progress) ** power


def one_shot_density(step, *, final_density: float, prune_step: int) -> jax.Array:
  """Density 1.0 for ``step < prune_step`` and ``final_density`` from ``prune_step`` on (float32)."""
  _check_density(final_density)
  return jnp.where(jnp.asarray(step) >= prune_step, jnp.float32(final_density), jnp.float32(1.0))


def make_density_schedule(kind: str, final_density: float, begin_step: int,
                          end_step: int) -> Callable[[Any], jax.Array]:
  """``step -> density`` (float32 scalar, jittable).

  kind:
    'one_shot': 1.0, then ``final_density`` from ``begin_step`` on (``end_step`` unused);
    'gradual': ``polynomial_density`` from 1.0 at ``begin_step`` to ``final_density``
      at ``end_step`` (cubic);
    'none': no pruning, 1.0 at every step (``final_density`` is ignored).
  """
  if kind not in SCHEDULE_KINDS:
    raise ValueError(f'schedule kind={kind!r} is unknown; use one of {SCHEDULE_KINDS}.')
  _check_density(final_density)
  if kind == 'one_shot':
    return lambda step: one_shot_density(step, final_density=final_density, prune_step=begin_step)
  if kind == 'gradual':
    if end_step <= begin_step:
      raise ValueError(f"'gradual' needs end_step > begin_step, got {begin_step}..{end_step}.")
    return lambda step: polynomial_density(step, final_density=final_density, begin_step=begin_step,
                                           end_step=end_step)
  return lambda step: jnp.ones((), jnp.float32)
