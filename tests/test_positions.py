"""Tests for supersub_jax.positions: the three encodings of a delta's kept positions, each against an independent
reference, and the choice of the smallest."""

import jax
import numpy as np
import pytest

from delta_trees import get as _get
from delta_trees import params as _params
from delta_trees import trained_delta as _trained_delta
from supersub_jax import delta as dl
from supersub_jax import exported as ex
from supersub_jax import positions
from supersub_jax import sparsity


def _elias_fano_reference(indices, size) -> bytes:
  """Elias-Fano from its definition (Elias 1974; Vigna 2013), bit by bit in plain Python: low l = floor(log2(size/k))
  bits of each index written out, high parts as unary gaps (zeros, then a one)."""
  k = len(indices)
  l = 0
  while 2 ** (l + 1) <= size / k:
    l += 1
  high_bits, previous = [], 0
  for i in indices:
    high_bits += [0] * ((i >> l) - previous) + [1]
    previous = i >> l
  high_bits += [0] * (k + ((size - 1) >> l) + 1 - len(high_bits))
  low_bits = [(i >> b) & 1 for i in indices for b in range(l - 1, -1, -1)]

  def pack(bits):
    bits = bits + [0] * (-len(bits) % 8)
    return bytes(int(''.join(map(str, bits[j:j + 8])), 2) for j in range(0, len(bits), 8))

  return k.to_bytes(4, 'little') + pack(high_bits) + pack(low_bits)


def _expected_positions(mask) -> tuple[int, int]:
  """(encoding, bytes) the smallest code gives, from byte counts worked out independently of the module."""
  flat = np.asarray(mask).reshape(-1)
  kept = [i for i, m in enumerate(flat) if m]
  bitmask = -(-flat.size // 8)
  if not kept:
    return positions.POSITIONS_BITMASK, bitmask
  index = len(kept) * (1 if flat.size <= 256 else 2 if flat.size <= 65536 else 4)
  elias_fano = len(_elias_fano_reference(kept, flat.size))
  return min([(bitmask, positions.POSITIONS_BITMASK), (index, positions.POSITIONS_INDICES),
              (elias_fano, positions.POSITIONS_ELIAS_FANO)])[::-1]


def test_positions_pick_the_smallest_encoding():
  base = _params()
  d = _trained_delta(base, 7)
  seen = set()
  for density in (1.0, 0.5, 0.2, 0.1, 0.05, 0.01):
    masks = sparsity.masks_for(d, density)
    c = ex.compress(d, masks, dl.DeltaConfig(bits=8))
    for path, m in jax.tree_util.tree_flatten_with_path(masks)[0]:
      rec = _get(c, path)
      encoding, nbytes = _expected_positions(m)
      assert (int(rec['encoding']), rec['positions'].nbytes) == (encoding, nbytes), (path, density)
      np.testing.assert_array_equal(positions.decode_positions(encoding, rec['positions'], np.size(m)),
                                    np.flatnonzero(np.asarray(m)))
      seen.add(encoding)
  assert seen == {positions.POSITIONS_BITMASK, positions.POSITIONS_INDICES, positions.POSITIONS_ELIAS_FANO}


def test_elias_fano_matches_a_bitwise_reference_and_round_trips():
  from hypothesis import given, settings  # pylint: disable=g-import-not-at-top
  from hypothesis import strategies as st  # pylint: disable=g-import-not-at-top

  @settings(max_examples=200, deadline=None)
  @given(size=st.integers(1, 3000), data=st.data())
  def check(size, data):
    kept = sorted(data.draw(st.sets(st.integers(0, size - 1), min_size=1, max_size=min(size, 200))))
    code = positions.elias_fano_encode(np.asarray(kept), size)
    assert code.dtype == np.uint8 and code.tobytes() == _elias_fano_reference(kept, size)
    np.testing.assert_array_equal(positions.elias_fano_decode(code, size), kept)

  check()


def test_a_sparse_large_leaf_costs_about_two_bits_more_than_log2_of_its_spacing_per_kept_entry():
  rng = np.random.default_rng(0)
  for density in (0.1, 0.05, 0.02):
    mask = rng.random(100_000) < density  # uint32 indices: 32 bits each; bitmask 1 / density bits each
    enc, pos = positions.encode_positions(mask)
    bits_per_kept = 8 * pos.nbytes / mask.sum()
    assert enc == positions.POSITIONS_ELIAS_FANO and bits_per_kept < 2.1 + np.log2(1 / density), (density, bits_per_kept)
    np.testing.assert_array_equal(positions.decode_positions(enc, pos, mask.size), np.flatnonzero(mask))


@pytest.mark.parametrize('kept,encoding', [(0, positions.POSITIONS_BITMASK), (1, positions.POSITIONS_INDICES),
                                           (2, positions.POSITIONS_BITMASK), (3, positions.POSITIONS_BITMASK)])
def test_positions_tie_and_empty_use_bitmask(kept, encoding):
  mask = np.zeros(16, bool)  # bitmask: 2 bytes; indices: one uint8 byte per kept entry
  mask[[3, 7, 11][:kept]] = True
  enc, pos = positions.encode_positions(mask)
  assert enc == encoding and pos.size > 0
  np.testing.assert_array_equal(positions.decode_positions(enc, pos, 16), np.flatnonzero(mask))


@pytest.mark.parametrize('size,dtype', [(256, np.uint8), (257, np.uint16), (65536, np.uint16),
                                        (65537, np.uint32)])
def test_index_dtype_is_smallest_sufficient(size, dtype):
  assert positions.index_dtype(size) == dtype
  mask = np.zeros(size, bool)
  mask[[0, size - 1]] = True  # the largest index must fit
  enc, pos = positions.encode_positions(mask)
  assert (enc, pos.nbytes) == _expected_positions(mask)
  if enc == positions.POSITIONS_INDICES:
    assert pos.dtype == dtype and int(pos[-1]) == size - 1
  np.testing.assert_array_equal(positions.decode_positions(enc, pos, size), [0, size - 1])
