"""Tests for supersub_jax.exported: the compressed record format, its validated decoder, byte counts."""

import io
import os
import tempfile

import jax
import numpy as np
import pytest

from delta_trees import assert_trees_bit_equal as _assert_trees_bit_equal
from delta_trees import bits_equal as _bits_equal
from delta_trees import flatten_compressed as _flatten_compressed
from delta_trees import params as _params
from delta_trees import get as _get
from delta_trees import trained_delta as _trained_delta
from supersub_jax import delta as dl
from supersub_jax import exported as ex
from supersub_jax import positions as positions_lib
from supersub_jax import quant
from supersub_jax import sparsity


# ----------------------------------------------------------------------------- compressed export


@pytest.mark.parametrize('density', [1.0, 0.5, 0.1])
@pytest.mark.parametrize('granularity', ['per_channel', 'per_tensor'])
@pytest.mark.parametrize('bits', [8, 4, 2, None])
def test_compressed_round_trip_bit_exact(bits, granularity, density):
  base = _params()
  cfg = dl.DeltaConfig(bits=bits, granularity=granularity, pattern=dl.KERNELS_AND_NORM)
  d = _trained_delta(base, 5, cfg.pattern)
  masks = sparsity.masks_for(d, density)
  c = ex.compress(d, masks, cfg)
  assert all(isinstance(v, np.ndarray) and v.size > 0 for v in jax.tree.leaves(c))
  assert 'head' not in c
  want = jax.jit(lambda b, d, m: dl.materialize(b, d, m, cfg))(base, d, masks)
  _assert_trees_bit_equal(ex.materialize_compressed(base, c), want)
  _assert_trees_bit_equal(dl.materialize(base, d, masks, cfg), want)  # eager == jit
  eff = dl.effective_delta(d, masks, cfg)
  dense = ex.decompress(c)
  for path, x in jax.tree_util.tree_flatten_with_path(eff)[0]:
    y = _get(dense, path)
    assert isinstance(y, np.ndarray) and _bits_equal(x, y)


@pytest.mark.parametrize('granularity', ['per_channel', 'per_tensor'])
@pytest.mark.parametrize('bits', [8, 4, 2])
def test_compressed_round_trip_random_masks(bits, granularity):
  # Random masks often prune a channel's largest entry, so scales taken on the unmasked
  # delta would differ: this checks that both paths scale the masked delta.
  base = _params()
  cfg = dl.DeltaConfig(bits=bits, granularity=granularity)
  d = _trained_delta(base, 4)
  r = np.random.RandomState(bits)
  masks = jax.tree.map(lambda x: r.rand(*x.shape) < 0.3, d)
  want = dl.materialize(base, d, masks, cfg)
  _assert_trees_bit_equal(ex.materialize_compressed(base, ex.compress(d, masks, cfg)), want)
  unmasked_scale = quant.absmax_scale(d['conv_init']['kernel'], bits,
                                      dl.channel_axis_for(4, cfg))
  masked_scale = ex.compress(d, masks, cfg)['conv_init']['kernel']['scale']
  assert not np.array_equal(unmasked_scale, masked_scale)


def test_compressed_fully_pruned_leaf_and_global_scope():
  base = _params()
  cfg = dl.DeltaConfig(bits=4, pattern=dl.KERNELS_AND_NORM)
  d = _trained_delta(base, 6, cfg.pattern)
  d['bn_init']['scale'] = d['bn_init']['scale'] * 1e-6  # loses every global slot
  masks = sparsity.masks_for(d, 0.1, 'global')
  assert not np.any(np.asarray(masks['bn_init']['scale']))
  c = ex.compress(d, masks, cfg)
  rec = c['bn_init']['scale']
  assert int(rec['encoding']) == positions_lib.POSITIONS_BITMASK and rec['values'].size == 1
  _assert_trees_bit_equal(ex.materialize_compressed(base, c), dl.materialize(base, d, masks, cfg))


def _elias_fano_record(positions):
  rec = dict(ex.compress({'w': np.ones(64, np.float32)}, {'w': np.eye(64, dtype=bool)[5]}, dl.DeltaConfig())['w'])
  rec['encoding'], rec['positions'] = np.asarray(positions_lib.POSITIONS_ELIAS_FANO, np.int32), np.asarray(positions, np.uint8)
  return rec


