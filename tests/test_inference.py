"""Tests for supersub_jax.inference: the specialist bank, grouped routing, and two-stage predictions.

Tiny shapes throughout (resnet_tiny on 8x8 images); the ResNet state is built once per module and every
compiled function is reused, since XLA compiles dominate the runtime on CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supersub_jax import delta as dl
from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax import inference as inf
from supersub_jax import models

IMAGE_SHAPE = (8, 8, 3)
SIZES = (2, 3, 4)  # N = 3 superclasses, S = 4


def _bits_equal(a, b) -> bool:
  a, b = np.asarray(a), np.asarray(b)
  return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _assert_trees_bit_equal(a, b):
  fa, fb = inf._flat_leaves(a), inf._flat_leaves(b)  # pylint: disable=protected-access
  assert sorted(fa) == sorted(fb)
  for path in fa:
    assert _bits_equal(fa[path], fb[path]), path


def _random_variables(model, seed):
  """Random {'params', 'batch_stats'} for ``model`` without compiling its init (slow on a busy CPU): He-scaled
  kernels, BN scales near 1, running statistics unlike the init's (mean 0, var 1)."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct((1,) + IMAGE_SHAPE, jnp.float32))
  r = np.random.RandomState(seed)

  def param(path, x):
    shape, name = x.shape, path[-1].key
    if name == 'kernel':
      return np.float32(r.randn(*shape) * np.sqrt(2.0 / np.prod(shape[:-1])))
    return np.float32((name == 'scale') + r.randn(*shape) * 0.1)

  return {'params': jax.tree_util.tree_map_with_path(param, shapes['params']),
          'batch_stats': _random_stats(shapes['batch_stats'], seed + 1)}


def _random_stats(stats, seed):
  """Running statistics unlike the init's (mean 0, var 1), so a specialist's own statistics matter."""
  r = np.random.RandomState(seed)

  def leaf(path, x):
    shape = np.shape(x)
    return np.float32(r.rand(*shape) + 0.5) if path[-1].key == 'var' else np.float32(r.randn(*shape) * 0.1)

  return jax.tree_util.tree_map_with_path(leaf, stats)


def _export(base, seed, *, bits, granularity, pattern, density, n_sub, d_feat, stats, empty_leaf=None):
  """An ``specialists.export``-like dict built by hand: random delta, random mask, random head."""
  r = np.random.RandomState(seed)
  cfg = dl.DeltaConfig(bits=bits, granularity=granularity, pattern=pattern)
  delta = jax.tree.map(lambda z: np.float32(r.randn(*z.shape) * 0.05), dl.init_delta(base, pattern))
  masks = jax.tree.map(lambda d: r.rand(*d.shape) < density, delta)
  if empty_leaf is not None:  # a selected leaf with nothing kept: a record with k = 0
    node = functools.reduce(lambda t, key: t[key], empty_leaf[:-1], masks)
    node[empty_leaf[-1]] = np.zeros_like(node[empty_leaf[-1]])
  return {'delta': dl.compress(delta, masks, cfg),
          'head': {'kernel': np.float32(r.randn(d_feat, n_sub)), 'bias': np.float32(r.randn(n_sub) * 0.1)},
          'batch_stats': _random_stats(stats, seed + 7)}


def _world(sizes, seed=0, mixed=True):
  """(hierarchy, generalist model, specialist model, generalist variables, exported specialists)."""
  hierarchy = hierarchy_lib.synthetic(sizes)
  gm = models.create_model('resnet_tiny', hierarchy.num_superclasses, stem='small')
  sm = models.create_model('resnet_tiny', hierarchy.max_subclasses, stem='small')
  gen = _random_variables(gm, seed)
  base = inf.backbone(gen['params'])
  d_feat = gen['params']['head']['kernel'].shape[0]
  kinds = [dict(bits=4, granularity='per_channel', pattern=dl.KERNELS, density=0.3),
           dict(bits=8, granularity='per_tensor', pattern=dl.KERNELS_AND_NORM, density=0.3),
           dict(bits=None, granularity='per_channel', pattern=dl.KERNELS, density=0.05,
                empty_leaf=('stage1_block1', 'Conv_1', 'kernel'))]
  if not mixed:
    kinds = [dict(bits=8, granularity='per_channel', pattern=dl.KERNELS, density=0.3)]
  exported = [_export(base, 100 + k, n_sub=n, d_feat=d_feat, stats=gen['batch_stats'],
                      **kinds[k % len(kinds)]) for k, n in enumerate(sizes)]
  return hierarchy, gm, sm, gen, exported


