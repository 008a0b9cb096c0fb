"""studies/superclass_readout.py: a flat network's subclass logits pooled into superclass scores."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from studies import superclass_readout

SIZES = (3, 2, 1)


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.float64, (4, 6), elements=st.floats(-20, 20)))
def test_logsumexp_ranks_superclasses_by_their_summed_softmax_probability(logits):
  scores = superclass_readout.readouts(logits, SIZES)['logsumexp']
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  summed = np.stack([probs[:, :3].sum(-1), probs[:, 3:5].sum(-1), probs[:, 5]], -1)
  # log of the summed probability, up to the per-image log of the softmax's normaliser.
  offset = np.log(summed) - scores
  np.testing.assert_allclose(offset, offset[:, :1] * np.ones_like(offset), atol=1e-9)


def test_mean_plus_log_n_is_the_logsumexp_where_a_superclasss_subclasses_score_alike_and_below_it_elsewhere():
  alike = np.array([[1.0, 1.0, 1.0, -2.0, -2.0, 0.5]])
  pooled = superclass_readout.readouts(alike, SIZES)
  np.testing.assert_allclose(pooled['mean + log n'], pooled['logsumexp'], atol=1e-12)
  apart = np.array([[4.0, 0.0, 0.0, 3.0, -3.0, 0.5]])
  pooled = superclass_readout.readouts(apart, SIZES)
  assert (pooled['mean + log n'][:, :2] < pooled['logsumexp'][:, :2]).all()  # Jensen: strictly, unequal logits
  np.testing.assert_allclose(pooled['max'], [[4.0 - 4.0, 3.0 - 4.0, 0.5 - 4.0]])  # shifted by the row's max
