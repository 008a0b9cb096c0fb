"""Tests for supersub_jax.quant: scales, rounding, fake quant + STE, bit packing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supersub_jax import quant

BITS = (8, 4, 2)


def _rand(seed, shape, std=1.0):
  return np.float32(np.random.RandomState(seed).randn(*shape) * std)


def _exact_round(x, scale, bits):
  """Reference codes: round half to even of the exact quotient (float64 holds it exactly enough)."""
  m = quant.qmax(bits)
  return np.clip(np.round(np.float64(x) / np.float64(scale)), -m, m).astype(np.int8)


@pytest.mark.parametrize('bits,expected', [(8, 127), (4, 7), (2, 1)])
def test_qmax(bits, expected):
  assert quant.qmax(bits) == expected


@pytest.mark.parametrize('bits', [0, 1, 3, 16, 32, None, True, 8.0])
def test_invalid_bits_raise(bits):
  with pytest.raises(ValueError, match='bits'):
    quant.qmax(bits)
  with pytest.raises(ValueError, match='bits'):
    quant.fake_quant(jnp.ones(3), bits)
  with pytest.raises(ValueError, match='bits'):
    quant.pack_int(np.zeros(3, np.int8), bits)


@pytest.mark.parametrize('shape,axis,expected', [
    ((3, 3, 4, 5), -1, (1, 1, 1, 5)),   # conv kernel [kh, kw, in, out]
    ((6, 5), -1, (1, 5)),               # dense kernel [in, out]
    ((6, 5), 0, (6, 1)),
    ((3, 3, 4, 5), None, ()),
    ((7,), None, ()),
])
def test_absmax_scale_shape(shape, axis, expected):
  s = quant.absmax_scale(_rand(0, shape), 8, axis)
  assert s.shape == expected and s.dtype == jnp.float32


def test_absmax_scale_bad_axis():
  with pytest.raises(ValueError, match='channel_axis'):
    quant.absmax_scale(jnp.ones((2, 3)), 8, 2)


def test_zero_tensor_and_zero_channel_get_scale_one():
  x = np.zeros((2, 3), np.float32)
  x[:, 0] = [0.5, -1.0]
  assert float(quant.absmax_scale(np.zeros((4, 3)), 8, None)) == 1.0
  s = np.asarray(quant.absmax_scale(x, 8, -1))
  assert s[0, 1] == 1.0 and s[0, 2] == 1.0 and s[0, 0] != 1.0
  np.testing.assert_array_equal(quant.fake_quant(np.zeros((4, 3)), 4, -1), 0.0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), bits=st.sampled_from(BITS), log_std=st.floats(-8, 4))
def test_absmax_scale_is_smallest_grid_value_covering_absmax(seed, bits, log_std):
  x = _rand(seed, (5, 6), std=10.0**log_std)
  s = np.asarray(quant.absmax_scale(x, bits, -1))
  amax = np.abs(x).max(axis=0, keepdims=True)
  m = np.float32(quant.qmax(bits))
  u = s.view(np.uint32)
  assert np.all(u & 0xFF == 0)                # on the 16-significant-bit grid
  assert np.all(s * m >= amax)                 # covers every entry (products are exact)
  below = (u - 0x100).view(np.float32)
  assert np.all(below * m < amax)              # and is the smallest such grid value
  assert np.all(np.float64(s) * quant.qmax(bits) < np.float64(amax) * (1 + 2**-14))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), bits=st.sampled_from(BITS), per_channel=st.booleans())
def test_quantize_rounds_the_exact_quotient_half_to_even(seed, bits, per_channel):
  axis = -1 if per_channel else None
  x = _rand(seed, (4, 33))
  s = np.asarray(quant.absmax_scale(x, bits, axis))
  rng = np.random.RandomState(seed)
  m = quant.qmax(bits)
  # Exact ties (k + 1/2) * s are representable since s is on the grid.
  ties = np.float32((rng.randint(-m - 2, m + 2, size=x.shape) + 0.5) * s)
  for v in (x, ties):
    expected = _exact_round(v, s, bits)
    np.testing.assert_array_equal(quant.quantize(v, s, bits), expected)
    np.testing.assert_array_equal(jax.jit(quant.quantize, static_argnums=2)(v, s, bits), expected)
  # Half to even on ties: 0.5 -> 0, 1.5 -> 2, -0.5 -> 0, -2.5 -> -2.
  q = quant.quantize(np.float32([0.5, 1.5, -0.5, -2.5]), np.float32(1.0), 8)
  np.testing.assert_array_equal(q, [0, 2, 0, -2])


@pytest.mark.parametrize('bits', BITS)
@pytest.mark.parametrize('axis', [None, -1])
def test_fake_quant_forward_is_dequantize_of_quantize_bit_exact(bits, axis):
  x = _rand(1, (3, 3, 4, 6), std=0.02)
  s = quant.absmax_scale(x, bits, axis)
  expected = np.asarray(quant.dequantize(quant.quantize(x, s, bits), s))
  fq_jit = jax.jit(quant.fake_quant, static_argnums=(1, 2))
  for y in (quant.fake_quant(x, bits, axis), fq_jit(x, bits, axis)):
    assert y.dtype == jnp.float32 and y.shape == x.shape
    np.testing.assert_array_equal(np.asarray(y).view(np.uint32), expected.view(np.uint32))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), bits=st.sampled_from(BITS), per_channel=st.booleans(),
       scale=st.floats(1e-3, 1.0))
def test_values_on_grid_and_idempotent(seed, bits, per_channel, scale):
  axis = -1 if per_channel else None
  x = _rand(seed, (6, 5))
  m = quant.qmax(bits)
  # With an explicit (off-grid) scale and with the absmax scale.
  for s in (np.float32(scale), quant.absmax_scale(x, bits, axis)):
    y = np.asarray(quant.fake_quant(x, bits, axis, scale=s))
    codes = np.float64(y) / np.float64(s)
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-5)
    assert np.all(np.abs(np.round(codes)) <= m)
    np.testing.assert_array_equal(quant.fake_quant(y, bits, axis, scale=s), y)
  # The absmax scale itself is a fixed point: re-deriving it from the output changes nothing.
  y = quant.fake_quant(x, bits, axis)
  np.testing.assert_array_equal(quant.absmax_scale(y, bits, axis), quant.absmax_scale(x, bits, axis))
  np.testing.assert_array_equal(quant.fake_quant(y, bits, axis), y)


@pytest.mark.parametrize('bits', BITS)
def test_ste_gradient_identity_inside_zero_outside(bits):
  x = _rand(2, (8, 16))
  s = np.float32(0.8 / quant.qmax(bits))  # clip range about +-0.8: many normals fall outside
  limit = quant.qmax(bits) * s
  x[0, 0], x[0, 1] = limit, -limit  # the clip boundary itself counts as inside
  w = _rand(3, x.shape)
  g = np.asarray(jax.grad(lambda v: jnp.sum(quant.fake_quant(v, bits, scale=s) * w))(x))
  inside = np.abs(x) <= limit
  assert inside.any() and (~inside).any()
  np.testing.assert_array_equal(g[inside], w[inside])
  np.testing.assert_array_equal(g[~inside], 0.0)


def test_ste_absmax_scale_passes_gradient_everywhere():
  x = _rand(4, (3, 3, 2, 4))
  g = jax.grad(lambda v: jnp.sum(quant.fake_quant(v, 4, -1)))(x)
  np.testing.assert_array_equal(g, 1.0)


def test_no_gradient_through_explicit_scale():
  x = _rand(5, (10,))
  g = jax.grad(lambda s: jnp.sum(quant.fake_quant(x, 8, scale=s)))(np.float32(0.05))
  assert float(g) == 0.0


def test_fake_quant_under_vmap_jit_grad_pmap():
  xs = _rand(6, (3, 4, 5), std=0.1)
  ref = np.stack([np.asarray(quant.fake_quant(x, 4, -1)) for x in xs])
  vm = jax.jit(jax.vmap(lambda x: quant.fake_quant(x, 4, -1)))(xs)
  np.testing.assert_array_equal(vm, ref)
  gv = jax.jit(jax.vmap(jax.grad(lambda x: jnp.sum(quant.fake_quant(x, 4, -1) ** 2))))(xs)
  np.testing.assert_array_equal(gv, 2 * ref)  # STE: d/dx sum(fq(x)^2) = 2 fq(x)
  n = jax.local_device_count()
  pm = jax.pmap(lambda x: quant.fake_quant(x, 8, -1))(np.broadcast_to(xs[0], (n,) + xs[0].shape))
  np.testing.assert_array_equal(pm[0], quant.fake_quant(xs[0], 8, -1))
  gp = jax.pmap(jax.grad(lambda x: jnp.sum(quant.fake_quant(x, 8, scale=0.01))))(np.broadcast_to(xs[0], (n,) + xs[0].shape))
  np.testing.assert_array_equal(gp[0], np.abs(xs[0]) <= 127 * np.float32(0.01))


def test_fake_quant_output_is_float32_for_bf16_input():
  x = jnp.asarray(_rand(7, (4, 4)), jnp.bfloat16)
  y = quant.fake_quant(x, 8)
  assert y.dtype == jnp.float32
  g = jax.grad(lambda v: jnp.sum(quant.fake_quant(v, 8)))(x)
  assert g.dtype == jnp.bfloat16


@settings(max_examples=60, deadline=None)
@given(data=st.data(), bits=st.sampled_from(BITS), n=st.integers(0, 41))
def test_pack_unpack_round_trip(data, bits, n):
  lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
  q = np.asarray(data.draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)), np.int8)
  packed = quant.pack_int(q, bits)
  assert packed.dtype == np.uint8 and packed.shape == (-(-n * bits // 8),)
  out = quant.unpack_int(packed, bits, n)
  assert out.dtype == np.int8
  np.testing.assert_array_equal(out, q)
  np.testing.assert_array_equal(quant.unpack_int(quant.pack_int(jnp.asarray(q), bits), bits, n), q)


def test_pack_layout_low_bits_first():
  np.testing.assert_array_equal(quant.pack_int(np.int8([1, -1]), 4), [0xF1])
  np.testing.assert_array_equal(quant.pack_int(np.int8([1, 0, -1, -2]), 2), [0b10110001])
  np.testing.assert_array_equal(quant.pack_int(np.int8([-1, 5]), 8), [255, 5])


def test_pack_errors():
  with pytest.raises(ValueError, match='do not fit'):
    quant.pack_int(np.int8([8]), 4)
  with pytest.raises(ValueError, match='do not fit'):
    quant.pack_int(np.int8([-3]), 2)
  with pytest.raises(TypeError, match='integer'):
    quant.pack_int(np.float32([1.0]), 8)
  with pytest.raises(ValueError, match='bytes'):
    quant.unpack_int(np.zeros(2, np.uint8), 4, 5)