@pytest.fixture(scope='module')
def world():
  hierarchy, gm, sm, gen, exported = _world(SIZES)
  # Signed zeros in the base, inside and outside the masks: base + 0.0 must reproduce materialize_compressed.
  kernel = gen['params']['stage2_block1']['Conv_0']['kernel']
  kernel.reshape(-1)[:64] = -0.0
  images = np.float32(np.random.RandomState(3).randn(10, *IMAGE_SHAPE))
  _, features = jax.jit(functools.partial(gm.apply, train=False, return_features=True))(gen, images)
  features = np.asarray(features)
  # Centre the generalist's logits on this batch so that its images go to several specialists.
  head = gen['params']['head']
  head['kernel'] = head['kernel'] * np.float32(10.0 / np.std(features))
  head['bias'] = np.float32(-features.mean(0) @ head['kernel'])
  state = inf.build_supersub(gen, exported, hierarchy)
  return {'hierarchy': hierarchy, 'gm': gm, 'sm': sm, 'gen': gen, 'exported': exported, 'state': state,
          'base': inf.backbone(gen['params']), 'images': images,
          'gen_logits': features @ head['kernel'] + head['bias']}


def _padded_head(ex, s):
  kernel, bias = ex['head']['kernel'], ex['head']['bias']
  return {'kernel': np.pad(kernel, ((0, 0), (0, s - kernel.shape[1]))), 'bias': np.pad(bias, (0, s - bias.shape[0]))}


# ----------------------------------------------------------------------------------------------------------------------
# Bank


def test_bank_covers_all_encodings_and_stays_sparse(world):
  walk = dl.walk_records
  recs = [rec for ex in world['exported'] for _, rec in walk(ex['delta'])]
  assert {int(r['encoding']) for r in recs} == {dl.POSITIONS_BITMASK, dl.POSITIONS_INDICES}
  assert {int(r['bits']) for r in recs} == {0, 4, 8}
  bank = world['state'].bank
  base = inf._flat_leaves(world['base'])  # pylint: disable=protected-access
  assert set(bank.deltas) <= set(base)
  # Norm leaves only in specialist 1 (kernels_and_norm, int8): codes + one per-tensor scale.
  norm = bank.deltas['bn_init/scale']
  assert norm['codes'].dtype == jnp.int8 and norm['scale'].shape == (3, 1)
  # Kernels: specialist 2 is unquantized, so kernels are held as float values.
  kernel = bank.deltas['conv_init/kernel']
  assert set(kernel) == {'indices', 'values'} and kernel['indices'].dtype == jnp.int32
  for path, rec in bank.deltas.items():
    assert rec['indices'].shape[0] == 3
    if base[path].size >= 64:
      assert rec['indices'].shape[1] <= 0.5 * base[path].size, path  # sparse: ~30% kept at most
  assert bank.head['kernel'].shape == (3, 32, 4) and bank.head['bias'].shape == (3, 4)
  dense = 3 * sum(x.nbytes for x in base.values() for x in jax.tree.leaves(x))
  assert inf.bank_nbytes(bank) < dense
  np.testing.assert_array_equal(bank.num_subclasses, SIZES)


