"""Tests for supersub_jax.inference's one prediction function, ``predict(state, images, rule)``: the paper's rule,
oracle routing and threshold top-2 as rules, checked against per-image numpy references (each specialist
materialized on the host by exported.materialize_compressed and run alone), and the model-free core ``answer`` on
hand-built specialist outputs.

Tiny shapes throughout (resnet_tiny on 8x8 images); the ResNet state is built once per module and every
compiled function is reused, since XLA compiles dominate the runtime on CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specialist_worlds import IMAGE_SHAPE
from specialist_worlds import padded_head as _padded_head
from specialist_worlds import routed_world
from specialist_worlds import world as _world
from supersub_jax import bank as bank_lib
from supersub_jax import cut as cut_lib
from supersub_jax import decide
from supersub_jax import delta as dl
from supersub_jax import exported as exported_lib
from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax import inference as inf
from supersub_jax import models
from supersub_jax.inference.two_stage import answer
from supersub_jax.inference.unpack import Specialists

SIZES = (2, 3, 4)  # N = 3 superclasses, S = 4
HARD = decide.Rule('hard')
ORACLE = decide.Rule('hard', router='oracle')


@pytest.fixture(scope='module')
def world():
  return routed_world(SIZES)


# ----------------------------------------------------------------------------------------------------------------------
# The model-free core on hand-built outputs

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


_HAND = Specialists(load=lambda k: k, apply=_hand_fn)


@pytest.fixture(scope='module')
def hand():
  h = hierarchy_lib.synthetic(_HAND_SIZES)
  return {'h': bank_lib.HierarchyArrays.from_hierarchy(h), 'images': np.arange(4, dtype=np.float32)[:, None],
          'logits': _LOG(_P_SUPER)}



@functools.lru_cache(maxsize=None)
def _jitted_answer(rule):
  return jax.jit(functools.partial(answer, rule, specialists=_HAND, chunk_sizes=(2,)))


def _router(hand, rule, superclass=None):
  return decide.router_probs(rule.router, hand['logits'], None, hand['h'].label_to_superclass, len(_HAND_SIZES),
                             superclass)


def test_hard_rule_on_hand_built_case(hand):
  out = _jitted_answer(HARD)(_router(hand, HARD), hand['images'], hierarchy=hand['h'])
  np.testing.assert_array_equal(out['routes'], [[0], [1], [2], [1]])
  np.testing.assert_array_equal(out['superclass'], [0, 1, 2, 1])
  np.testing.assert_array_equal(out['label'], [1, 2, 6, 3])  # image 1 wrong: its superclass is wrong
  np.testing.assert_allclose(out['router'], _P_SUPER, rtol=1e-6)
  assert not np.asarray(out['second']).any() and int(out['num_second']) == 0


def test_oracle_router_equals_specialists_own_accuracy(hand):
  oracle = lambda superclass: _jitted_answer(ORACLE)(_router(hand, ORACLE, jnp.asarray(superclass)), hand['images'],
                                                     hierarchy=hand['h'])
  out = oracle(_TRUE_SUPER)
  sizes = np.asarray(_HAND_SIZES)
  own = [int(np.argmax(_T[s, i, :sizes[s]])) for i, s in enumerate(_TRUE_SUPER)]  # each specialist alone
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  np.testing.assert_array_equal(out['routes'][:, 0], _TRUE_SUPER)
  np.testing.assert_array_equal(out['label'], offsets[_TRUE_SUPER] + own)
  np.testing.assert_array_equal(out['label'], _TRUE_LABEL)
  # Another ground truth under which two specialists are wrong: the oracle's accuracy is still theirs (0.5).
  truth_super, truth_label = np.asarray([1, 2, 0, 1]), np.asarray([3, 5, 0, 3])
  out = oracle(truth_super)
  own = [int(np.argmax(_T[s, i, :sizes[s]])) for i, s in enumerate(truth_super)]
  assert np.mean(np.asarray(out['label']) == truth_label) == np.mean(offsets[truth_super] + own == truth_label) == 0.5


def test_threshold_top2_fixes_the_wrong_first_specialist(hand):
  top1 = _jitted_answer(HARD)(_router(hand, HARD), hand['images'], hierarchy=hand['h'])
  top2 = lambda t: _jitted_answer(decide.Rule('soft', 2, threshold=t))(_router(hand, HARD), hand['images'],
                                                                         hierarchy=hand['h'])
  out = top2(0.7)
  np.testing.assert_array_equal(out['second'], [False, True, False, True])
  assert int(out['num_second']) == 2
  np.testing.assert_array_equal(out['routes'], [[0, -1], [1, 2], [2, -1], [1, 0]])
  np.testing.assert_array_equal(out['superclass'], [0, 2, 2, 1])  # image 1: the second specialist won
  np.testing.assert_array_equal(out['label'], _TRUE_LABEL)
  acc1 = np.mean(np.asarray(top1['label']) == _TRUE_LABEL)
  acc2 = np.mean(np.asarray(out['label']) == _TRUE_LABEL)
  assert acc1 == 0.75 and acc2 == 1.0
  # threshold 0: nobody asks, top-1 exactly; threshold > 1: everybody asks, but the sure ones keep their answer.
  none = top2(0.0)
  assert int(none['num_second']) == 0
  np.testing.assert_array_equal(none['label'], top1['label'])
  everyone = top2(1.1)
  assert int(everyone['num_second']) == 4
  np.testing.assert_array_equal(everyone['label'], _TRUE_LABEL)


# ----------------------------------------------------------------------------------------------------------------------
# Predictions with the ResNets


@functools.lru_cache(maxsize=None)
def _jitted_apply(model):
  return jax.jit(functools.partial(model.apply, train=False))


def _naive_local(world, images, superclass):
  """Per-image Python loop applying the routed specialist's materialize_compressed params: each image's local
  distribution over its specialist's S = max(SIZES) outputs, zero on padding, float64[B, S]."""
  apply = _jitted_apply(world['sm'])
  h, s = world['hierarchy'], max(SIZES)
  out = []
  for i, k in enumerate(superclass):
    ex = world['exported'][k]
    params = {**exported_lib.materialize_compressed(world['base'], ex['delta']), 'head': _padded_head(ex, s)}
    logits = np.asarray(apply({'params': params, 'batch_stats': ex['batch_stats']}, images[i:i + 1]))[0]
    logits = np.where(h.local_valid[k], logits, -np.inf)
    p = np.exp(logits - logits.max())
    out.append(p / p.sum())
  return np.asarray(out)


