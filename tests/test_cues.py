"""supersub_jax.data.cues: which cue kind sets a subclass, and that no kind's values tell the superclass."""

import numpy as np
import pytest
from scipy import stats

from supersub_jax.data import cues
from supersub_jax.data import render

SIZES = (12, 6, 4, 3, 3, 2, 2, 2, 2, 2)


@pytest.mark.parametrize('m', [1, 2, 3, 4, 5, 10])
def test_every_specificity_fits_the_default_sizes_and_kind_k_serves_superclasses_k_plus_multiples_of_m(m):
  assert cues.validate_specificity(SIZES, m) == m
  np.testing.assert_array_equal(cues.cue_kind_of(10, m), np.arange(10) % m)
  counts = cues.cue_value_counts(SIZES, m)
  for k in range(m):  # a served kind takes as many values as its largest superclass has subclasses
    assert counts[k] == max(SIZES[s] for s in range(10) if s % m == k)
  for k in range(m, len(cues.CUE_KINDS)):  # an unserved one is pure noise over all its values
    assert counts[k] == cues.CUE_VALUES[k]


def test_the_own_kind_carries_the_subclass_spread_over_its_values_and_every_other_kind_is_drawn():
  superclass, local = render.class_table(SIZES)
  rng = np.random.default_rng(0)
  values = np.concatenate([cues.cue_values(superclass, local, SIZES, 5, rng) for _ in range(50)])
  superclass, local = np.tile(superclass, 50), np.tile(local, 50)
  counts = cues.cue_value_counts(SIZES, 5)
  for s in range(10):
    kind, rows = s % 5, superclass == s
    # superclass 5 (2 subclasses) uses kind 0, the grating: its first patterns; superclass 6 (2 subclasses) uses
    # kind 1 (6 hues): values 0 and 3, as far apart as the kind allows.
    expected = local[rows] if kind == 0 else local[rows] * counts[kind] // SIZES[s]
    np.testing.assert_array_equal(values[rows, kind], expected)
    for other in set(range(len(cues.CUE_KINDS))) - {kind}:
      assert set(np.unique(values[rows, other])) == set(range(counts[other]))


def test_with_one_kind_per_superclass_no_kind_tells_the_superclass():
  # m = 10: kind k's values have the same (uniform) distribution on superclass k's images as on every other image,
  # chi-square against uniform on both sides.
  superclass, local = render.class_table(SIZES)
  per_class = 400
  superclass, local = np.repeat(superclass, per_class), np.repeat(local, per_class)
  values = cues.cue_values(superclass, local, SIZES, 10, np.random.default_rng(1))
  for k in range(10):
    for rows in (superclass == k, superclass != k):
      observed = np.bincount(values[rows, k], minlength=SIZES[k])
      assert len(observed) == SIZES[k]
      assert stats.chisquare(observed).pvalue > 1e-4, (k, observed)


def test_specificity_out_of_range_or_too_few_values_is_refused():
  for bad in (-1, 11, 1.5, True):
    with pytest.raises(ValueError, match='specificity'):
      cues.validate_specificity(SIZES, bad)
  with pytest.raises(ValueError, match="superclass 1 has 7 subclasses but its cue kind 'hue' tells only 6"):
    cues.validate_specificity((2, 7), 2)