def test_specialist_variables_bit_equal_to_materialize_compressed(world):
  state, base = world['state'], world['base']
  fn = jax.jit(inf.specialist_variables)
  for k, ex in enumerate(world['exported']):
    got = fn(state.bank, base, jnp.int32(k))
    want = {**dl.materialize_compressed(base, ex['delta']), 'head': _padded_head(ex, max(SIZES))}
    _assert_trees_bit_equal(got['params'], want)
    _assert_trees_bit_equal(got['batch_stats'], ex['batch_stats'])
    if k != 1:  # only specialist 1 has norm deltas: base + 0.0 elsewhere is the base itself
      assert _bits_equal(got['params']['stage3_block1']['BatchNorm_0']['bias'],
                         base['stage3_block1']['BatchNorm_0']['bias'])
  # Without the unquantized specialist, kernels stay int8 codes with per-channel scales, dequantized on device.
  bank = inf.make_bank(world['exported'][:2], base, max(SIZES))
  assert bank.deltas['conv_init/kernel']['codes'].dtype == jnp.int8
  assert bank.deltas['conv_init/kernel']['scale'].shape == (2, 8)
  for k, ex in enumerate(world['exported'][:2]):
    want = {**dl.materialize_compressed(base, ex['delta']), 'head': _padded_head(ex, max(SIZES))}
    _assert_trees_bit_equal(fn(bank, base, jnp.int32(k))['params'], want)
  # The fixture's signed zeros were exercised: some became +0.0 (base + 0.0), as in materialize_compressed.
  zeros = np.asarray(base['stage2_block1']['Conv_0']['kernel']).reshape(-1)[:64]
  got = np.asarray(fn(state.bank, base, jnp.int32(0))['params']['stage2_block1']['Conv_0']['kernel']).reshape(-1)
  assert np.signbit(zeros).all() and (got[:64] == 0).any() and not np.signbit(got[:64][got[:64] == 0]).all()


def test_make_bank_rejects_mismatches(world):
  base, exported = world['base'], world['exported']
  bad_base = {**base, 'conv_init': {'kernel': np.zeros((3, 3, 3, 9), np.float32)}}
  with pytest.raises(ValueError, match='conv_init/kernel.*shape'):
    inf.make_bank(exported, bad_base, 4)
  with pytest.raises(ValueError, match='subclasses, outside'):
    inf.make_bank(exported, base, 3)
  with pytest.raises(ValueError, match="'head'"):
    inf.make_bank(exported, world['gen']['params'], 4)
  with pytest.raises(ValueError, match='specialist 1 has 3 subclasses but superclass 1 has 4'):
    inf.build_supersub(world['gen'], exported, hierarchy_lib.synthetic((2, 4, 3)))
  with pytest.raises(ValueError, match='3 outputs but the hierarchy has 2'):
    inf.build_supersub(world['gen'], exported[:2], hierarchy_lib.synthetic((2, 3)))


# ----------------------------------------------------------------------------------------------------------------------
# Routing core


def _id_logits_fn(k, chunk):
  """Logits that spell out who produced them: [k, image id, 1000 k + id]."""
  ids = chunk[:, 0]
  kf = jnp.full_like(ids, k.astype(jnp.float32))
  return jnp.stack([kf, ids, 1000.0 * kf + ids], axis=-1)


@functools.lru_cache(maxsize=None)
def _jitted_route(num_superclasses, chunk_size):
  return jax.jit(functools.partial(inf.route, specialist_logits_fn=_id_logits_fn,
                                   num_superclasses=num_superclasses, chunk_size=chunk_size))


def _check_routed(out, routes):
  out = np.asarray(out)
  for i, r in enumerate(routes):
    if r < 0:
      assert (out[i] == inf.NEG_LOGIT).all(), (i, out[i])
    else:
      np.testing.assert_array_equal(out[i], [r, i, 1000 * r + i])


@settings(max_examples=20, deadline=None)
@given(data=st.data(), b=st.sampled_from([1, 5, 12]), n=st.sampled_from([1, 3]),
       chunk=st.sampled_from([1, 3, 4, 16]))