def _naive(world, images, superclass):
  """(local subclass, global label, its probability) of each image under its routed specialist alone."""
  p = _naive_local(world, images, superclass)
  local = np.argmax(p, -1)
  return local, world['hierarchy'].local_to_label[np.asarray(superclass), local], p.max(-1)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_hard_rule_predicts_the_naive_reference(world):
  images, gen_logits = world['images'], world['gen_logits']
  kw = dict(generalist_model=world['gm'], specialist_model=world['sm'], chunk_sizes=(4,))
  out = inf.predict(world['state'], images, HARD, **kw)
  superclass = np.argmax(gen_logits, -1)
  assert len(set(superclass.tolist())) >= 2, 'the fixture should route to several specialists'
  np.testing.assert_array_equal(out['routes'], superclass[:, None])
  np.testing.assert_array_equal(out['superclass'], superclass)
  np.testing.assert_allclose(out['router'], _softmax(np.float64(gen_logits)), rtol=1e-5, atol=1e-7)
  _, label, _ = _naive(world, images, superclass)
  np.testing.assert_array_equal(out['label'], label)


def test_oracle_router_predicts_the_naive_reference(world):
  images = world['images']
  superclass = np.asarray([2, 0, 1, 2, 2, 0, 1, 1, 2, 0], np.int32)
  kw = dict(generalist_model=world['gm'], specialist_model=world['sm'], chunk_sizes=(2,))
  out = inf.predict(world['state'], images, ORACLE, superclass=superclass, **kw)
  _, label, _ = _naive(world, images, superclass)
  np.testing.assert_array_equal(out['label'], label)
  np.testing.assert_array_equal(out['superclass'], superclass)
  with pytest.raises(ValueError, match='superclass='):
    inf.predict(world['state'], images, ORACLE, **kw)


def test_threshold_top2_predicts_the_old_definition_computed_in_numpy(world):
  """The old predict_top2: images whose top superclass probability is below the threshold also run the second
  most likely specialist; the answer is the (superclass, subclass) with the larger p(super) max_j p(sub = j |
  super), the first on a tie."""
  # A less sure generalist (its head scaled down), so that second specialists win on some images.
  gen = jax.tree.map(np.copy, world['gen'])
  gen['params']['head'] = {k: v * np.float32(0.1) for k, v in gen['params']['head'].items()}
  state = bank_lib.build_supersub(gen, world['exported'], world['hierarchy'])
  images, gen_logits = world['images'], world['gen_logits'] * np.float32(0.1)
  kw = dict(generalist_model=world['gm'], specialist_model=world['sm'], chunk_sizes=(4,))
  p = _softmax(np.float64(gen_logits))
  order = np.argsort(-p, axis=1, kind='stable')
  first, second = order[:, 0], order[:, 1]
  _, label1, p1 = _naive(world, images, first)
  _, label2, p2 = _naive(world, images, second)
  score1, score2 = p[np.arange(10), first] * p1, p[np.arange(10), second] * p2
  median = float(np.median(p.max(-1)))
  for threshold in (median, 1.1, 0.0):
    ask = p.max(-1) < threshold
    use2 = ask & (score2 > score1)
    out = inf.predict(state, images, decide.Rule('soft', 2, threshold=threshold), **kw)
    np.testing.assert_array_equal(out['second'], ask)
    assert int(out['num_second']) == ask.sum()
    np.testing.assert_array_equal(out['label'], np.where(use2, label2, label1), err_msg=f'threshold {threshold}')
    np.testing.assert_array_equal(out['superclass'], np.where(use2, second, first))
    if threshold == median:
      assert 0 < ask.sum() < 10 and use2.any(), 'the fixture should exercise both kinds of image and a second win'