@pytest.mark.parametrize('positions,match', [
    ([1, 0, 0], 'starts with 4 bytes of count'),
    ([0, 0, 0, 0, 1], r'counts 0 kept entries, outside \[1, 64\]'),
    ([1, 0, 0, 0, 1], 'is 6 bytes, got 5'),                    # k=1, l=6: 2 high bits and 6 low bits, a byte each
    ([1, 0, 0, 0, 0b11000000, 0], 'has 2 high-part bits set'),
])
def test_decoder_refuses_malformed_elias_fano(positions, match):
  np.testing.assert_array_equal(ex.decode_record(_elias_fano_record(positions_lib.elias_fano_encode([5], 64)), 'w').indices,
                                [5])
  with pytest.raises(ValueError, match=f'w: .*{match}'):
    ex.decode_record(_elias_fano_record(positions), 'w')


def test_storage_accounting_matches_npz_bytes():
  base = _params()
  cfg = dl.DeltaConfig(bits=4)
  d = _trained_delta(base, 8)
  c = ex.compress(d, sparsity.masks_for(d, 0.1), cfg)
  flat = _flatten_compressed(c)
  buf = io.BytesIO()
  np.savez(buf, **flat)
  written = buf.getbuffer().nbytes
  stored = ex.compressed_nbytes(c)
  assert stored == sum(v.nbytes for v in flat.values())
  # npz overhead, measured at about 294 bytes per array here: the 128-byte .npy header plus
  # zip local and central entries (2 x name + about 90 bytes with zip64 extras), plus the
  # 22-byte end-of-directory record. Bound it by 128 + 124 + 2 x name per array, + 22.
  overhead = written - stored
  names = sum(2 * len(k + '.npy') for k in flat)
  assert 128 * len(flat) + names <= overhead <= (128 + 124) * len(flat) + names + 22, overhead
  # The point of the exercise: far smaller than the float32 delta.
  assert stored < dl.tree_nbytes(d) / 8


def test_compressed_survives_orbax_round_trip():
  ocp = pytest.importorskip('orbax.checkpoint')
  base = _params()
  cfg = dl.DeltaConfig(bits=2, pattern=dl.KERNELS_AND_NORM)
  d = _trained_delta(base, 9, cfg.pattern)
  masks = sparsity.masks_for(d, 0.05, 'global')
  c = ex.compress(d, masks, cfg)
  with tempfile.TemporaryDirectory() as tmp:
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(tmp, 'delta'), c)
    ckptr.wait_until_finished()
    restored = ckptr.restore(os.path.join(tmp, 'delta'))
  _assert_trees_bit_equal(ex.materialize_compressed(base, restored), dl.materialize(base, d, masks, cfg))


def test_materialize_compressed_rejects_foreign_leaves():
  base = _params()
  c = ex.compress(_trained_delta(base, 1), None, dl.DeltaConfig())
  c['not_in_base'] = c.pop('conv_init')
  with pytest.raises(ValueError, match='not_in_base'):
    ex.materialize_compressed(base, c)

def test_storage_report_alpha():
  rep = ex.storage_report(1000, [100, 50, 150, 200])
  assert rep['total_bytes'] == 1500 and rep['specialists_bytes'] == [100, 50, 150, 200]
  assert rep['factor'] == pytest.approx(1.5) and rep['num_specialists'] == 4 and rep['naive_factor'] == 5
  assert rep['alpha'] == pytest.approx(0.125)
  assert (rep['alpha'] * rep['num_specialists'] + 1) * rep['base_bytes'] == pytest.approx(rep['total_bytes'])
  with pytest.raises(ValueError, match='at least one specialist'):
    ex.storage_report(1000, [])
  with pytest.raises(ValueError, match='positive'):
    ex.storage_report(0, [1])

# ----------------------------------------------------------------------------- malformed input (fuzz)

_DTYPES = [np.uint8, np.uint16, np.int8, np.int32, np.int64, np.float32, np.float64, np.bool_]


def _array_strategy():
  from hypothesis import strategies as st  # pylint: disable=g-import-not-at-top
  from hypothesis.extra import numpy as hnp  # pylint: disable=g-import-not-at-top
  return st.one_of(
      hnp.arrays(st.sampled_from(_DTYPES), hnp.array_shapes(min_dims=0, max_dims=2, max_side=6)),
      st.integers(-3, 300).map(np.asarray), st.just('text'), st.just(None), st.lists(st.integers(0, 9), max_size=4))


def _valid_record(rng, bits):
  shape = (int(rng.integers(1, 5)), int(rng.integers(1, 9)))
  d = rng.normal(size=shape).astype(np.float32)
  m = rng.random(shape) < 0.3
  return ex.compress({'w': d}, {'w': m}, dl.DeltaConfig(bits=bits, granularity='per_channel'))['w']


