"""Tests for supersub_jax.inference: one specialist unpacked from the bank, grouped routing, two-stage predictions.

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

from delta_trees import assert_trees_bit_equal as _assert_trees_bit_equal
from delta_trees import bits_equal as _bits_equal
from specialist_worlds import IMAGE_SHAPE
from specialist_worlds import world as _world
from supersub_jax import bank as bank_lib
from supersub_jax import cut as cut_lib
from supersub_jax import delta as dl
from supersub_jax import exported as exported_lib
from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax import inference as inf

SIZES = (2, 3, 4)  # N = 3 superclasses, S = 4


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
  state = bank_lib.build_supersub(gen, exported, hierarchy)
  return {'hierarchy': hierarchy, 'gm': gm, 'sm': sm, 'gen': gen, 'exported': exported, 'state': state,
          'base': cut_lib.split_head(gen['params'])[0], 'images': images,
          'gen_logits': features @ head['kernel'] + head['bias']}


def _padded_head(ex, s):
  kernel, bias = ex['head']['kernel'], ex['head']['bias']
  return {'kernel': np.pad(kernel, ((0, 0), (0, s - kernel.shape[1]))), 'bias': np.pad(bias, (0, s - bias.shape[0]))}


# ----------------------------------------------------------------------------------------------------------------------
# One specialist from the bank


def test_specialist_variables_bit_equal_to_materialize_compressed(world):
  state, base = world['state'], world['base']
  fn = jax.jit(functools.partial(inf.specialist_variables, max_subclasses=max(SIZES)))
  for k, ex in enumerate(world['exported']):
    got = fn(state.bank, base, jnp.int32(k))
    want = {**exported_lib.materialize_compressed(base, ex['delta']), 'head': _padded_head(ex, max(SIZES))}
    _assert_trees_bit_equal(got['params'], want)
    _assert_trees_bit_equal(got['batch_stats'], ex['batch_stats'])
    if k != 1:  # only specialist 1 has norm deltas: base + 0.0 elsewhere is the base itself
      assert _bits_equal(got['params']['stage3_block1']['BatchNorm_0']['bias'],
                         base['stage3_block1']['BatchNorm_0']['bias'])
  # Without the unquantized specialist, kernels stay packed int4 and int8 codes with per-channel scales,
  # unpacked and dequantized on device.
  bank = bank_lib.make_bank(world['exported'][:2], base)
  assert bank.deltas['conv_init/kernel']['codes'].dtype == jnp.uint8
  np.testing.assert_array_equal(bank.deltas['conv_init/kernel']['bits'], [4, 8])
  assert bank.deltas['conv_init/kernel']['scale'].shape == (2, 8)
  for k, ex in enumerate(world['exported'][:2]):
    want = {**exported_lib.materialize_compressed(base, ex['delta']), 'head': _padded_head(ex, max(SIZES))}
    _assert_trees_bit_equal(fn(bank, base, jnp.int32(k))['params'], want)
  # The fixture's signed zeros were exercised: some became +0.0 (base + 0.0), as in materialize_compressed.
  zeros = np.asarray(base['stage2_block1']['Conv_0']['kernel']).reshape(-1)[:64]
  got = np.asarray(fn(state.bank, base, jnp.int32(0))['params']['stage2_block1']['Conv_0']['kernel']).reshape(-1)
  assert np.signbit(zeros).all() and (got[:64] == 0).any() and not np.signbit(got[:64][got[:64] == 0]).all()


# ----------------------------------------------------------------------------------------------------------------------
# Routing core


def _id_logits_fn(k, chunk):
  """Logits that spell out who produced them: [k, image id, 1000 k + id]."""
  ids = chunk[:, 0]
  kf = jnp.full_like(ids, k.astype(jnp.float32))
  return jnp.stack([kf, ids, 1000.0 * kf + ids], axis=-1)


# The specialist "variables" are its index: load is the identity.
_ID = inf.Specialists(load=lambda k: k, apply=_id_logits_fn)


@functools.lru_cache(maxsize=None)
def _jitted_route(num_superclasses, chunk_sizes):
  return jax.jit(functools.partial(inf.route, specialists=_ID, num_superclasses=num_superclasses,
                                   chunk_sizes=chunk_sizes))


def _check_routed(out, routes):
  out = np.asarray(out)
  for i, r in enumerate(routes):
    if r < 0:
      assert (out[i] == inf.NEG_LOGIT).all(), (i, out[i])
    else:
      np.testing.assert_array_equal(out[i], [r, i, 1000 * r + i])


@settings(max_examples=25, deadline=None)
@given(data=st.data(), b=st.sampled_from([1, 5, 12]), n=st.sampled_from([1, 3]),
       chunks=st.sampled_from([(1,), (3,), (16,), (4, 1), (8, 3, 2)]))
def test_route_gives_every_image_its_specialists_output(data, b, n, chunks):
  routes = np.asarray(data.draw(st.lists(st.integers(-1, n - 1), min_size=b, max_size=b)), np.int32)
  images = np.arange(b, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
  out = _jitted_route(n, chunks)(images, routes)
  assert out.shape == (b, 3) and out.dtype == jnp.float32
  _check_routed(out, routes)


def _traced_route(routes, chunk_sizes):
  """Routes images 0..B-1; returns the output, the specialists loaded and the (specialist, chunk size) calls."""
  loads, calls = [], []

  def load(k):
    jax.debug.callback(lambda k: loads.append(int(k)), k)
    return k

  def apply(k, chunk):
    jax.debug.callback(lambda k, c=chunk.shape[0]: calls.append((int(k), c)), k)
    return _id_logits_fn(k, chunk)

  images = np.arange(routes.size, dtype=np.float32)[:, None]
  out = jax.jit(functools.partial(inf.route, specialists=inf.Specialists(load, apply), num_superclasses=4,
                                  chunk_sizes=chunk_sizes))(images, routes)
  jax.effects_barrier()
  _check_routed(out, routes)
  return loads, sorted(calls)


def test_route_loads_each_specialist_once_and_runs_its_group_in_chunks():
  routes = np.asarray([2, 0, 2, -1, 2, 2, 0, 2, -1, 2, 2], np.int32)  # group sizes 2, 0, 7, 0; 2 skipped
  loads, calls = _traced_route(routes, (3,))
  # One load per non-empty group; ceil(2/3) + ceil(7/3) = 1 + 3 chunks; empty groups and skipped images cost
  # nothing.
  assert loads == [0, 2]
  assert calls == [(0, 3), (2, 3), (2, 3), (2, 3)]
  # Two sizes: full chunks of 4 while they fit, the rest in chunks of 2 (the last rounding up).
  loads, calls = _traced_route(routes, (2, 4))
  assert loads == [0, 2]
  assert calls == [(0, 2), (2, 2), (2, 2), (2, 4)]  # group 0: 2 = 2; group 2: 7 = 4 + 2 + 2 (one padding row)


def test_route_rejects_bad_arguments():
  images = np.zeros((4, 1), np.float32)
  with pytest.raises(ValueError, match='chunk_sizes'):
    inf.route(images, np.zeros(4, np.int32), _ID, num_superclasses=2, chunk_sizes=(4, 0))
  with pytest.raises(ValueError, match='routes must be'):
    inf.route(images, np.zeros(3, np.int32), _ID, num_superclasses=2, chunk_sizes=2)
  with pytest.raises(ValueError, match=r'\[chunk=2, S\]'):
    inf.route(images, np.zeros(4, np.int32), inf.Specialists(lambda k: k, lambda k, x: x[:1]), num_superclasses=2,
              chunk_sizes=2)


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


_HAND = inf.Specialists(load=lambda k: k, apply=_hand_fn)


@pytest.fixture(scope='module')
def hand():
  h = hierarchy_lib.synthetic(_HAND_SIZES)
  return {'h': bank_lib.HierarchyArrays.from_hierarchy(h), 'images': np.arange(4, dtype=np.float32)[:, None],
          'logits': _LOG(_P_SUPER)}


def test_top1_on_hand_built_case(hand):
  out = jax.jit(lambda lg, x: inf.decide_top1(lg, x, _HAND, hand['h'], chunk_sizes=(2,)))(hand['logits'],
                                                                                          hand['images'])
  np.testing.assert_array_equal(out['superclass'], [0, 1, 2, 1])
  np.testing.assert_array_equal(out['local'], [0 + 1, 0, 1, 1])
  np.testing.assert_array_equal(out['label'], [1, 2, 6, 3])  # image 1 wrong: its superclass is wrong
  np.testing.assert_allclose(out['superclass_probs'], _P_SUPER, rtol=1e-6)
  np.testing.assert_allclose(out['prob'][1], 0.5 / 3, rtol=1e-5)
  np.testing.assert_allclose(out['prob'][0], 0.9 * jax.nn.softmax(jnp.asarray([0.0, 5.0]))[1], rtol=1e-5)


def test_oracle_equals_specialists_own_accuracy(hand):
  oracle = jax.jit(lambda s, x: inf.decide_oracle(s, x, _HAND, hand['h'], chunk_sizes=(3,)))
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
  top2 = jax.jit(lambda lg, x, t: inf.decide_top2(lg, x, _HAND, hand['h'], chunk_sizes=(2,), threshold=t))
  top1 = jax.jit(lambda lg, x: inf.decide_top1(lg, x, _HAND, hand['h'], chunk_sizes=(2,)))(hand['logits'],
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
    params = {**exported_lib.materialize_compressed(world['base'], ex['delta']), 'head': _padded_head(ex, s)}
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
  kw = dict(generalist_model=world['gm'], specialist_model=world['sm'], chunk_sizes=(4,))
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
  out = inf.predict_oracle(world['state'], images, superclass, specialist_model=world['sm'], chunk_sizes=(2,))
  local, label, p_local = _naive(world, images, superclass)
  np.testing.assert_array_equal(out['local'], local)
  np.testing.assert_array_equal(out['label'], label)
  np.testing.assert_allclose(out['prob'], p_local, rtol=1e-4)


def test_predict_top2_runs_and_counts_second_passes(world):
  images = world['images']
  kw = dict(generalist_model=world['gm'], specialist_model=world['sm'], chunk_sizes=(4,))
  top1 = inf.predict(world['state'], images, **kw)
  out = inf.predict_top2(world['state'], images, threshold=1.1, **kw)  # everyone asks a second specialist
  assert int(out['num_second']) == 10
  # The answer is whichever of the two has the larger p(super) * max p(sub | super); never a lower score.
  assert (np.asarray(out['prob']) >= np.asarray(top1['prob']) * (1 - 1e-6)).all()
  np.testing.assert_array_equal(np.asarray(out['used_second']), np.asarray(out['superclass']) != top1['superclass'])


def test_predict_rule_hard_is_predict_and_soft_and_product_combine_the_routed_specialists(world):
  from supersub_jax import decide  # pylint: disable=g-import-not-at-top
  images, state = world['images'], world['state']
  kw = dict(generalist_model=world['gm'], specialist_model=world['sm'], chunk_sizes=(4,))
  top1 = inf.predict(state, images, **kw)
  hard = inf.predict_rule(state, images, rule=decide.Rule('hard'), **kw)
  np.testing.assert_array_equal(hard['label'], top1['label'])
  h = world['hierarchy']
  p_super = np.asarray(jax.nn.softmax(world['gen_logits']))
  routes = np.argsort(-p_super, axis=1, kind='stable')[:, :2]
  # The reference: each of the two routes' specialists run alone (materialize_compressed, dense), combined by the
  # formulas of decide (whose own tests check them against hand computations).
  local = np.zeros((10, 2, max(SIZES)), np.float32)
  for j in range(2):
    apply = _jitted_apply(world['sm'])
    for i in range(10):
      ex = world['exported'][routes[i, j]]
      params = {**exported_lib.materialize_compressed(world['base'], ex['delta']), 'head': _padded_head(ex, 4)}
      logits = np.asarray(apply({'params': params, 'batch_stats': ex['batch_stats']}, images[i:i + 1]))[0]
      logits = np.where(h.local_valid[routes[i, j]], logits, -np.inf)
      local[i, j] = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
  args = (jnp.asarray(p_super), jnp.asarray(routes, jnp.int32), jnp.asarray(local), jnp.asarray(h.local_to_label))
  for rule, want in (('soft:2', decide.soft(*args, h.num_subclasses)),
                     ('hinton:2', decide.hinton(*args, jnp.asarray(h.label_to_superclass))),
                     ('poe:2', decide.poe(*args, jnp.asarray(h.label_to_superclass)))):
    got = inf.predict_rule(state, images, rule=decide.Rule.parse(rule), **kw)
    np.testing.assert_array_equal(got['routes'], routes)
    np.testing.assert_array_equal(got['label'], want, err_msg=rule)
  with pytest.raises(ValueError, match='flat network'):
    inf.predict_rule(state, images, rule=decide.Rule.parse('hard/flat'), **kw)


def test_a_dustbin_bank_adds_its_column_after_the_real_ones_with_the_even_odds_correction(world):
  hierarchy, gen, base = world['hierarchy'], world['gen'], world['base']
  rng = np.random.default_rng(5)
  exported = []
  for k, ex in enumerate(world['exported']):
    n = ex['head']['kernel'].shape[1]
    extra = {'kernel': rng.normal(size=(ex['head']['kernel'].shape[0], 1)).astype(np.float32),
             'bias': np.float32([0.25 * k])}
    head = {name: np.concatenate([ex['head'][name], extra[name]], axis=-1) for name in ('kernel', 'bias')}
    # Each its own training mix; the stored (older, prior-based) correction is not what inference adds.
    spec = {**ex['spec'], 'dustbin': {'fraction': 0.2 + 0.1 * k, 'others': 'all', 'logit_correction': 9.0}}
    exported.append({**ex, 'head': head, 'spec': spec})
    assert n == SIZES[k]
  state = bank_lib.build_supersub(gen, exported, hierarchy)
  assert state.bank.dustbin == 1 and state.num_outputs == max(SIZES) + 1
  np.testing.assert_array_equal(state.bank.num_subclasses, SIZES)
  for k, ex in enumerate(exported):
    got = inf.specialist_variables(state.bank, base, k, max(SIZES))['params']['head']
    n = SIZES[k]
    np.testing.assert_array_equal(got['kernel'][:, :n], ex['head']['kernel'][:, :n])
    assert not np.asarray(got['kernel'][:, n:max(SIZES)]).any()  # padding
    np.testing.assert_array_equal(got['kernel'][:, -1], ex['head']['kernel'][:, -1])
    f = 0.2 + 0.1 * k
    np.testing.assert_allclose(got['bias'][-1], 0.25 * k + np.log((1 - f) / f), rtol=1e-6)  # trained + even odds
  with pytest.raises(ValueError, match='all or none'):
    bank_lib.build_supersub(gen, exported[:2] + world['exported'][2:], hierarchy)


def test_predict_temp_memory_does_not_grow_like_n_dense_specialists():
  temps, dense_bytes = {}, None
  batch = jax.ShapeDtypeStruct((8,) + IMAGE_SHAPE, jnp.float32)
  for n in (2, 6):
    hierarchy, gm, sm, gen, exported = _world((2,) * n, mixed=False)
    state = bank_lib.build_supersub(gen, exported, hierarchy)
    compiled = inf.predict.lower(state, batch, generalist_model=gm, specialist_model=sm, chunk_sizes=(4,)).compile()
    analysis = compiled.memory_analysis()
    assert analysis is not None, 'this backend reports no memory analysis'
    temps[n] = analysis.temp_size_in_bytes
    dense_bytes = dl.tree_nbytes(cut_lib.split_head(gen['params'])[0])
  # N dense specialists would add at least 4 * dense_bytes of temporaries from N = 2 to N = 6 (running all N
  # specialists under vmap adds ~8x that here); one transient specialist adds nothing that depends on N.
  assert abs(temps[6] - temps[2]) < 0.1 * 4 * dense_bytes, (temps, dense_bytes)


# ----------------------------------------------------------------------------------------------------------------------
# Layer-by-layer materialization and the padded single call


def test_layer_by_layer_leaves_equal_materialize_compressed_bit_for_bit(world):
  state, base = world['state'], world['base']
  s = max(SIZES)

  @jax.jit
  def unboxed(k):  # each LazyLeaf materialized as its layer would read it
    from flax.core import meta  # pylint: disable=g-import-not-at-top
    return meta.unbox(inf.lazy_specialist_variables(state.bank, base, k, s))

  for k, ex in enumerate(world['exported']):
    lazy = inf.lazy_specialist_variables(state.bank, base, k, s)
    assert any(isinstance(x, inf.LazyLeaf) for x in jax.tree.leaves(
        lazy['params'], is_leaf=lambda x: isinstance(x, inf.LazyLeaf)))  # nothing dense before the forward
    got = unboxed(jnp.int32(k))
    want = {**exported_lib.materialize_compressed(base, ex['delta']), 'head': _padded_head(ex, s)}
    _assert_trees_bit_equal(got['params'], want)
    _assert_trees_bit_equal(got['batch_stats'], ex['batch_stats'])


def test_a_forward_through_lazy_leaves_is_the_dense_specialists_forward(world):
  state, base, images = world['state'], world['base'], world['images']
  apply = _jitted_apply(world['sm'])
  lazy = jax.jit(lambda k, x: world['sm'].apply(inf.lazy_specialist_variables(state.bank, base, k, max(SIZES)), x,
                                                train=False))
  for k in range(len(SIZES)):
    dense = inf.specialist_variables(state.bank, base, k, max(SIZES))
    np.testing.assert_array_equal(lazy(jnp.int32(k), images), apply(dense, images))


@functools.lru_cache(maxsize=None)
def _jitted_route_padded(num_superclasses, slot_size):
  return jax.jit(functools.partial(inf.route_padded, specialists=_ID, num_superclasses=num_superclasses,
                                   slot_size=slot_size))


@settings(max_examples=25, deadline=None)
@given(data=st.data(), b=st.sampled_from([1, 5, 12]), n=st.sampled_from([1, 3]), slot=st.sampled_from([1, 3, 16]))
def test_route_padded_gives_every_image_its_specialists_output(data, b, n, slot):
  routes = np.asarray(data.draw(st.lists(st.integers(-1, n - 1), min_size=b, max_size=b)), np.int32)
  images = np.arange(b, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
  out = _jitted_route_padded(n, slot)(images, routes)
  assert out.shape == (b, 3) and out.dtype == jnp.float32
  _check_routed(out, routes)


def test_num_slots_holds_the_worst_routing():
  for b, n, c in [(256, 10, 32), (256, 10, 16), (5, 3, 4), (1, 20, 8), (40, 2, 1)]:
    # Worst case: one image in each of n - 1 groups, the rest in one (every group wastes c - 1 rows at most).
    counts = [1] * (min(n, b) - 1) + [b - min(n, b) + 1]
    assert sum(-(-x // c) for x in counts) <= inf.num_slots(b, n, c)


@pytest.mark.parametrize('routing,materialize', [('loop', 'layer'), ('padded', 'layer'), ('padded', 'group')])
def test_every_routing_path_predicts_what_predict_does(world, routing, materialize):
  images = world['images']
  kw = dict(generalist_model=world['gm'], specialist_model=world['sm'], chunk_sizes=(4,))
  today = inf.predict(world['state'], images, **kw)
  out = inf.predict(world['state'], images, routing=routing, slot_size=3, materialize=materialize, **kw)
  for key in ('superclass', 'local', 'label'):
    np.testing.assert_array_equal(out[key], today[key])
  np.testing.assert_allclose(out['prob'], today['prob'], rtol=1e-5)


def test_auto_settings_resolve_per_platform_and_explicit_ones_stay():
  import ml_collections  # pylint: disable=g-import-not-at-top
  settings = ml_collections.ConfigDict(dict(routing='auto', materialize='auto', slot_size=8, chunk_sizes=(4, 2)))
  assert inf.path_settings(settings, 'cpu') == {'routing': 'loop', 'materialize': 'group', 'slot_size': 8,
                                                'chunk_sizes': (4, 2)}
  gpu = inf.path_settings(settings, 'gpu')
  assert (gpu['routing'], gpu['materialize']) == ('padded', 'layer')  # the padded routing wants 'layer'
  settings.materialize = 'group'
  assert inf.path_settings(settings, 'gpu')['materialize'] == 'group'
