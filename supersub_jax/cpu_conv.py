"""The ResNets' 2-D convolution: ``jax.lax.conv_general_dilated``'s values and gradients, with a faster kernel
gradient on CPU.

``conv_general_dilated`` (``nn.Conv(conv_general_dilated=...)`` in ``models``) keeps ``jax.lax``'s values and
gradients, except that on CPU the kernel gradient is one matmul per kernel tap instead of XLA:CPU's backward-filter
convolution (5-12x faster for ResNet-18's first two stages at 32x32; ``benchmarks/conv.py``).

Shapes: input NHWC ``[B, H, W, C]``, kernel HWIO ``[kh, kw, C, O]``, output NHWC ``[B, Ho, Wo, O]``.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp


def _kernel_grad_by_shifts(x: jax.Array, g: jax.Array, kernel_shape: Sequence[int], strides: Sequence[int],
                           padding: Sequence[tuple[int, int]]) -> jax.Array:
  """The kernel gradient of a 2-D NHWC/HWIO convolution as one matmul per kernel tap.

  x: input [B, H, W, C]; g: output cotangent [B, Ho, Wo, O]; returns [kh, kw, C, O] in x's dtype. Tap (i, j) sees
  the padded input window shifted by (i, j) and strided as the convolution: its gradient is that window, flattened
  to [B*Ho*Wo, C], contracted with g flattened to [B*Ho*Wo, O] (accumulated in float32). The taps run in a loop
  (``lax.map``), not unrolled: one matmul in the program instead of kh*kw compiles faster and ran faster here.
  """
  kh, kw = kernel_shape[0], kernel_shape[1]
  _, ho, wo, o = g.shape
  xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  g2 = g.reshape(-1, o)
  extent = (xp.shape[0], (ho - 1) * strides[0] + 1, (wo - 1) * strides[1] + 1, xp.shape[3])

  def tap(t):
    window = jax.lax.dynamic_slice(xp, (0, t // kw, t % kw, 0), extent)[:, ::strides[0], ::strides[1]]
    return jax.lax.dot_general(window.reshape(-1, x.shape[-1]), g2, (((0,), (0,)), ((), ())),
                               preferred_element_type=jnp.float32)

  return jax.lax.map(tap, jnp.arange(kh * kw)).reshape(kh, kw, x.shape[-1], o).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_nhwc(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
               padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _conv_nhwc_fwd(x, kernel, strides, padding):
  return _conv_nhwc(x, kernel, strides, padding), (x, kernel)


def _conv_nhwc_bwd(strides, padding, residuals, g):
  x, kernel = residuals
  conv = functools.partial(jax.lax.conv_general_dilated, window_strides=strides, padding=padding,
                           dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  (dx,) = jax.vjp(lambda x_: conv(x_, kernel), x)[1](g)
  # XLA:CPU computes the kernel gradient as a convolution whose "features" are the batch and spatial positions: on
  # large feature maps up to 17x slower than the forward convolution (2-core x86 CPU), while one matmul per kernel
  # tap runs at the speed of a GEMM. Other platforms keep XLA's own transpose (cuDNN's backward-filter kernels on
  # GPU).
  dk = jax.lax.platform_dependent(
      x, g, cpu=lambda x_, g_: _kernel_grad_by_shifts(x_, g_, kernel.shape, strides, padding),
      default=lambda x_, g_: jax.vjp(lambda k_: conv(x_, k_), kernel)[1](g_)[0])
  return dx, dk.astype(kernel.dtype)


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any, *,
                         lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1, precision: Any = None,
                         **kwargs) -> jax.Array:
  """``jax.lax.conv_general_dilated`` with the same values and gradients, and a fast kernel gradient on CPU.

  ``nn.Conv(conv_general_dilated=...)`` calls it. The convolutions of these ResNets (2-D, NHWC input, HWIO kernel,
  no dilation or groups, padding non-negative) take the custom gradient; any other call goes to ``lax`` unchanged.
  """
  plain = (lhs.ndim == 4 and rhs.ndim == 4 and not kwargs and precision is None and feature_group_count == 1
           and all(d == 1 for d in (lhs_dilation or (1,)) + (rhs_dilation or (1,)))
           and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
           == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ('NHWC', 'HWIO', 'NHWC')))
  if plain and isinstance(padding, str):  # 'VALID' / 'SAME' as lax resolves them
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  if not plain or any(lo < 0 or hi < 0 for lo, hi in padding):
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision, **kwargs)
  return _conv_nhwc(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding))