def test_decoder_gives_a_clean_value_error_on_malformed_records():
  from hypothesis import given, settings  # pylint: disable=g-import-not-at-top
  from hypothesis import strategies as st  # pylint: disable=g-import-not-at-top
  keys = ('shape', 'bits', 'encoding', 'positions', 'values', 'scale')

  @settings(max_examples=300, deadline=None)
  @given(seed=st.integers(0, 2**16), bits=st.sampled_from([None, 8, 4, 2]),
         replace=st.dictionaries(st.sampled_from(keys), _array_strategy(), max_size=3),
         drop=st.lists(st.sampled_from(keys), max_size=2))
  def check(seed, bits, replace, drop):
    rec = dict(_valid_record(np.random.default_rng(seed), bits))
    rec.update(replace)
    for k in drop:
      rec.pop(k, None)
    try:
      decoded = ex.decode_record(rec, 'fuzzed')
    except ValueError:
      return
    # Accepted: then it is self-consistent, and decompress agrees with it.
    size = int(np.prod(decoded.shape))
    assert decoded.indices.size <= size and (decoded.indices < size).all()
    dense = ex.decompress({'w': rec})['w']
    assert dense.shape == decoded.shape and np.isfinite(dense).all()

  check()


def test_decoder_refuses_a_huge_claimed_shape_without_allocating_it():
  rec = dict(_valid_record(np.random.default_rng(0), 8))
  rec['shape'] = np.asarray([2**20, 2**20], np.int32)
  with pytest.raises(ValueError, match='more than'):
    ex.decode_record(rec)
  rec['shape'] = np.asarray([4096, 4096], np.int32)  # allowed size, but the bitmask does not cover it
  with pytest.raises(ValueError, match='a bitmask of 16777216 entries is 2097152 uint8 bytes'):
    ex.decode_record(rec)


def test_nested_junk_in_a_compressed_tree_is_named():
  good = _valid_record(np.random.default_rng(1), 4)
  for junk, match in (([good], 'is a list'), ({'a': 3}, "'a' is neither a record"),
                      ({'a': {'b': {**good, 'bits': np.asarray(3)}}}, "a/b: 'bits' must be one integer")):
    with pytest.raises(ValueError, match=match):
      ex.decompress(junk)


# ----------------------------------------------------------------------------- the spec: what a specialist is


def test_export_describes_its_cut_subclasses_and_the_kept_fraction_in_json():
  from supersub_jax import cut as cut_lib  # pylint: disable=g-import-not-at-top
  delta = {'conv': {'kernel': np.ones((3, 3, 2, 4), np.float32)}, 'bn': {'scale': np.ones(4, np.float32)}}
  masks = {'conv': {'kernel': np.arange(72).reshape(3, 3, 2, 4) < 18}, 'bn': {'scale': np.ones(4, bool)}}
  head = {'kernel': np.zeros((4, 6), np.float32), 'bias': np.zeros(6, np.float32)}
  cfg = dl.DeltaConfig(bits=4, granularity='per_channel', pattern=dl.KERNELS_AND_NORM)
  out = ex.export(delta, masks, head, {}, cfg, 3, cut=cut_lib.Cut('stage2'))
  spec = out['spec']
  assert spec == {'version': ex.SPEC_VERSION, 'cut': 'stage2', 'num_subclasses': 3,
                  'delta': {'bits': 4, 'granularity': 'per_channel', 'pattern': dl.KERNELS_AND_NORM,
                            'exclude': dl.EXCLUDE_HEAD, 'density': (18 + 4) / (72 + 4)},
                  'dustbin': None}
  import json  # pylint: disable=g-import-not-at-top
  assert json.loads(json.dumps(spec)) == spec
  assert out['head']['kernel'].shape == (4, 3)
  assert ex.cut_of([out, out]) == cut_lib.Cut('stage2')


def test_cut_of_refuses_specialists_without_a_spec_or_with_two_cuts():
  with pytest.raises(ValueError, match="specialist 1 has no 'spec'"):
    ex.cut_of([{'spec': {'cut': 'stem'}}, {}])
  with pytest.raises(ValueError, match='different layers'):
    ex.cut_of([{'spec': {'cut': 'stem'}}, {'spec': {'cut': 'stage2'}}])


def test_the_dustbin_correction_is_even_odds_from_the_training_mix_whatever_the_stored_value():
  # log((1 - f) / f): 0 at the default half-and-half mix; a spec's stored (older, prior-based) value is not read.
  assert ex.dustbin_logit_correction({'fraction': 0.5, 'logit_correction': 2.9}) == 0.0
  assert ex.dustbin_logit_correction({'fraction': 0.2}) == pytest.approx(np.log(4.0))
  with pytest.raises(ValueError, match='fraction'):
    ex.dustbin_logit_correction({'fraction': 1.0})
