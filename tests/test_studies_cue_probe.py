"""studies/cue_probe.py: the flat learner's superclass, read from summed subclass probabilities."""

import numpy as np
import pytest

from studies import cue_probe


def test_superclass_level_sums_subclass_probabilities_and_counts_errors_that_name_the_morph_partner():
  # Ten superclasses (render's partner of s is s + 5 mod 10); superclass 0 has two subclasses (labels 0, 1), every
  # other one (labels 2..10 for superclasses 1..9).
  sizes = (2,) + (1,) * 9
  probs = np.full((4, 11), 1e-6)
  probs[0, [0, 1, 2]] = 0.3, 0.3, 0.4   # true 0: its two subclasses sum to 0.6 > 0.4, though label 2 is the argmax
  probs[1, 6] = 1.0                     # true 0, answered superclass 5: its morph partner
  probs[2, 2] = 1.0                     # true 1, right
  probs[3, 2] = 1.0                     # true 5, answered superclass 1: not its partner (0)
  labels = np.array([0, 1, 2, 6])
  level = cue_probe.superclass_level(np.log(probs), labels, sizes)
  assert level['top1'] == pytest.approx(0.5)
  assert level['partner_share'] == pytest.approx(0.5)
  assert level['per_superclass'][:2] == pytest.approx([0.5, 1.0]) and level['per_superclass'][5] == 0.0
  assert np.isnan(level['per_superclass'][2])  # no image of superclass 2
