"""Tests of supersub_jax.cpu_conv: XLA's values and gradients, the kernel gradient by matmuls on CPU."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from supersub_jax.cpu_conv import conv_general_dilated


def _conv_grads(conv, x, kernel, strides, padding, **kw):
  """(output, d/dx, d/dkernel) of sum(sin(conv(x, kernel))): a cotangent that differs at every output entry."""
  def loss(x_, k_):
    return jnp.sin(conv(x_, k_, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'), **kw)
                   .astype(jnp.float32)).sum()
  return (conv(x, kernel, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'), **kw),
          *jax.jit(jax.grad(loss, (0, 1)))(x, kernel))


@settings(max_examples=12, deadline=None)
@given(k=st.sampled_from([1, 3, 7]), stride=st.sampled_from([1, 2]), size=st.integers(4, 11),
       padding=st.one_of(st.sampled_from(['SAME', 'VALID']),
                         st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)),
                                   st.tuples(st.integers(0, 3), st.integers(0, 3)))),
       seed=st.integers(0, 2**16))
def test_conv_values_and_both_gradients_equal_xla_for_any_kernel_stride_and_padding(k, stride, size, padding, seed):
  pads = (0, 0) if padding == 'VALID' else (k, k) if padding == 'SAME' else (sum(padding[0]), sum(padding[1]))
  assume(size + min(pads) >= k)  # the kernel fits the padded input
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(2, size, size + 1, 3)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, 3, 4)), jnp.float32)
  ours = _conv_grads(conv_general_dilated, x, kernel, (stride, stride), padding)
  xla = _conv_grads(jax.lax.conv_general_dilated, x, kernel, (stride, stride), padding)
  for a, b in zip(ours, xla):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


def test_conv_kernel_gradient_in_bf16_is_bf16_and_close_to_xla():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 8, 8, 8)), jnp.bfloat16)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 8, 8)), jnp.bfloat16)
  _, _, ours = _conv_grads(conv_general_dilated, x, kernel, (1, 1), ((1, 1), (1, 1)))
  _, _, xla = _conv_grads(jax.lax.conv_general_dilated, x, kernel, (1, 1), ((1, 1), (1, 1)))
  assert ours.dtype == xla.dtype == jnp.bfloat16
  # Ours accumulates in float32; a bf16 result is within a few bf16 ulps of XLA's.
  np.testing.assert_allclose(np.float32(ours), np.float32(xla), rtol=0.05, atol=0.05 * float(jnp.abs(xla).max()))


def test_conv_other_arguments_go_to_lax_unchanged():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 9, 9, 3)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
  for kw in ({'padding': ((1, 1), (1, 1)), 'rhs_dilation': (2, 2)}, {'padding': ((-1, 2), (1, 1))}):
    padding = kw.pop('padding')
    ours = _conv_grads(conv_general_dilated, x, kernel, (1, 1), padding, **kw)
    xla = _conv_grads(jax.lax.conv_general_dilated, x, kernel, (1, 1), padding, **kw)
    for a, b in zip(ours, xla):
      np.testing.assert_array_equal(a, b)
