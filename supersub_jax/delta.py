"""Specialist deltas: ``specialist params = base + fake_quant(delta * mask)``.

Trees. ``params`` is the content of a flax linen ``'params'`` collection: a nested
dict of arrays whose '/'-joined paths look like ``'conv_init/kernel'``,
``'ResNetBlock_0/Conv_0/kernel'`` or ``'head/kernel'``. A **delta** has exactly the
dict structure of the base params, with a float32 zeros-initialised array at each
selected leaf and ``None`` at every other leaf (the head included: the 'head' key
is present, its leaves are ``None``). ``None`` is an empty pytree node, not a leaf,
so ``jax.tree.map``/optax/``jax.grad`` over a delta only touch the selected
leaves. **Masks** are the bool trees of ``supersub_jax.sparsity`` with the same
structure (``None`` where the delta is ``None``); ``masks=None`` means dense.

Quantization. With ``DeltaConfig.bits`` set, the forward always sees
``fake_quant(where(mask, delta, 0))`` with absmax scales computed on the masked
delta: per output channel (last axis) for leaves with ndim >= 2 when
``granularity='per_channel'``, per tensor for 1-D leaves (BatchNorm scale/bias,
biases: a per-element scale would store as many scales as values) and for
``granularity='per_tensor'``.

Export. The stored form of a trained delta (compressed records) lives in
``supersub_jax.exported``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from supersub_jax import quant
from supersub_jax.choices import GRANULARITIES

PyTree = Any

KERNELS = r'.*kernel$'
KERNELS_AND_NORM = r'.*(kernel|scale|bias)$'
NORM = r'(scale|bias)$'  # BatchNorm's affine parameters, e.g. for config.specialists.dense_leaves
# config.specialists' delta settings at the storage frontier (docs/benchmarks.md, "BatchNorm deltas kept whole"):
# sparse int4 kernels with the BatchNorm affine deltas whole were at least as accurate as density 0.1 int8 kernels
# at seeds 0 and 1 of the synthetic dataset, at half the bytes (alpha 0.026 against 0.050). Measured there only, so
# the defaults stay density 0.1 int8 kernels; a config opts in with config.specialists.update(FRONTIER).
FRONTIER = {'density': 0.05, 'bits': 4, 'leaves': 'kernels_and_norm', 'dense_leaves': NORM}
EXCLUDE_HEAD = r'^head/'
LEAVES = {
    'kernels': KERNELS,
    'kernels_and_norm': KERNELS_AND_NORM,
}  # config.specialists.leaves's named sets. A head-only specialist (the generalist's own features) is
   # branch='head'; density=0.0 prunes the delta to nothing but still re-estimates every BatchNorm statistic on the
   # superclass's images.


def path_str(key_path) -> str:
  """'/'-joined path of a jax key path, e.g. ``'ResNetBlock_0/Conv_0/kernel'``."""
  return jax.tree_util.keystr(key_path, simple=True, separator='/')


@dataclasses.dataclass(frozen=True)
class DeltaConfig:
  """How specialist deltas are built and quantized (density and schedule live in ``sparsity``).

  Attributes:
    bits: 8, 4 or 2 for fake-quantized deltas; None trains and stores float32 deltas.
    granularity: 'per_channel' (one scale per output channel of each kernel; 1-D
      leaves always use one scale) or 'per_tensor'.
    pattern: regex (``re.search``) over '/'-joined param paths selecting delta leaves.
    exclude: regex of paths never given a delta, or None. Default: the head.
  """
  bits: int | None = 8
  granularity: str = 'per_channel'
  pattern: str = KERNELS
  exclude: str | None = EXCLUDE_HEAD

  def __post_init__(self):
    if self.bits is not None:
      quant.qmax(self.bits)  # raises on unsupported bits
    if self.granularity not in GRANULARITIES:
      raise ValueError(f'granularity={self.granularity!r} is unknown; use one of {GRANULARITIES}.')
    for name in ('pattern', 'exclude'):
      regex = getattr(self, name)
      if regex is None and name == 'exclude':
        continue
      try:
        re.compile(regex)
      except (re.error, TypeError) as e:
        raise ValueError(f'DeltaConfig.{name}={regex!r} is not a valid regex: {e}') from e


def select_delta_leaves(params: PyTree, pattern: str = KERNELS,
                        exclude: str | None = EXCLUDE_HEAD) -> PyTree:
  """Tree of Python bools (structure of ``params``): True where the path matches
  ``pattern`` and does not match ``exclude`` (both with ``re.search``)."""
  inc = re.compile(pattern)
  exc = re.compile(exclude) if exclude is not None else None

  def leaf(path, _):
    p = path_str(path)
    return bool(inc.search(p)) and not (exc is not None and exc.search(p))

  return jax.tree_util.tree_map_with_path(leaf, params)


def init_delta(base_params: PyTree, pattern: str = KERNELS,
               exclude: str | None = EXCLUDE_HEAD) -> PyTree:
  """Zero delta: float32 zeros of the leaf's shape where selected, None elsewhere.

  Raises ValueError if nothing is selected (names some available paths).
  """
  selected = select_delta_leaves(base_params, pattern, exclude)
  if not any(jax.tree.leaves(selected)):
    paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(base_params)[0]]
    raise ValueError(f'pattern={pattern!r} (exclude={exclude!r}) selects no parameter; available paths '
                     f'include {paths[:6]}. Use e.g. delta.KERNELS or delta.KERNELS_AND_NORM.')
  return jax.tree.map(lambda x, s: jnp.zeros(np.shape(x), jnp.float32) if s else None, base_params, selected)


def channel_axis_for(ndim: int, cfg: DeltaConfig) -> int | None:
  """Quantization channel axis of a delta leaf with ``ndim`` dims: -1 (output channel) or None."""
  return -1 if cfg.granularity == 'per_channel' and ndim >= 2 else None


def masked(d: jax.Array, m) -> jax.Array:
  """``where(m, d, 0)`` as float32 (``m=None``: ``d`` unmasked)."""
  d = jnp.asarray(d).astype(jnp.float32)
  if m is None:
    return d
  return jnp.where(jnp.asarray(m, bool), d, jnp.zeros_like(d))


def _effective_leaf(d: jax.Array, m, cfg: DeltaConfig) -> jax.Array:
  x = masked(d, m)
  if cfg.bits is None:
    return x
  return quant.fake_quant(x, cfg.bits, channel_axis_for(x.ndim, cfg))


def masks_like(delta: PyTree, masks: PyTree | None) -> PyTree:
  """``masks``, or a tree of None (dense) with ``delta``'s structure when ``masks`` is None."""
  return jax.tree.map(lambda _: None, delta) if masks is None else masks


