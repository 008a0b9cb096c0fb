"""Tests for benchmarks/offline.py: the whole-split path predicts what inference.predict predicts (the hard rule)."""

import jax
import numpy as np
import pytest

from specialist_worlds import IMAGE_SHAPE
from specialist_worlds import world as _world
from benchmarks import offline
from supersub_jax import bank as bank_lib
from supersub_jax import decide
from supersub_jax import inference as inf


def test_batch_plan_covers_every_image_once_in_the_given_shapes():
  assert offline.batch_plan(300, (256, 32)) == [(0, 256), (256, 32), (288, 32)]
  assert offline.batch_plan(0, (8,)) == []
  for count in (1, 7, 8, 9, 40):
    plan = offline.batch_plan(count, (16, 8, 3))
    assert [s for s, _ in plan] == list(np.cumsum([0] + [n for _, n in plan])[:-1])
    assert plan[-1][0] + plan[-1][1] >= count and plan[-1][0] < count  # covered, the last one padded at most
    assert {n for _, n in plan} <= {16, 8, 3}
  with pytest.raises(ValueError, match='batch_sizes'):
    offline.batch_plan(3, ())


@pytest.mark.parametrize('materialize', ['layer', 'group'])
def test_predict_split_equals_predict_batch_by_batch(materialize):
  hierarchy, gm, sm, gen, exported = _world((2, 3, 4))
  images = np.float32(np.random.RandomState(5).randn(14, *IMAGE_SHAPE))
  # Centre the generalist on these images so that they reach several specialists.
  _, features = jax.jit(lambda v, x: gm.apply(v, x, train=False, return_features=True))(gen, images)
  features = np.asarray(features)
  head = gen['params']['head']
  head['kernel'] = head['kernel'] * np.float32(10.0 / np.std(features))
  head['bias'] = np.float32(-features.mean(0) @ head['kernel'])
  state = bank_lib.build_supersub(gen, exported, hierarchy)
  batches = [images[:8], images[8:]]  # a split in two batches of different sizes
  kw = dict(generalist_model=gm, specialist_model=sm)
  want = [inf.predict(state, x, decide.Rule('hard'), chunk_sizes=(4,), **kw) for x in batches]
  got = offline.predict_split(state, batches, batch_sizes=(4, 2), materialize=materialize, **kw)
  assert len(np.unique(got['superclass'])) >= 2
  for key in ('superclass', 'routes', 'label'):
    np.testing.assert_array_equal(got[key], np.concatenate([np.asarray(w[key]) for w in want]))
  np.testing.assert_allclose(got['router'], np.concatenate([np.asarray(w['router']) for w in want]), rtol=1e-6)
  assert got['specialist_batches'] >= 3
