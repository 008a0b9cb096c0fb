"""supersub_jax.decide: the decision rules, against hand computations and an independent optimiser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from supersub_jax import decide
from supersub_jax import hierarchy as hierarchy_lib

H = hierarchy_lib.synthetic((3, 2, 2))  # subclasses 0-2 | 3-4 | 5-6; S = 3
L2L = jnp.asarray(H.local_to_label)
L2S = jnp.asarray(H.label_to_superclass)
# Hinton's bisection is a fori_loop over a closure: called eagerly it is traced and compiled again at every call. The
# property tests call the rules compiled, as the predictor does (once per rule and shape).
DECIDE = jax.jit(decide.decide, static_argnums=0)
HINTON_DISTRIBUTION = jax.jit(decide.hinton_distribution)


def _normalised(rng, shape):
  x = rng.random(shape).astype(np.float32) + 0.05
  return x / x.sum(-1, keepdims=True)


def _local(rng, routes, dustbin):
  """Random local distributions [B, k, S + d] with 0 on each route's padding columns."""
  sizes = np.asarray(H.sizes)
  b, k = routes.shape
  out = np.zeros((b, k, 3 + dustbin), np.float32)
  for i in range(b):
    for j in range(k):
      n = sizes[routes[i, j]]
      cols = list(range(n)) + ([3] if dustbin else [])
      out[i, j, cols] = _normalised(rng, len(cols))
  return out


def test_rules_parse_and_name_themselves():
  assert decide.Rule.parse('hard') == decide.Rule('hard', 1, 'generalist')
  assert decide.Rule.parse('soft:2/mean') == decide.Rule('soft', 2, 'mean')
  assert decide.Rule.parse('hinton:3').key == 'hinton:3' and decide.Rule.parse('hard/flat').key == 'hard/flat'
  assert decide.Rule.parse('poe:2/mean') == decide.Rule('poe', 2, 'mean')
  assert decide.Rule.parse('product:2/mean').key == 'hinton:2/mean'  # the old name reads as what it is
  for bad, match in (('median', 'decision rule'), ('soft:2/psychic', 'router'), ('hard:2', 'exactly 1'),
                     ('soft:0', 'at least 1'), ('soft 2', 'write')):
    with pytest.raises(ValueError, match=match):
      decide.Rule.parse(bad)


def test_oracle_routing_and_thresholds_parse_and_name_themselves():
  assert decide.Rule.parse('hard/oracle') == decide.Rule('hard', 1, 'oracle')
  assert decide.Rule.parse('soft:2@0.7') == decide.Rule('soft', 2, threshold=0.7)
  assert decide.Rule.parse('hinton:3@1e-2/mean') == decide.Rule('hinton', 3, 'mean', 0.01)
  for rule in (decide.Rule('hard', router='oracle'), decide.Rule('soft', 2, threshold=0.7),
               decide.Rule('poe', 3, 'flat', 0.123456789), decide.Rule('soft', 2, threshold=1)):
    assert decide.Rule.parse(rule.key) == rule, rule.key  # the key reads back as the same rule
  assert decide.Rule('soft', 2, threshold=0.7).key == 'soft:2@0.7'
  assert decide.Rule('hard', router='oracle').key == 'hard/oracle'
  assert decide.Rule.parse('hard/oracle').needs_superclass and not decide.Rule.parse('hard/oracle').needs_flat
  assert decide.Rule.parse('soft:2/mean').needs_flat and not decide.Rule.parse('soft:2').needs_flat
  for bad, match in (('hard@0.5', 'k >= 2'), ('soft@0.5', 'k >= 2'), ('soft:2@-1', 'write'),
                     ('soft:2/oracle', 'one superclass'), ('soft:2@', 'write')):
    with pytest.raises(ValueError, match=match):
      decide.Rule.parse(bad)
  with pytest.raises(ValueError, match='finite'):
    decide.Rule('soft', 2, threshold=float('nan'))
  from supersub_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  for spec in config_lib.default_config().evaluate.rules:  # every string the shipped defaults use still reads
    assert decide.Rule.parse(spec).key == spec


def test_oracle_router_is_the_true_superclass_one_hot():
  np.testing.assert_array_equal(decide.router_probs('oracle', None, None, L2S, 3, jnp.asarray([2, 0])),
                                [[0, 0, 1], [1, 0, 0]])
  with pytest.raises(ValueError, match='true superclass'):
    decide.router_probs('oracle', jnp.zeros((2, 3)), None, L2S, 3)