def effective_delta(delta: PyTree, masks: PyTree | None, cfg: DeltaConfig) -> PyTree:
  """``fake_quant(where(mask, delta, 0))`` per selected leaf (float32; None stays None).

  Masked entries are exactly +0.0 (they quantize to code 0). Gradient w.r.t.
  ``delta``: the clipped STE times the mask, so masked entries get exactly 0.
  """
  return jax.tree.map(lambda d, m: _effective_leaf(d, m, cfg), delta, masks_like(delta, masks))


def materialize(base: PyTree, delta: PyTree, masks: PyTree | None, cfg: DeltaConfig) -> PyTree:
  """Specialist params: ``base + effective_delta`` where the delta is not None, else ``base``.

  Output leaves keep the base dtype. Jittable and differentiable w.r.t. ``delta``;
  vmaps over stacked (delta, masks) with an unbatched base:
  ``jax.vmap(lambda d, m: materialize(base, d, m, cfg))(deltas, masks)``.
  A zero delta gives ``base`` (+0.0 added). ``delta`` must have base's structure
  (``init_delta``), masks delta's.
  """
  masks = masks_like(delta, masks)

  def leaf(path, b, d, m):
    if d is None:
      return b
    if np.shape(d) != np.shape(b):
      raise ValueError(f'delta leaf {path_str(path)!r} has shape {np.shape(d)} but the base has '
                       f'{np.shape(b)}; build the delta with init_delta(base).')
    b = jnp.asarray(b)
    return (b + _effective_leaf(d, m, cfg)).astype(b.dtype)

  return jax.tree_util.tree_map_with_path(leaf, base, delta, masks)


def tree_nbytes(tree: PyTree) -> int:
  """Sum of ``nbytes`` of all array leaves (None skipped); works for numpy and jax arrays."""
  return int(sum(x.nbytes if hasattr(x, 'nbytes') else np.asarray(x).nbytes for x in jax.tree.leaves(tree)))
