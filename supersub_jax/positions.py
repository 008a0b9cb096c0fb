"""The flat positions of a sparse delta's kept entries, in three encodings: a packed bitmask, the indices in the
smallest unsigned dtype (``index_dtype``), or an Elias-Fano code (``elias_fano_encode``: about 2 + log2(size / k)
bits per kept entry); ``encode_positions`` picks the smallest, ``decode_positions`` reads any back. The exported
record's 'encoding' and 'positions' (``exported``'s docstring) are these. All numpy, on the host.
"""

from __future__ import annotations

import numpy as np

POSITIONS_BITMASK = 0
POSITIONS_INDICES = 1
POSITIONS_ELIAS_FANO = 2
ENCODINGS = (POSITIONS_BITMASK, POSITIONS_INDICES, POSITIONS_ELIAS_FANO)


def index_dtype(size: int) -> np.dtype:
  """The smallest unsigned dtype that holds the flat positions 0 .. size - 1."""
  for dt in (np.uint8, np.uint16, np.uint32):
    if size - 1 <= np.iinfo(dt).max:
      return np.dtype(dt)
  return np.dtype(np.uint64)


def _elias_fano_low_bits(size: int, k: int) -> int:
  return max(0, (size // k).bit_length() - 1)  # floor(log2(size / k))


def elias_fano_encode(indices: np.ndarray, size: int) -> np.ndarray:
  """Elias-Fano code (uint8) of k >= 1 strictly increasing integers in [0, size).

  With ``l = floor(log2(size / k))``: bytes 0-3 hold k (uint32, little-endian); then the high parts, ``i >> l``, as
  a bitmask of ``k + ((size - 1) >> l) + 1`` bits with bit ``(indices[j] >> l) + j`` set for each j (the high parts
  in unary), packed with ``np.packbits``; then the low ``l`` bits of each index, most significant first, packed the
  same way. Every part is read back without a sequential scan (``elias_fano_decode``).
  """
  indices = np.asarray(indices, np.int64).reshape(-1)
  k = indices.size
  l = _elias_fano_low_bits(size, k)
  high = np.zeros(k + ((size - 1) >> l) + 1, bool)
  high[(indices >> l) + np.arange(k)] = True
  low = (indices[:, None] >> np.arange(l - 1, -1, -1)) & 1
  return np.concatenate([np.asarray([k], '<u4').view(np.uint8), np.packbits(high), np.packbits(low.reshape(-1))])


def elias_fano_decode(code: np.ndarray, size: int) -> np.ndarray:
  """int64 indices from ``elias_fano_encode(indices, size)``; ValueError on a code whose length or count is wrong.
  Reads no more than ``code`` holds: k is checked against the code's length before anything is allocated."""
  code = np.asarray(code, np.uint8).reshape(-1)
  if code.size < 4:
    raise ValueError(f'an Elias-Fano code starts with 4 bytes of count, got {code.size} bytes.')
  k = int(code[:4].view('<u4')[0])
  if not 1 <= k <= size:
    raise ValueError(f'an Elias-Fano code counts {k} kept entries, outside [1, {size}].')
  l = _elias_fano_low_bits(size, k)
  num_high = k + ((size - 1) >> l) + 1
  high_bytes, low_bytes = (num_high + 7) // 8, (k * l + 7) // 8
  if code.size != 4 + high_bytes + low_bytes:
    raise ValueError(f'an Elias-Fano code of {k} entries below {size} is {4 + high_bytes + low_bytes} bytes, got '
                     f'{code.size}.')
  ones = np.flatnonzero(np.unpackbits(code[4:4 + high_bytes], count=num_high))
  if ones.size != k:
    raise ValueError(f'an Elias-Fano code of {k} entries has {ones.size} high-part bits set.')
  low = np.unpackbits(code[4 + high_bytes:], count=k * l).reshape(k, l).astype(np.int64)
  return ((ones - np.arange(k)) << l) | (low << np.arange(l - 1, -1, -1)).sum(axis=1)


def encode_positions(mask: np.ndarray) -> tuple[int, np.ndarray]:
  """(encoding, positions) for a non-empty bool mask: packed bitmask, indices or Elias-Fano, whichever is
  smallest; the bitmask, then indices, on a tie, and the bitmask when nothing is kept (no empty arrays)."""
  flat = np.asarray(mask, bool).reshape(-1)
  bitmask = np.packbits(flat)
  kept = np.flatnonzero(flat)
  if kept.size == 0:
    return POSITIONS_BITMASK, bitmask
  indices = kept.astype(index_dtype(flat.size))
  elias_fano = elias_fano_encode(kept, flat.size)
  candidates = [(bitmask.nbytes, POSITIONS_BITMASK, bitmask), (indices.nbytes, POSITIONS_INDICES, indices),
                (elias_fano.nbytes, POSITIONS_ELIAS_FANO, elias_fano)]
  _, encoding, positions = min(candidates, key=lambda c: (c[0], c[1]))
  return encoding, positions


def decode_positions(encoding: int, positions: np.ndarray, size: int) -> np.ndarray:
  """Ascending flat indices (int64) of kept entries, from ``encode_positions`` output."""
  if encoding == POSITIONS_BITMASK:
    return np.flatnonzero(np.unpackbits(positions, count=size))
  if encoding == POSITIONS_INDICES:
    return positions.astype(np.int64)
  if encoding == POSITIONS_ELIAS_FANO:
    return elias_fano_decode(positions, size)
  raise ValueError(f'unknown positions encoding {encoding}; expected one of {ENCODINGS} (bitmask, indices, '
                   'Elias-Fano).')