def test_a_threshold_runs_later_routes_only_where_the_top_probability_is_below_it():
  router = jnp.asarray([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
  np.testing.assert_array_equal(decide.routes_to_run(decide.Rule('soft', 3, threshold=0.6), router),
                                [[0, 1, 2], [1, -1, -1], [2, -1, -1]])  # 0.6 is not below 0.6
  np.testing.assert_array_equal(decide.routes_to_run(decide.Rule('soft', 2), router), [[0, 1], [1, 0], [2, 0]])
  np.testing.assert_array_equal(decide.routes_to_run(decide.Rule('soft', 5, threshold=2.0), router)[:, 0],
                                [0, 1, 2])  # k capped at N = 3, every image asks
  assert decide.routes_to_run(decide.Rule('soft', 5), router).shape == (3, 3)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), dustbin=st.sampled_from([0, 1]), threshold=st.sampled_from([0.0, 0.4, 0.6, 1.1]))
def test_threshold_top2_is_the_old_predict_top2_and_every_rule_falls_back_to_its_first_route(seed, dustbin,
                                                                                          threshold):
  rng = np.random.default_rng(seed)
  b = 6
  router = _normalised(rng, (b, 3))
  full = np.argsort(-router, axis=1, kind='stable')[:, :2]
  local = _local(rng, full, dustbin)
  routes = np.asarray(decide.routes_to_run(decide.Rule('soft', 2, threshold=threshold), jnp.asarray(router)))
  ask = router.max(-1) < threshold
  np.testing.assert_array_equal(routes, np.where(ask[:, None] | (np.arange(2) == 0), full, -1))
  # A route not run holds a uniform row (inference's skipped images); the rules must not read it.
  local = np.where((routes >= 0)[..., None], local, np.float32(1.0 / local.shape[-1]))
  args = (jnp.asarray(router), jnp.asarray(routes), jnp.asarray(local), L2L, L2S)
  # The old predict_top2, in numpy: the larger of p(s) max_j p(j | s) over the routes run, the first on a tie.
  score = router[np.arange(b)[:, None], full] * local[..., :3].max(-1)
  pick = np.where(ask & (score[:, 1] > score[:, 0]), 1, 0)
  best = local[np.arange(b), pick, :3].argmax(-1)
  want = np.asarray(H.local_to_label)[full[np.arange(b), pick], best]
  np.testing.assert_array_equal(DECIDE(decide.Rule('soft', 2, threshold=threshold), *args), want)
  for name in ('hinton', 'poe'):
    every = DECIDE(decide.Rule(name, 2), jnp.asarray(router), jnp.asarray(full), jnp.asarray(local), L2L, L2S)
    first = DECIDE(decide.Rule(name, 1), jnp.asarray(router), jnp.asarray(full[:, :1]), jnp.asarray(local[:, :1]),
                   L2L, L2S)
    np.testing.assert_array_equal(DECIDE(decide.Rule(name, 2, threshold=threshold), *args), np.where(ask, every, first),
                                  err_msg=name)


def test_flat_router_sums_subclass_probabilities_over_each_superclass():
  flat_logits = jnp.log(jnp.asarray([[0.1, 0.1, 0.1, 0.3, 0.1, 0.2, 0.1]]))
  gen_logits = jnp.log(jnp.asarray([[0.5, 0.25, 0.25]]))
  np.testing.assert_allclose(decide.router_probs('flat', None, flat_logits, L2S, 3), [[0.3, 0.4, 0.3]], rtol=1e-6)
  np.testing.assert_allclose(decide.router_probs('mean', gen_logits, flat_logits, L2S, 3), [[0.4, 0.325, 0.275]],
                             rtol=1e-6)
  with pytest.raises(ValueError, match='flat network'):
    decide.router_probs('flat', gen_logits, None, L2S, 3)


def test_within_superclass_is_the_flat_argmax_among_the_true_superclass_subclasses():
  logits = jnp.asarray([[0.1, 0.9, 0.3, 5.0, 0.2, 0.0, 0.4],    # best overall 3 (superclass 1); within 0: 1
                        [0.1, 0.9, 0.3, 5.0, 0.2, 0.0, 0.4],    # within 2: 6
                        [-9.0, -8.0, -7.0, -1.0, -2.0, -3.0, -4.0]])  # within 1: 3, the overall best
  out = decide.within_superclass(logits, jnp.asarray([0, 2, 1]), L2S)
  np.testing.assert_array_equal(out, [1, 6, 3])
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(50, 7)).astype(np.float32)
  superclass = rng.integers(0, 3, 50)
  reference = [max((j for j in range(7) if H.label_to_superclass[j] == s), key=lambda j: row[j])
               for row, s in zip(logits, superclass)]
  np.testing.assert_array_equal(decide.within_superclass(jnp.asarray(logits), jnp.asarray(superclass), L2S),
                                reference)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dustbin=st.booleans())