def test_route_gives_every_image_its_specialists_output(data, b, n, chunk):
  routes = np.asarray(data.draw(st.lists(st.integers(-1, n - 1), min_size=b, max_size=b)), np.int32)
  images = np.arange(b, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
  out = _jitted_route(n, chunk)(images, routes)
  assert out.shape == (b, 3) and out.dtype == jnp.float32
  _check_routed(out, routes)


def test_route_visits_each_group_in_chunks_only():
  calls = []

  def fn(k, chunk):
    jax.debug.callback(lambda k: calls.append(int(k)), k)
    return _id_logits_fn(k, chunk)

  routes = np.asarray([2, 0, 2, -1, 2, 2, 0, 2, -1, 2, 2], np.int32)  # group sizes 2, 0, 7; 2 skipped
  images = np.arange(routes.size, dtype=np.float32)[:, None]
  out = jax.jit(functools.partial(inf.route, specialist_logits_fn=fn, num_superclasses=4, chunk_size=3))(
      images, routes)
  jax.effects_barrier()
  _check_routed(out, routes)
  # ceil(2/3) + ceil(7/3) = 1 + 3 chunks; empty groups 1 and 3 and skipped images cost nothing.
  assert sorted(calls) == [0, 2, 2, 2]


def test_route_rejects_bad_arguments():
  images = np.zeros((4, 1), np.float32)
  with pytest.raises(ValueError, match='chunk_size'):
    inf.route(images, np.zeros(4, np.int32), _id_logits_fn, num_superclasses=2, chunk_size=0)
  with pytest.raises(ValueError, match='routes must be'):
    inf.route(images, np.zeros(3, np.int32), _id_logits_fn, num_superclasses=2, chunk_size=2)
  with pytest.raises(ValueError, match=r'\[chunk_size=2, S\]'):
    inf.route(images, np.zeros(4, np.int32), lambda k, x: x[:1], num_superclasses=2, chunk_size=2)


# ----------------------------------------------------------------------------------------------------------------------
# Decision rules on hand-built outputs

# 3 superclasses of sizes 2, 3, 2 (S = 3): labels 0-1 | 2-4 | 5-6.
_HAND_SIZES = (2, 3, 2)
_LOG = np.log
# Generalist probabilities per image.
_P_SUPER = np.asarray([[0.90, 0.05, 0.05],   # 0: sure of superclass 0
                       [0.05, 0.50, 0.45],   # 1: unsure, wrong first (1), right second (2)
                       [0.02, 0.03, 0.95],   # 2: sure of superclass 2
                       [0.40, 0.55, 0.05]],  # 3: unsure, right first (1)
                      np.float32)
_TRUE_SUPER = np.asarray([0, 2, 2, 1])
_TRUE_LABEL = np.asarray([1, 5, 6, 3])
# Specialist k's local logits for image i: T[k, i]. Column 2 of superclasses 0 and 2 is padding: a huge logit
# there must be ignored.
_T = np.zeros((3, 4, 3), np.float32)
_T[0, :, 2] = 100.0
_T[2, :, 2] = 100.0
_T[0, 0] = [0.0, 5.0, 100.0]    # image 0 -> local 1 = label 1 (right)
_T[1, 1] = [0.0, 0.0, 0.0]      # image 1, specialist 1: uniform 1/3
_T[2, 1] = [8.0, 0.0, 100.0]    # image 1, specialist 2: local 0 = label 5 (right), p ~ 1
_T[2, 2] = [0.0, 1.0, 100.0]    # image 2 -> local 1 = label 6 (right)
_T[1, 3] = [0.0, 8.0, 0.0]      # image 3, specialist 1: local 1 = label 3 (right), p ~ 1
_T[0, 3] = [0.4, 0.0, 100.0]    # image 3, specialist 0: local 0, p ~ 0.6
_T[1, 0] = [3.0, 0.0, 0.0]      # oracle-only rows: specialist 1 on image 0 etc. are never the truth
_T[0, 2] = [0.0, 3.0, 100.0]


def _hand_fn(k, chunk):
  return jnp.asarray(_T)[k][chunk[:, 0].astype(jnp.int32)]


@pytest.fixture(scope='module')
def hand():
  h = hierarchy_lib.synthetic(_HAND_SIZES)
  return {'h': inf.HierarchyArrays.from_hierarchy(h), 'images': np.arange(4, dtype=np.float32)[:, None],
          'logits': _LOG(_P_SUPER)}


def test_top1_on_hand_built_case(hand):
  out = jax.jit(lambda lg, x: inf.decide_top1(lg, x, _hand_fn, hand['h'], chunk_size=2))(hand['logits'],
                                                                                          hand['images'])
  np.testing.assert_array_equal(out['superclass'], [0, 1, 2, 1])
  np.testing.assert_array_equal(out['local'], [0 + 1, 0, 1, 1])
  np.testing.assert_array_equal(out['label'], [1, 2, 6, 3])  # image 1 wrong: its superclass is wrong
  np.testing.assert_allclose(out['superclass_probs'], _P_SUPER, rtol=1e-6)
  np.testing.assert_allclose(out['prob'][1], 0.5 / 3, rtol=1e-5)
  np.testing.assert_allclose(out['prob'][0], 0.9 * jax.nn.softmax(jnp.asarray([0.0, 5.0]))[1], rtol=1e-5)


def test_oracle_equals_specialists_own_accuracy(hand):
  oracle = jax.jit(lambda s, x: inf.decide_oracle(s, x, _hand_fn, hand['h'], chunk_size=3))
  out = oracle(_TRUE_SUPER, hand['images'])
  sizes = np.asarray(_HAND_SIZES)
  own = [int(np.argmax(_T[s, i, :sizes[s]])) for i, s in enumerate(_TRUE_SUPER)]  # each specialist alone
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  np.testing.assert_array_equal(out['local'], own)
  np.testing.assert_array_equal(out['label'], offsets[_TRUE_SUPER] + own)
  assert np.mean(np.asarray(out['label']) == _TRUE_LABEL) == np.mean(offsets[_TRUE_SUPER] + own == _TRUE_LABEL)
  np.testing.assert_array_equal(out['label'], _TRUE_LABEL)
  # Another ground truth under which two specialists are wrong: the oracle's accuracy is still theirs (0.5).
  truth_super, truth_label = np.asarray([1, 2, 0, 1]), np.asarray([3, 5, 0, 3])
  out = oracle(truth_super, hand['images'])
  own = [int(np.argmax(_T[s, i, :sizes[s]])) for i, s in enumerate(truth_super)]
  assert np.mean(np.asarray(out['label']) == truth_label) == np.mean(offsets[truth_super] + own == truth_label) == 0.5


def test_top2_fixes_the_wrong_first_specialist(hand):
  top2 = jax.jit(lambda lg, x, t: inf.decide_top2(lg, x, _hand_fn, hand['h'], chunk_size=2, threshold=t))
  top1 = jax.jit(lambda lg, x: inf.decide_top1(lg, x, _hand_fn, hand['h'], chunk_size=2))(hand['logits'],
                                                                                           hand['images'])
  out = top2(hand['logits'], hand['images'], 0.7)
  np.testing.assert_array_equal(out['second'], [False, True, False, True])
  assert int(out['num_second']) == 2
  np.testing.assert_array_equal(out['used_second'], [False, True, False, False])
  np.testing.assert_array_equal(out['superclass'], [0, 2, 2, 1])
  np.testing.assert_array_equal(out['label'], _TRUE_LABEL)
  np.testing.assert_allclose(out['prob'][1], 0.45 * jax.nn.softmax(jnp.asarray([8.0, 0.0]))[0], rtol=1e-5)
  acc1 = np.mean(np.asarray(top1['label']) == _TRUE_LABEL)
  acc2 = np.mean(np.asarray(out['label']) == _TRUE_LABEL)
  assert acc1 == 0.75 and acc2 == 1.0
  # threshold 0: nobody asks, top-1 exactly; threshold > 1: everybody asks, but the sure ones keep their answer.
  none = top2(hand['logits'], hand['images'], 0.0)
  assert int(none['num_second']) == 0
  for key in ('superclass', 'local', 'label', 'prob'):
    np.testing.assert_array_equal(none[key], top1[key])
  everyone = top2(hand['logits'], hand['images'], 1.1)
  assert int(everyone['num_second']) == 4
  np.testing.assert_array_equal(everyone['label'], _TRUE_LABEL)


# ----------------------------------------------------------------------------------------------------------------------
# Predictions with the ResNets


@functools.lru_cache(maxsize=None)
def _jitted_apply(model):
  return jax.jit(functools.partial(model.apply, train=False))


def _naive(world, images, superclass):
  """Per-image Python loop applying the routed specialist's materialize_compressed params."""
  apply = _jitted_apply(world['sm'])
  h, s = world['hierarchy'], max(SIZES)
  locals_, probs = [], []
  for i, k in enumerate(superclass):
    ex = world['exported'][k]
    params = {**dl.materialize_compressed(world['base'], ex['delta']), 'head': _padded_head(ex, s)}
    logits = np.asarray(apply({'params': params, 'batch_stats': ex['batch_stats']}, images[i:i + 1]))[0]
    logits = np.where(h.local_valid[k], logits, -np.inf)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    locals_.append(int(np.argmax(p)))
    probs.append(float(p.max()))
  labels = h.local_to_label[np.asarray(superclass), np.asarray(locals_)]
  return np.asarray(locals_), labels, np.asarray(probs)


def test_predict_equals_naive_reference(world):
  images, gen_logits = world['images'], world['gen_logits']
  kw = dict(generalist_model=world['gm'], specialist_model=world['sm'], chunk_size=4)
  out = inf.predict(world['state'], images, **kw)
  superclass = np.argmax(gen_logits, -1)
  assert len(set(superclass.tolist())) >= 2, 'the fixture should route to several specialists'
  np.testing.assert_array_equal(out['superclass'], superclass)
  p_super = np.asarray(jax.nn.softmax(gen_logits))
  np.testing.assert_allclose(out['superclass_probs'], p_super, rtol=1e-5, atol=1e-7)
  local, label, p_local = _naive(world, images, superclass)
  np.testing.assert_array_equal(out['local'], local)
  np.testing.assert_array_equal(out['label'], label)
  np.testing.assert_allclose(out['prob'], p_super[np.arange(10), superclass] * p_local, rtol=1e-4)


def test_predict_oracle_equals_naive_reference(world):
  images = world['images']
  superclass = np.asarray([2, 0, 1, 2, 2, 0, 1, 1, 2, 0], np.int32)
  out = inf.predict_oracle(world['state'], images, superclass, specialist_model=world['sm'], chunk_size=2)
  local, label, p_local = _naive(world, images, superclass)
  np.testing.assert_array_equal(out['local'], local)
  np.testing.assert_array_equal(out['label'], label)
  np.testing.assert_allclose(out['prob'], p_local, rtol=1e-4)


def test_predict_top2_runs_and_counts_second_passes(world):
  images = world['images']
  kw = dict(generalist_model=world['gm'], specialist_model=world['sm'], chunk_size=4)
  top1 = inf.predict(world['state'], images, **kw)
  out = inf.predict_top2(world['state'], images, threshold=1.1, **kw)  # everyone asks a second specialist
  assert int(out['num_second']) == 10
  # The answer is whichever of the two has the larger p(super) * max p(sub | super); never a lower score.
  assert (np.asarray(out['prob']) >= np.asarray(top1['prob']) * (1 - 1e-6)).all()
  np.testing.assert_array_equal(np.asarray(out['used_second']), np.asarray(out['superclass']) != top1['superclass'])


def test_predict_temp_memory_does_not_grow_like_n_dense_specialists():
  temps, dense_bytes = {}, None
  batch = jax.ShapeDtypeStruct((8,) + IMAGE_SHAPE, jnp.float32)
  for n in (2, 6):
    hierarchy, gm, sm, gen, exported = _world((2,) * n, mixed=False)
    state = inf.build_supersub(gen, exported, hierarchy)
    compiled = inf.predict.lower(state, batch, generalist_model=gm, specialist_model=sm, chunk_size=4).compile()
    analysis = compiled.memory_analysis()
    assert analysis is not None, 'this backend reports no memory analysis'
    temps[n] = analysis.temp_size_in_bytes
    dense_bytes = dl.tree_nbytes(inf.backbone(gen['params']))
  # N dense specialists would add at least 4 * dense_bytes of temporaries from N = 2 to N = 6 (running all N
  # specialists under vmap adds ~8x that here); one transient specialist adds nothing that depends on N.
  assert abs(temps[6] - temps[2]) < 0.1 * 4 * dense_bytes, (temps, dense_bytes)
