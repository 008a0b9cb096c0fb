"""Symmetric signed integer fake quantization (QAT) and bit packing for export.

A tensor ``x`` is quantized with a positive float32 ``scale`` to integers
``q = clip(round_half_even(x / scale), -qmax, qmax)`` stored as int8, and
dequantized as ``q * scale`` in float32. ``fake_quant`` runs that round trip in the
forward pass and passes gradients straight through (clipped STE) backward.

Bit exactness. The compressed export must reproduce the jitted training forward
bit for bit, on any backend and under any fusion. Two XLA behaviours break naive
code: (1) XLA:CPU's vectorized float32 division is not correctly rounded (measured
here: about half of ``a / 7`` differ by 1 ulp from IEEE, and the result depends on
the array length), so ``round(x / s)`` and ``absmax / qmax`` can differ between two
programs; (2) XLA may contract ``base + q * s`` into an FMA in one program and not
in another. Hence:

* scales lie on a float32 grid of 16 significant bits, so ``q * s`` (|q| <= 127)
  and ``(2q + 1) * s`` are exact in float32 and FMA contraction cannot change
  ``base + q * s``;
* ``absmax_scale`` returns the smallest grid value with ``scale * qmax >= max|x|``,
  decided by exact products, not by the rounding of a division;
* ``quantize`` takes ``round(x / s)`` only as a first guess and corrects it with
  exact comparisons ``2x <> (2q +- 1) * s``, which gives the exactly rounded
  (half to even) quotient whatever the division returned.

All guarantees assume grid scales (those from ``absmax_scale``); an explicit scale
off the grid still works but only approximately reproduces across programs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from supersub_jax.choices import SUPPORTED_BITS

# Scales keep 16 significant bits. Times an integer of at most 8 bits (|2q + 1| <= 255)
# the product has at most 24 significant bits: exactly representable in float32.
# Rounding the scale up to the grid costs < 2**-15 relative.
_SCALE_DROPPED_MANTISSA_BITS = 8
_SCALE_LOW_MASK = (1 << _SCALE_DROPPED_MANTISSA_BITS) - 1


def _check_bits(bits) -> int:
  if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or int(bits) not in SUPPORTED_BITS:
    raise ValueError(f'bits={bits!r} is not supported; use one of {SUPPORTED_BITS} (None disables quantization '
                     'where a caller allows it).')
  return int(bits)


def qmax(bits: int) -> int:
  """Largest quantized magnitude of a symmetric signed ``bits``-bit integer: 2**(bits-1) - 1.

  8 -> 127, 4 -> 7, 2 -> 1. The most negative code (-2**(bits-1)) is unused so the
  grid is symmetric around 0. Raises ValueError for bits outside {8, 4, 2}.
  """
  return 2 ** (_check_bits(bits) - 1) - 1


def _normalize_axis(channel_axis: int, ndim: int) -> int:
  if not -ndim <= channel_axis < ndim:
    raise ValueError(f'channel_axis={channel_axis} is out of range for an array with {ndim} dims; '
                     'use -1 for the output channel of conv [kh,kw,in,out] and dense [in,out] kernels, '
                     'or None for a per-tensor scale.')
  return channel_axis % ndim


def _ceil_to_scale_grid(s: jax.Array) -> jax.Array:
  """Smallest grid float32 >= s, for positive finite float32 s (bit pattern is monotone in value)."""
  u = jax.lax.bitcast_convert_type(s, jnp.uint32)
  u = (u + jnp.uint32(_SCALE_LOW_MASK)) & jnp.uint32(~_SCALE_LOW_MASK & 0xFFFFFFFF)
  return jax.lax.bitcast_convert_type(u, jnp.float32)


def _step_on_scale_grid(s: jax.Array, direction: int) -> jax.Array:
  """The neighbouring grid float32 above (direction=+1) or below (-1) the grid float32 s > 0."""
  u = jax.lax.bitcast_convert_type(s, jnp.uint32)
  step = jnp.uint32(_SCALE_LOW_MASK + 1)
  u = u + step if direction > 0 else u - step
  return jax.lax.bitcast_convert_type(u, jnp.float32)


# jit: eager callers (export, tests) get one fused program instead of a dozen op-by-op
# dispatches; under an outer jit it is inlined.
@functools.partial(jax.jit, static_argnames=('bits', 'channel_axis'))
def absmax_scale(x: jax.Array, bits: int, channel_axis: int | None = None) -> jax.Array:
  """Symmetric absmax scale of ``x``, as a float32 array with gradients stopped.

  Args:
    x: float array of any shape.
    bits: 8, 4 or 2.
    channel_axis: None for one scale for the whole tensor (returns shape ``()``), or
      the axis that keeps its own scale (returns ``x.shape`` with every other axis
      reduced to 1, e.g. ``[1, 1, 1, out]`` for a conv kernel with ``channel_axis=-1``).

  Returns:
    ``scale``, the smallest value on a float32 grid of 16 significant bits with
    ``scale >= max|x| / qmax(bits)`` (exactly, not just up to rounding). Where
    ``max|x| == 0`` the scale is 1.0 (the quantized values are all 0 anyway, and it
    avoids 0/0). The grid makes ``q * scale`` exact in float32 (see module
    docstring); being the smallest such value makes the scale idempotent:
    ``absmax_scale(fake_quant(x)) == absmax_scale(x)``, and ``|x| <= qmax * scale``
    holds for every entry, so the STE passes the gradient of the largest entry.
  """
  q_max = qmax(bits)
  x = jax.lax.stop_gradient(jnp.asarray(x, jnp.float32))
  if channel_axis is None:
    amax = jnp.max(jnp.abs(x)) if x.size else jnp.zeros((), jnp.float32)
  else:
    axis = _normalize_axis(channel_axis, x.ndim)
    reduce_axes = tuple(a for a in range(x.ndim) if a != axis)
    amax = jnp.max(jnp.abs(x), axis=reduce_axes, keepdims=True)
  safe_amax = jnp.where(amax > 0, amax, jnp.float32(q_max))
  q_max_f = jnp.float32(q_max)
  # The division is only a guess (a few ulps off, see module docstring); products with a
  # grid scale are exact, so the two corrections below pick the minimal grid scale exactly.
  scale = _ceil_to_scale_grid(safe_amax / q_max_f)
  below = _step_on_scale_grid(scale, -1)
  scale = jnp.where(below * q_max_f >= safe_amax, below, scale)
  scale = jnp.where(scale * q_max_f < safe_amax, _step_on_scale_grid(scale, +1), scale)
  return jax.lax.stop_gradient(scale)


@functools.partial(jax.jit, static_argnames=('bits',))
def quantize(x: jax.Array, scale: jax.Array, bits: int) -> jax.Array:
  """int8 codes ``clip(round(x / scale), -qmax, qmax)``, rounding half to even.

  The quotient is rounded as if computed exactly (``jnp.round`` of the true x/scale),
  not as ``jnp.round`` of XLA's float32 division, whose last bit varies between
  programs (module docstring); this is exact for grid scales from ``absmax_scale``.

  Args:
    x: float array.
    scale: positive float32 array broadcastable to ``x`` (e.g. from ``absmax_scale``).
    bits: 8, 4 or 2.
  Returns:
    int8 array of the broadcast shape of ``x`` and ``scale``; values in
    ``[-qmax(bits), qmax(bits)]``.
  """
  q_max = qmax(bits)
  x = jnp.asarray(x, jnp.float32)
  scale = jnp.asarray(scale, jnp.float32)
  # First guess, within one step of the exact rounding; clipping it to one step past the
  # range keeps |2q +- 1| <= 2 * qmax + 3 small enough for the products below to be exact
  # where it matters (anything beyond the range is clipped anyway).
  guess = jnp.clip(jnp.round(x / scale), -q_max - 1, q_max + 1)
  two_x = 2.0 * x
  upper = (2.0 * guess + 1.0) * scale  # 2 * (boundary between guess and guess + 1)
  lower = (2.0 * guess - 1.0) * scale  # 2 * (boundary between guess - 1 and guess)
  odd = jnp.mod(guess, 2.0) != 0.0  # on a tie the even neighbour wins
  go_up = (two_x > upper) | ((two_x == upper) & odd)
  go_down = (two_x < lower) | ((two_x == lower) & odd)
  q = guess + go_up.astype(jnp.float32) - go_down.astype(jnp.float32)
  return jnp.clip(q, -q_max, q_max).astype(jnp.int8)


def dequantize(q: jax.Array, scale: jax.Array) -> jax.Array:
  """float32 ``q * scale`` for int codes ``q`` and a scale broadcastable to ``q``."""
  return jnp.asarray(q).astype(jnp.float32) * jnp.asarray(scale, jnp.float32)


def _quant_dequant(x: jax.Array, scale: jax.Array, bits: int) -> jax.Array:
  return dequantize(quantize(x, scale, bits), scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fake_quant_ste(x: jax.Array, scale: jax.Array, bits: int) -> jax.Array:
  return _quant_dequant(x, scale, bits)


def _fake_quant_ste_fwd(x, scale, bits):
  return _quant_dequant(x, scale, bits), (x, scale)


def _fake_quant_ste_bwd(bits, residuals, g):
  x, scale = residuals
  inside = jnp.abs(x) <= qmax(bits) * scale
  # The scale is a statistic of the weights, not a learned parameter: no gradient.
  return jnp.where(inside, g, jnp.zeros_like(g)), jnp.zeros_like(scale)


_fake_quant_ste.defvjp(_fake_quant_ste_fwd, _fake_quant_ste_bwd)


@functools.partial(jax.jit, static_argnames=('bits', 'channel_axis'))
def fake_quant(x: jax.Array, bits: int, channel_axis: int | None = None,
               scale: jax.Array | None = None) -> jax.Array:
  """Quantize-dequantize with a clipped straight-through gradient (QAT).

  Forward: exactly ``dequantize(quantize(x, s, bits), s)`` (float32, shape of ``x``),
  where ``s = scale`` if given, else ``absmax_scale(x, bits, channel_axis)``. It is
  bit-for-bit the value a compressed export followed by ``dequantize`` yields.

  Backward (clipped STE): the cotangent passes unchanged where ``|x| <= qmax * s``
  and is 0 outside; the scale gets no gradient.

  Implemented with ``jax.custom_vjp`` rather than the common
  ``x + stop_gradient(q - x)`` trick, because that trick computes ``x + (q - x)`` in
  floating point, which is not always bit-equal to ``q``. Works under jit, vmap,
  grad and pmap. ``bits`` and ``channel_axis`` must be static Python ints.
  """
  _check_bits(bits)
  x = jnp.asarray(x).astype(jnp.float32)
  if scale is None:
    scale = absmax_scale(x, bits, channel_axis)
  else:
    scale = jax.lax.stop_gradient(jnp.asarray(scale, jnp.float32))
  return _fake_quant_ste(x, scale, bits)


def packed_len(n: int, bits: int) -> int:
  """Bytes that ``pack_int`` uses for ``n`` codes of ``bits`` bits."""
  per_byte = 8 // bits
  return -(-n // per_byte)


def pack_int(q, bits: int) -> np.ndarray:
  """Pack signed integer codes into bytes (numpy; accepts numpy or jax arrays).

  Args:
    q: integer array of any shape, flattened in C order; values must fit a signed
      ``bits``-bit integer, i.e. lie in ``[-2**(bits-1), 2**(bits-1) - 1]``.
    bits: 8 (one value per byte: the int8 bytes), 4 (two per byte) or 2 (four per byte).

  Returns:
    uint8 array of ``ceil(q.size * bits / 8)`` bytes. Value ``i`` occupies bits
    ``[(i % per_byte) * bits, ...)`` of byte ``i // per_byte`` (low bits first), as
    two's complement; padding bits are 0. Inverse: ``unpack_int(packed, bits, q.size)``.
  """
  bits = _check_bits(bits)
  q = np.asarray(q)
  if q.dtype.kind not in 'iu':
    raise TypeError(f'pack_int expects integer codes, got dtype {q.dtype}; quantize first (quant.quantize).')
  flat = q.reshape(-1)
  lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
  if flat.size and (flat.min() < lo or flat.max() > hi):
    raise ValueError(f'values in [{flat.min()}, {flat.max()}] do not fit {bits} signed bits [{lo}, {hi}]; '
                     'clip them (quant.quantize does) or use more bits.')
  codes = flat.astype(np.int8).view(np.uint8)
  if bits == 8:
    return codes.copy()
  per_byte = 8 // bits
  padded = np.zeros(packed_len(flat.size, bits) * per_byte, np.uint8)
  padded[:flat.size] = codes & np.uint8((1 << bits) - 1)
  shifts = (np.arange(per_byte, dtype=np.uint8) * bits).astype(np.uint8)
  return np.bitwise_or.reduce(padded.reshape(-1, per_byte) << shifts, axis=1).astype(np.uint8)


def unpack_int(packed, bits: int, n: int) -> np.ndarray:
  """Inverse of ``pack_int``: the first ``n`` values as an int8 array of shape ``[n]``."""
  bits = _check_bits(bits)
  packed = np.asarray(packed)
  if packed.dtype != np.uint8 or packed.ndim != 1:
    raise TypeError(f'unpack_int expects a 1-D uint8 array from pack_int, got {packed.dtype}{list(packed.shape)}.')
  need = packed_len(n, bits)
  if packed.size < need:
    raise ValueError(f'{packed.size} bytes cannot hold {n} values of {bits} bits ({need} bytes needed).')
  if bits == 8:
    return packed[:n].view(np.int8).copy()
  per_byte = 8 // bits
  shifts = (np.arange(per_byte, dtype=np.uint8) * bits).astype(np.uint8)
  codes = ((packed[:need, None] >> shifts) & np.uint8((1 << bits) - 1)).reshape(-1)[:n]
  sign = np.int16(1 << (bits - 1))
  return ((codes.astype(np.int16) ^ sign) - sign).astype(np.int8)