def test_soft_equals_hard_when_the_router_is_one_hot(seed, dustbin):
  rng = np.random.default_rng(seed)
  b = 6
  winner = rng.integers(0, 3, b)
  router = jnp.asarray(np.eye(3, dtype=np.float32)[winner])
  routes = np.stack([winner, (winner + 1 + rng.integers(0, 2, b)) % 3], axis=1).astype(np.int32)
  local = _local(rng, routes, dustbin)
  got_soft = decide.soft(router, jnp.asarray(routes), jnp.asarray(local), L2L, 7)
  got_hard = decide.hard(jnp.asarray(routes), jnp.asarray(local), L2L)
  np.testing.assert_array_equal(got_soft, got_hard)


def test_soft_over_every_superclass_is_the_full_sum_computed_by_hand():
  rng = np.random.default_rng(3)
  router = _normalised(rng, (4, 3))
  routes = np.argsort(-router, axis=1).astype(np.int32)  # all N = 3, most likely first
  local = _local(rng, routes, dustbin=True)
  by_hand = np.zeros((4, 7))
  for i in range(4):
    for j in range(3):
      s = routes[i, j]
      for c in range(H.sizes[s]):
        by_hand[i, H.offsets[s] + c] += router[i, s] * local[i, j, c]  # the dustbin (column 3) counts for none
  scores = decide.global_scores(jnp.asarray(router), jnp.asarray(routes), jnp.asarray(local), L2L, 7)
  np.testing.assert_allclose(scores, by_hand, rtol=1e-6)
  np.testing.assert_array_equal(decide.soft(jnp.asarray(router), jnp.asarray(routes), jnp.asarray(local), L2L, 7),
                                by_hand.argmax(1))


def _objective(q, router, routes, local):
  """Hinton et al.'s objective, in numpy, written from its definition (no shared code with decide)."""
  total = 0.0
  coarse = np.array([q[H.offsets[s]:H.offsets[s] + H.sizes[s]].sum() for s in range(3)])
  total -= np.sum(router * np.log(coarse))
  for j, s in enumerate(routes):
    cells = q[H.offsets[s]:H.offsets[s] + H.sizes[s]]
    p = local[j, :H.sizes[s]]
    total -= np.sum(p * np.log(cells))
    if local.shape[-1] > 3:
      total -= local[j, 3] * np.log(1.0 - cells.sum())
  return total


@pytest.mark.parametrize('k', [1, 2])
@pytest.mark.parametrize('dustbin', [True, False])
def test_product_reaches_the_minimum_an_independent_optimiser_finds(k, dustbin):
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(10 * k + dustbin)
  router = _normalised(rng, (5, 3))
  routes = np.argsort(-router, axis=1)[:, :k].astype(np.int32)
  local = _local(rng, routes, dustbin)
  q = np.asarray(HINTON_DISTRIBUTION(jnp.asarray(router), jnp.asarray(routes), jnp.asarray(local), L2L, L2S))
  np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-5)
  for i in range(5):
    def f(z):
      p = np.exp(z - z.max())
      return _objective(p / p.sum(), router[i], routes[i], local[i])
    best = optimize.minimize(f, np.zeros(7), method='Nelder-Mead',
                             options=dict(maxiter=40000, maxfev=40000, xatol=1e-9, fatol=1e-12))
    ours = _objective(q[i], router[i], routes[i], local[i])
    assert ours <= best.fun + 1e-5, (i, ours, best.fun)
    z = np.exp(best.x - best.x.max())
    z /= z.sum()
    # The same minimiser where it is unique: each superclass's mass, and the split within the routed ones (within
    # a superclass no model sees, any split is as good).
    coarse = lambda p: np.array([p[H.offsets[s]:H.offsets[s] + H.sizes[s]].sum() for s in range(3)])
    np.testing.assert_allclose(coarse(q[i]), coarse(z), atol=2e-3)
    seen = np.isin(np.asarray(H.label_to_superclass), routes[i])
    np.testing.assert_allclose(q[i][seen], z[seen], atol=2e-3)


def test_hinton_of_one_certain_specialist_and_an_agreeing_router_is_that_answer():
  router = jnp.asarray([[0.0, 1.0, 0.0]])
  routes = jnp.asarray([[1]], jnp.int32)
  local = jnp.asarray([[[0.2, 0.8, 0.0, 0.0]]])  # superclass 1's subclasses are labels 3 and 4; no dustbin mass
  q = decide.hinton_distribution(router, routes, local, L2L, L2S)
  np.testing.assert_allclose(q, [[0, 0, 0, 0.2, 0.8, 0, 0]], atol=1e-6)


