"""Tests for supersub_jax.inference.route: every image through its routed specialist, grouped on device (the loop of
chunks and the padded single call), and the local distributions the decision rules read."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supersub_jax import bank as bank_lib
from supersub_jax import decide
from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax.inference import route as route_lib
from supersub_jax.inference.unpack import Specialists


def _id_logits_fn(k, chunk):
  """Logits that spell out who produced them: [k, image id, 1000 k + id]."""
  ids = chunk[:, 0]
  kf = jnp.full_like(ids, k.astype(jnp.float32))
  return jnp.stack([kf, ids, 1000.0 * kf + ids], axis=-1)


# The specialist "variables" are its index: load is the identity.
_ID = Specialists(load=lambda k: k, apply=_id_logits_fn)


@functools.lru_cache(maxsize=None)
def _jitted_route(num_superclasses, chunk_sizes):
  return jax.jit(functools.partial(route_lib.route, specialists=_ID, num_superclasses=num_superclasses,
                                   chunk_sizes=chunk_sizes))


def _check_routed(out, routes):
  out = np.asarray(out)
  for i, r in enumerate(routes):
    if r < 0:
      assert (out[i] == decide.NEG_LOGIT).all(), (i, out[i])
    else:
      np.testing.assert_array_equal(out[i], [r, i, 1000 * r + i])


def _routes_and_images(data, b: int, n: int):
  """B routes drawn in [-1, n) (-1: no specialist) and images float32[B, 2] whose values are their indices."""
  routes = np.asarray(data.draw(st.lists(st.integers(-1, n - 1), min_size=b, max_size=b)), np.int32)
  return routes, np.arange(b, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), b=st.sampled_from([1, 5, 12]), n=st.sampled_from([1, 3]),
       chunks=st.sampled_from([(1,), (3,), (16,), (4, 1), (8, 3, 2)]))
def test_route_gives_every_image_its_specialists_output(data, b, n, chunks):
  routes, images = _routes_and_images(data, b, n)
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
  out = jax.jit(functools.partial(route_lib.route, specialists=Specialists(load, apply), num_superclasses=4,
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
    route_lib.route(images, np.zeros(4, np.int32), _ID, num_superclasses=2, chunk_sizes=(4, 0))
  with pytest.raises(ValueError, match='routes must be'):
    route_lib.route(images, np.zeros(3, np.int32), _ID, num_superclasses=2, chunk_sizes=2)
  with pytest.raises(ValueError, match=r'\[chunk=2, S\]'):
    route_lib.route(images, np.zeros(4, np.int32), Specialists(lambda k: k, lambda k, x: x[:1]), num_superclasses=2,
              chunk_sizes=2)



@functools.lru_cache(maxsize=None)
def _jitted_route_padded(num_superclasses, slot_size):
  return jax.jit(functools.partial(route_lib.route_padded, specialists=_ID, num_superclasses=num_superclasses,
                                   slot_size=slot_size))


@settings(max_examples=25, deadline=None)
@given(data=st.data(), b=st.sampled_from([1, 5, 12]), n=st.sampled_from([1, 3]), slot=st.sampled_from([1, 3, 16]))
def test_route_padded_gives_every_image_its_specialists_output(data, b, n, slot):
  routes, images = _routes_and_images(data, b, n)
  out = _jitted_route_padded(n, slot)(images, routes)
  assert out.shape == (b, 3) and out.dtype == jnp.float32
  _check_routed(out, routes)


def test_num_slots_holds_the_worst_routing():
  for b, n, c in [(256, 10, 32), (256, 10, 16), (5, 3, 4), (1, 20, 8), (40, 2, 1)]:
    # Worst case: one image in each of n - 1 groups, the rest in one (every group wastes c - 1 rows at most).
    counts = [1] * (min(n, b) - 1) + [b - min(n, b) + 1]
    assert sum(-(-x // c) for x in counts) <= route_lib.num_slots(b, n, c)



def test_local_distributions_put_no_mass_on_padded_classes_and_keep_the_dustbin():
  # Superclasses of 1 and 3 subclasses (S = 3) and a dustbin column: specialist k's logits for image i are
  # [i, 2 i, 50, -1] (the third column is padding for superclass 0).
  h = bank_lib.HierarchyArrays.from_hierarchy(hierarchy_lib.synthetic((1, 3)))
  fn = lambda k, x: jnp.stack([x[:, 0], 2 * x[:, 0], jnp.full_like(x[:, 0], 50.0), -jnp.ones_like(x[:, 0])], -1)
  images = np.arange(4, dtype=np.float32)[:, None]
  routes = np.asarray([0, 1, -1, 0], np.int32)
  for routing in route_lib.ROUTINGS:
    got = np.asarray(jax.jit(functools.partial(
        route_lib.local_distributions, specialists=Specialists(lambda k: k, fn), hierarchy=h, chunk_sizes=(2,),
        routing=routing, slot_size=2))(images, routes))
    for i, k in enumerate(routes):
      logits = np.asarray([i, 2 * i, 50.0, -1.0])
      if k < 0:  # skipped: every logit NEG_LOGIT, a uniform row the rules never read
        np.testing.assert_allclose(got[i], 0.25)
        continue
      valid = np.append(np.asarray(h.local_valid[k]), True)  # the dustbin column is always valid
      want = np.where(valid, np.exp(logits - logits[valid].max()), 0.0)
      np.testing.assert_allclose(got[i], want / want.sum(), rtol=1e-6, err_msg=f'{routing} image {i}')
  with pytest.raises(ValueError, match='routing'):
    route_lib.local_logits(images, routes, Specialists(lambda k: k, fn), h, chunk_sizes=(2,), routing='grouped')
  masked = route_lib.mask_local_logits(jnp.zeros((1, 4)), jnp.zeros(1, jnp.int32), h)
  assert float(masked[0, 1]) == decide.NEG_LOGIT  # one home for the value: decide's