def test_soft_hinton_and_poe_combine_the_routed_specialists(world):
  images, state = world['images'], world['state']
  kw = dict(generalist_model=world['gm'], specialist_model=world['sm'], chunk_sizes=(4,))
  h = world['hierarchy']
  p_super = np.asarray(jax.nn.softmax(world['gen_logits']))
  routes = np.argsort(-p_super, axis=1, kind='stable')[:, :2]
  # The reference: each of the two routes' specialists run alone (materialize_compressed, dense), combined by the
  # formulas of decide (whose own tests check them against hand computations).
  local = np.stack([_naive_local(world, images, routes[:, j]) for j in range(2)], axis=1).astype(np.float32)
  args = (jnp.asarray(p_super), jnp.asarray(routes, jnp.int32), jnp.asarray(local), jnp.asarray(h.local_to_label))
  for rule, want in (('soft:2', decide.soft(*args, h.num_subclasses)),
                     ('hinton:2', decide.hinton(*args, jnp.asarray(h.label_to_superclass))),
                     ('poe:2', decide.poe(*args, jnp.asarray(h.label_to_superclass)))):
    got = inf.predict(state, images, decide.Rule.parse(rule), **kw)
    np.testing.assert_array_equal(got['routes'], routes)
    np.testing.assert_array_equal(got['label'], want, err_msg=rule)
    assert np.asarray(got['second']).all() and int(got['num_second']) == 10  # k = 2, no threshold: all run two
  with pytest.raises(ValueError, match='flat network'):
    inf.predict(state, images, decide.Rule.parse('hard/flat'), **kw)
  with pytest.raises(ValueError, match='decide.Rule'):
    inf.predict(state, images, 'soft:2', **kw)


def test_predict_temp_memory_does_not_grow_like_n_dense_specialists():
  temps, dense_bytes = {}, None
  batch = jax.ShapeDtypeStruct((8,) + IMAGE_SHAPE, jnp.float32)
  for n in (2, 6):
    hierarchy, gm, sm, gen, exported = _world((2,) * n, mixed=False)
    state = bank_lib.build_supersub(gen, exported, hierarchy)
    compiled = inf.predict.lower(state, batch, HARD, generalist_model=gm, specialist_model=sm,
                                 chunk_sizes=(4,)).compile()
    analysis = compiled.memory_analysis()
    assert analysis is not None, 'this backend reports no memory analysis'
    temps[n] = analysis.temp_size_in_bytes
    dense_bytes = dl.tree_nbytes(cut_lib.split_head(gen['params'])[0])
  # N dense specialists would add at least 4 * dense_bytes of temporaries from N = 2 to N = 6 (running all N
  # specialists under vmap adds ~8x that here); one transient specialist adds nothing that depends on N.
  assert abs(temps[6] - temps[2]) < 0.1 * 4 * dense_bytes, (temps, dense_bytes)



@pytest.mark.parametrize('routing,materialize', [('loop', 'layer'), ('padded', 'layer'), ('padded', 'group')])
def test_every_routing_path_predicts_what_the_loop_does(world, routing, materialize):
  images = world['images']
  kw = dict(generalist_model=world['gm'], specialist_model=world['sm'], chunk_sizes=(4,))
  today = inf.predict(world['state'], images, HARD, **kw)
  out = inf.predict(world['state'], images, HARD, routing=routing, slot_size=3, materialize=materialize, **kw)
  for key in ('label', 'superclass', 'routes', 'second'):
    np.testing.assert_array_equal(out[key], today[key])
  np.testing.assert_allclose(out['router'], today['router'], rtol=1e-6)


def test_auto_settings_resolve_per_platform_and_explicit_ones_stay():
  import ml_collections  # pylint: disable=g-import-not-at-top
  settings = ml_collections.ConfigDict(dict(routing='auto', materialize='auto', slot_size=8, chunk_sizes=(4, 2)))
  assert inf.path_settings(settings, 'cpu') == {'routing': 'loop', 'materialize': 'group', 'slot_size': 8,
                                                'chunk_sizes': (4, 2)}
  gpu = inf.path_settings(settings, 'gpu')
  assert (gpu['routing'], gpu['materialize']) == ('padded', 'layer')  # the padded routing wants 'layer'
  settings.materialize = 'group'
  assert inf.path_settings(settings, 'gpu')['materialize'] == 'group'