def test_a_dustbin_sure_it_is_not_its_superclass_sends_hintons_rule_to_the_routers_runner_up():
  # The router prefers superclass 0 (0.6) over 1 (0.4); specialist 0 says "not mine" with 0.95. Hard routing
  # answers inside superclass 0, Hinton's rule moves to superclass 1 (its specialist's favourite subclass).
  router = jnp.asarray([[0.6, 0.4, 0.0]])
  routes = jnp.asarray([[0, 1]], jnp.int32)
  local = jnp.asarray([[[0.03, 0.01, 0.01, 0.95], [0.1, 0.8, 0.0, 0.1]]])
  assert int(decide.hard(routes, local, L2L)[0]) == 0
  assert int(decide.hinton(router, routes, local, L2L, L2S)[0]) == 4
  rule = decide.Rule.parse('hinton:2')
  assert int(decide.decide(rule, router, routes, local, L2L, L2S)[0]) == 4


def test_top_routes_are_the_most_likely_first():
  probs = jnp.asarray([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
  np.testing.assert_array_equal(decide.top_routes(probs, 2), [[1, 2], [0, 2]])


def test_rules_compile_once_under_jit():
  traces = []

  @jax.jit
  def run(router, routes, local):
    traces.append(1)
    return decide.hinton(router, routes, local, L2L, L2S)

  rng = np.random.default_rng(0)
  for _ in range(3):
    router = jnp.asarray(_normalised(rng, (4, 3)))
    routes = decide.top_routes(router, 2)
    run(router, routes, jnp.asarray(_local(rng, np.asarray(routes), True)))
  assert len(traces) == 1


def test_hinton_is_a_mixture_a_confident_wrong_specialist_outvotes_a_sure_router_where_poe_does_not():
  # Router 0.9 on superclass 0; its specialist spreads (0.5 on label 0), superclass 1's is sure of label 3 (0.9,
  # 1.8 times 0.5). Hinton's sum of KLs follows the confident specialist; the product (and soft) the router.
  router = jnp.asarray([[0.9, 0.1, 0.0]])
  routes = jnp.asarray([[0, 1]], jnp.int32)
  local = jnp.asarray([[[0.5, 0.25, 0.25, 0.0], [0.9, 0.1, 0.0, 0.0]]])
  assert int(decide.hinton(router, routes, local, L2L, L2S)[0]) == 3
  assert int(decide.poe(router, routes, local, L2L, L2S)[0]) == 0
  assert int(decide.soft(router, routes, local, L2L, 7)[0]) == 0


def _poe_reference(router, routes, local, dustbin):
  """The product of experts by its definition, one image and one subclass at a time (numpy)."""
  sizes = np.asarray(H.sizes)
  out = np.zeros((router.shape[0], 7))
  for i in range(router.shape[0]):
    for c in range(7):
      s = int(H.label_to_superclass[c])
      if s not in routes[i]:
        continue  # only the routed superclasses' subclasses are candidates
      score = router[i, s]
      for j, m in enumerate(routes[i]):
        if m == s:
          score *= local[i, j, c - int(np.sum(sizes[:s]))]
        elif dustbin:
          score *= local[i, j, 3] / (7 - sizes[m])
      out[i, c] = score
  return out


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dustbin=st.booleans())
def test_poe_is_the_normalised_product_of_router_and_specialists_as_defined(seed, dustbin):
  rng = np.random.default_rng(seed)
  router = _normalised(rng, (5, 3))
  routes = np.asarray(decide.top_routes(jnp.asarray(router), 2))
  local = _local(rng, routes, dustbin)
  want = _poe_reference(router, routes, local, dustbin)
  got = np.exp(np.asarray(decide.poe_log_scores(jnp.asarray(router), jnp.asarray(routes, jnp.int32),
                                                 jnp.asarray(local), L2L, L2S), np.float64))
  np.testing.assert_allclose(got / got.sum(1, keepdims=True), want / want.sum(1, keepdims=True), rtol=1e-4,
                             atol=1e-6)
  if not dustbin:  # no dustbin: the product ranks as soft's average does
    np.testing.assert_array_equal(decide.poe(jnp.asarray(router), jnp.asarray(routes, jnp.int32), jnp.asarray(local),
                                             L2L, L2S),
                                  decide.soft(jnp.asarray(router), jnp.asarray(routes, jnp.int32), jnp.asarray(local),
                                              L2L, 7))
