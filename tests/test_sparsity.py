"""Tests for supersub_jax.sparsity: magnitude masks, mask updates, schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from supersub_jax import sparsity


def _rand(seed, shape):
  return np.float32(np.random.RandomState(seed).randn(*shape))


def _tree(seed=0):
  return {'a': {'kernel': _rand(seed, (3, 3, 2, 4)), 'bias': None},
          'b': {'kernel': _rand(seed + 1, (5, 7))}, 'c': _rand(seed + 2, (6,))}


def _count(mask):
  return int(np.sum(np.asarray(mask)))


def _assert_magnitude_order(xs, masks):
  kept = np.concatenate([np.abs(x)[np.asarray(m)] for x, m in zip(xs, masks)])
  pruned = np.concatenate([np.abs(x)[~np.asarray(m)] for x, m in zip(xs, masks)])
  if kept.size and pruned.size:
    assert kept.min() >= pruned.max()


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), density=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**31 - 1))
def test_topk_mask_exact_count_and_keeps_largest(shape, density, seed):
  x = _rand(seed, shape)
  m = sparsity.topk_mask(x, density)
  assert m.shape == x.shape and m.dtype == jnp.bool_
  assert _count(m) == round(density * x.size)
  _assert_magnitude_order([x], [m])


@pytest.mark.parametrize('density', [0.0, 0.25, 0.5, 0.75, 1.0])
def test_topk_mask_under_jit_with_traced_density(density):
  x = _rand(0, (4, 8))
  m = jax.jit(sparsity.topk_mask)(x, jnp.float32(density))
  assert _count(m) == round(density * x.size)
  np.testing.assert_array_equal(m, sparsity.topk_mask(x, density))


def test_topk_mask_ties_broken_by_index():
  m = sparsity.topk_mask(np.ones((2, 5), np.float32), 0.3)
  np.testing.assert_array_equal(np.asarray(m).reshape(-1), [1, 1, 1, 0, 0, 0, 0, 0, 0, 0])


def _reference_top(x, mask, k):
  """numpy: a stable sort of -|x| with pruned and NaN entries at -1 (below every magnitude); the first k kept."""
  score = np.abs(x.astype(np.float32)).reshape(-1)
  score[np.isnan(score) | ~mask.reshape(-1)] = -1.0
  keep = np.zeros(score.size, bool)
  keep[np.argsort(-score, kind='stable')[:k]] = True
  return keep.reshape(x.shape)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 1e-38, 0.5, -0.5, 0.5000001, 3.0, -3.0,
                                        3.4e38, np.inf, -np.inf, np.nan]), min_size=1, max_size=40),
       kept=st.lists(st.booleans(), min_size=40, max_size=40), k_fraction=st.floats(0.0, 1.0))
@example(values=[0.0, 1e-45, 0.0], kept=[True] * 40, k_fraction=1 / 3)  # keys 1 and 2: adjacent
@example(values=[0.5, 0.5000001, 0.5], kept=[True] * 40, k_fraction=1 / 3)  # one ulp apart
@example(values=[3.4e38, np.inf, np.nan, 3.4e38], kept=[True, False] + [True] * 38, k_fraction=0.5)
def test_selection_matches_a_stable_sort_with_ties_zeros_subnormals_infinities_and_nan(values, kept, k_fraction):
  x = np.asarray(values, np.float32)
  mask = np.asarray(kept[:x.size])
  density = round(k_fraction * x.size) / x.size
  k = sparsity.num_kept(density, x.size)
  np.testing.assert_array_equal(np.asarray(sparsity.topk_mask(x, density)), _reference_top(x, np.ones_like(mask), k))
  np.testing.assert_array_equal(np.asarray(sparsity.update_masks({'k': x}, {'k': mask}, density)['k']),
                                _reference_top(x, mask, k) & mask)
  traced = jax.jit(sparsity.update_masks)({'k': x}, {'k': mask}, jnp.float32(density))['k']
  np.testing.assert_array_equal(np.asarray(traced), _reference_top(x, mask, k) & mask)


def test_num_kept_and_density_validation():
  assert sparsity.num_kept(0.5, 5) == 2  # half to even, like Python round
  assert sparsity.num_kept(0.3, 5) == 2
  assert sparsity.num_kept(1.0, 7) == 7
  with pytest.raises(ValueError, match='density'):
    sparsity.topk_mask(np.ones(4), 1.5)
  with pytest.raises(ValueError, match='density'):
    sparsity.num_kept(-0.1, 4)


@settings(max_examples=20, deadline=None)
@given(density=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_global_masks_one_threshold_exact_total(density, seed):
  t = _tree(seed)
  g = sparsity.global_topk_masks(t, density)
  assert g['a']['bias'] is None
  leaves, masks = jax.tree.leaves(t), jax.tree.leaves(g)
  total = sum(x.size for x in leaves)
  assert sum(_count(m) for m in masks) == round(density * total)
  _assert_magnitude_order(leaves, masks)
  assert jax.tree.structure(sparsity.masks_for(t, density, 'global')) == jax.tree.structure(g)


def test_global_differs_from_per_leaf():
  t = {'big': _rand(0, (20,)) * 100, 'small': _rand(1, (20,))}
  g = sparsity.masks_for(t, 0.5, 'global')
  p = sparsity.masks_for(t, 0.5, 'per_leaf')
  assert _count(g['big']) == 20 and _count(g['small']) == 0
  assert _count(p['big']) == 10 and _count(p['small']) == 10
  with pytest.raises(ValueError, match='scope'):
    sparsity.masks_for(t, 0.5, 'layerwise')


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scope=st.sampled_from(sparsity.SCOPES),
       densities=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4))
def test_update_masks_never_revives(seed, scope, densities):
  rng = np.random.RandomState(seed)
  t = _tree(seed)
  masks = sparsity.dense_masks(t)
  for d in densities:
    # Pruned entries get the largest magnitudes: a magnitude-only rule would revive them.
    t = jax.tree.map(lambda x, m: np.where(np.asarray(m), x, 100.0 + rng.rand(*x.shape)).astype(np.float32),
                     t, masks)
    old = masks
    kept_before = sum(_count(m) for m in jax.tree.leaves(old))
    masks = sparsity.update_masks(t, old, d, scope)
    for n, o in zip(jax.tree.leaves(masks), jax.tree.leaves(old)):
      assert not np.any(np.asarray(n) & ~np.asarray(o))
    if scope == 'global':
      total = sum(x.size for x in jax.tree.leaves(t))
      assert sum(_count(m) for m in jax.tree.leaves(masks)) == min(round(d * total), kept_before)
    else:
      for x, n, o in zip(jax.tree.leaves(t), jax.tree.leaves(masks), jax.tree.leaves(old)):
        assert _count(n) == min(round(d * x.size), _count(o))


def test_update_masks_prefers_kept_zeros_over_pruned():
  # All-zero delta (as at init): ties must not hand slots to already pruned entries.
  x = np.zeros(10, np.float32)
  old = np.arange(10) >= 5
  new = sparsity.update_masks({'k': x}, {'k': old}, 0.3)['k']
  assert _count(new) == 3 and not np.any(np.asarray(new) & ~old)


def test_update_masks_jit_traced_density():
  t = _tree(3)
  m0 = sparsity.dense_masks(t)
  f = jax.jit(sparsity.update_masks, static_argnums=3)
  for scope in sparsity.SCOPES:
    np.testing.assert_equal(jax.tree.map(np.asarray, f(t, m0, jnp.float32(0.25), scope)),
                            jax.tree.map(np.asarray, sparsity.update_masks(t, m0, 0.25, scope)))


def test_apply_masks_exact_zero_and_passthrough():
  t = {'w': np.float32([-1.0, np.nan, np.inf, 2.0]), 'n': None, 'u': np.float32([3.0])}
  masks = {'w': np.array([False, False, False, True]), 'n': None, 'u': None}
  out = sparsity.apply_masks(t, masks)
  np.testing.assert_array_equal(np.asarray(out['w']).view(np.uint32), np.float32([0, 0, 0, 2]).view(np.uint32))
  assert out['n'] is None
  np.testing.assert_array_equal(out['u'], [3.0])
  assert sparsity.apply_masks(t, None) is t
  g = jax.grad(lambda w: jnp.sum(sparsity.apply_masks({'w': w}, {'w': masks['w']})['w']))(np.ones(4, np.float32))
  np.testing.assert_array_equal(g, [0, 0, 0, 1])


def test_kept_fraction():
  masks = {'a': np.array([True, False, False, False]), 'b': None, 'c': np.ones(4, bool)}
  assert float(sparsity.kept_fraction(masks)) == pytest.approx(5 / 8)


def test_masked_entries_stay_zero_with_momentum_and_weight_decay():
  """The train-step contract: grads through masked delta, masks re-applied after the update."""
  target = {'k': _rand(1, (6, 8)), 'b': _rand(2, (8,)), 'none': None}
  delta = {'k': np.zeros((6, 8), np.float32), 'b': np.zeros(8, np.float32), 'none': None}
  opt = optax.chain(optax.add_decayed_weights(0.05), optax.sgd(0.1, momentum=0.9))

  def loss(d, masks):
    d = sparsity.apply_masks(d, masks)
    return sum(jnp.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(d), jax.tree.leaves(target)))

  @jax.jit
  def step(d, state, masks, reapply):
    grads = jax.grad(loss)(d, masks)
    updates, state = opt.update(grads, state, d)
    d = optax.apply_updates(d, updates)
    return jax.lax.cond(reapply, lambda: sparsity.apply_masks(d, masks), lambda: d), state

  def run(reapply):
    d, state = delta, opt.init(delta)
    masks = sparsity.dense_masks(d)
    for i in range(30):
      if i == 10:  # prune mid-training: the momentum of pruned entries is non-zero by now
        masks = sparsity.update_masks(d, masks, 0.4)
        d = sparsity.apply_masks(d, masks)
      d, state = step(d, state, masks, reapply)
    return d, masks

  d, masks = run(True)
  for x, m in zip(jax.tree.leaves(d), jax.tree.leaves(masks)):
    x, m = np.asarray(x), np.asarray(m)
    np.testing.assert_array_equal(x[~m].view(np.uint32), 0)  # exactly +0.0
    assert np.all(x[m] != 0) and 0 < m.sum() < m.size
  # Control: without re-applying, momentum moves pruned entries (so the check above can fail).
  d, masks = run(False)
  assert any(np.any(np.asarray(x)[~np.asarray(m)] != 0) for x, m in zip(jax.tree.leaves(d), jax.tree.leaves(masks)))


# ----------------------------------------------------------------------------- schedules


def test_polynomial_density_endpoints_and_formula():
  kw = dict(final_density=0.1, begin_step=100, end_step=300)
  f = lambda s: float(sparsity.polynomial_density(s, **kw))
  assert f(0) == 1.0 and f(100) == 1.0
  assert f(300) == pytest.approx(0.1) and f(10_000) == pytest.approx(0.1)
  assert f(200) == pytest.approx(0.1 + 0.9 * 0.5**3)
  steps = np.arange(0, 400, 7)
  vals = np.asarray(jax.jit(jax.vmap(lambda s: sparsity.polynomial_density(s, **kw)))(steps))
  assert np.all(np.diff(vals) <= 0)
  assert float(sparsity.polynomial_density(200, final_density=0.2, begin_step=100, end_step=300,
                                           initial_density=0.6, power=1)) == pytest.approx(0.4)
  with pytest.raises(ValueError, match='end_step'):
    sparsity.polynomial_density(0, final_density=0.1, begin_step=5, end_step=5)


def test_one_shot_density():
  f = lambda s: float(sparsity.one_shot_density(s, final_density=0.05, prune_step=10))
  assert f(0) == 1.0 and f(9) == 1.0 and f(10) == pytest.approx(0.05) and f(99) == pytest.approx(0.05)
  assert float(jax.jit(lambda s: sparsity.one_shot_density(s, final_density=0.05, prune_step=10))(11)) \
      == pytest.approx(0.05)


def test_make_density_schedule():
  one = sparsity.make_density_schedule('one_shot', 0.1, 5, 50)
  grad = sparsity.make_density_schedule('gradual', 0.1, 5, 50)
  none = sparsity.make_density_schedule('none', 0.1, 5, 50)
  for s in (0, 5, 20, 50, 80):
    assert float(jax.jit(none)(s)) == 1.0
    assert float(jax.jit(one)(s)) == pytest.approx(1.0 if s < 5 else 0.1)
    assert float(jax.jit(grad)(s)) == pytest.approx(float(sparsity.polynomial_density(
        s, final_density=0.1, begin_step=5, end_step=50)))
  with pytest.raises(ValueError, match='kind'):
    sparsity.make_density_schedule('cosine', 0.1, 0, 10)
  with pytest.raises(ValueError, match='end_step'):
    sparsity.make_density_schedule('gradual', 0.1, 10, 10)
