"""Tests for supersub_jax.bank: N exported specialists stacked in their compact encodings, and the SuperSub state."""

import jax
import numpy as np
import pytest

from specialist_worlds import export as _export
from specialist_worlds import world as _world
from supersub_jax import bank as bank_lib
from supersub_jax import cut as cut_lib
from supersub_jax import delta as dl
from supersub_jax import exported as exported_lib
from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax import positions as positions_lib
from supersub_jax import quant

SIZES = (2, 3, 4)


def _flat(tree):
  return {dl.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_bank_keeps_every_encoding_compact_and_the_heads_side_by_side():
  _, _, _, gen, exported = _world(SIZES)
  recs = [rec for ex in exported for _, rec in exported_lib.walk_records(ex['delta'])]
  assert {int(r['encoding']) for r in recs} == {positions_lib.POSITIONS_BITMASK, positions_lib.POSITIONS_INDICES,
                                                positions_lib.POSITIONS_ELIAS_FANO}
  assert {int(r['bits']) for r in recs} == {0, 4, 8}
  base = cut_lib.split_head(gen['params'])[0]
  bank = bank_lib.make_bank(exported, base)
  shapes = {p: np.shape(x) for p, x in _flat(base).items()}
  assert set(bank.deltas) <= set(shapes)
  # Norm leaves only in specialist 1 (kernels_and_norm, int8 per tensor): packed codes, one scale, counts 0 for the
  # others.
  norm = bank.deltas['bn_init/scale']
  assert norm['codes'].dtype == np.uint8 and norm['scale'].shape == (3, 1)
  assert norm['count'][0] == norm['count'][2] == 0 < norm['count'][1]
  # Kernels: specialist 2 is unquantized, so kernels are held as float values for all three.
  kernel = bank.deltas['conv_init/kernel']
  assert 'values' in kernel and 'codes' not in kernel and kernel['values'].dtype == np.float32
  for path, rec in bank.deltas.items():
    size = int(np.prod(shapes[path]))
    positions = rec.get('indices', rec.get('bitmask'))
    assert positions.shape[0] == 3 and positions.dtype in (np.uint8, np.uint16)
    # The smaller of a bitmask and padded indices: never more than the bitmask's bytes.
    assert positions.nbytes <= 3 * ((size + 7) // 8), path
    for k, ex in enumerate(exported):
      stored = _flat_record(ex['delta'], path)
      assert rec['count'][k] == (0 if stored is None else exported_lib.decode_record(stored).indices.size)
  # Heads side by side: kernel [D, 2 + 3 + 4], offsets 0, 2, 5.
  assert bank.head['kernel'].shape == (32, 9) and bank.head['bias'].shape == (9,)
  np.testing.assert_array_equal(bank.head['offset'], [0, 2, 5])
  np.testing.assert_array_equal(bank.head['kernel'][:, 2:5], exported[1]['head']['kernel'])
  np.testing.assert_array_equal(bank.num_subclasses, SIZES)


def _flat_record(compressed, path):
  """The record at ``path``, or None where this specialist has no delta on it."""
  for keys, rec in exported_lib.walk_records(compressed):
    if '/'.join(keys) == path:
      return rec
  return None


@pytest.mark.parametrize('bits', [8, 4, 2])
def test_bank_bytes_stay_within_1_2x_of_the_exported_bytes_with_positions_as_bitmasks(bits):
  # Same settings for all specialists (the trained case): the bank adds padding to the largest per leaf, and holds
  # Elias-Fano positions as a bitmask or indices (at most the bitmask).
  _, _, _, gen, _ = _world(SIZES, mixed=False)
  base = cut_lib.split_head(gen['params'])[0]
  exported = [_export(base, 10 + k, bits=bits, granularity='per_channel', pattern=dl.KERNELS, density=0.1,
                      n_sub=n, d_feat=32, stats=gen['batch_stats']) for k, n in enumerate(SIZES)]
  bank = bank_lib.make_bank(exported, base)
  stored = sum(sum(exported_lib.exported_nbytes(ex).values()) for ex in exported)
  decoded = [rec for ex in exported for _, rec in exported_lib.walk_records(ex['delta'])
             if int(rec['encoding']) == positions_lib.POSITIONS_ELIAS_FANO]
  as_bitmasks = sum(-(-int(np.prod(rec['shape'])) // 8) - rec['positions'].nbytes for rec in decoded)
  assert decoded and as_bitmasks > 0
  assert bank_lib.nbytes(bank) <= 1.2 * (stored + as_bitmasks), (bank_lib.nbytes(bank), stored, as_bitmasks)
  # Packed codes stay packed: the code bytes are the exported ones, padded to the largest specialist.
  for path, rec in bank.deltas.items():
    assert rec['codes'].shape[1] == max(quant.packed_len(int(c), bits) for c in rec['count']), path


def test_make_bank_rejects_mismatches():
  hierarchy, _, _, gen, exported = _world(SIZES)
  base = cut_lib.split_head(gen['params'])[0]
  bad_base = {**base, 'conv_init': {'kernel': np.zeros((3, 3, 3, 9), np.float32)}}
  with pytest.raises(ValueError, match='conv_init/kernel.*shape'):
    bank_lib.make_bank(exported, bad_base)
  with pytest.raises(ValueError, match="'head'"):
    bank_lib.make_bank(exported, gen['params'])
  with pytest.raises(ValueError, match='specialist 1 has 3 subclasses but superclass 1 has 4'):
    bank_lib.build_supersub(gen, exported, hierarchy_lib.synthetic((2, 4, 3)))
  with pytest.raises(ValueError, match='3 outputs but the hierarchy has 2'):
    bank_lib.build_supersub(gen, exported[:2], hierarchy_lib.synthetic((2, 3)))
  with pytest.raises(ValueError, match='lacks'):
    bank_lib.make_bank([{'delta': {}}], base)
  state = bank_lib.build_supersub(gen, exported, hierarchy)
  assert state.hierarchy.max_subclasses == 4 and set(state.base) == set(base)
