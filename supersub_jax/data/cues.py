"""Cue kinds: what sets a subclass in the synthetic images with ``specificity`` m >= 1 (render.py's docstring).

Pure numpy over per-image arrays; `render.render` calls these.  Superclass s takes its subclass from kind
``CUE_KINDS[s % m]``; every image draws every kind, and only its own superclass's kind is set by its label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


# Kind k can tell apart at most CUE_VALUES[k] subclasses.  Ordered so that with the default sizes
# (12, 6, 4, 3, 3, 2, 2, 2, 2, 2) any specificity m fits: kind k serves superclasses k, k + m, ...
CUE_KINDS: tuple[str, ...] = (
    'grating',   # the object's texture: (orientation, period) of GRATINGS, +-10 degrees and +-10% jitter
    'hue',       # the object's hue: one of 6 bins of the colour circle, +-0.3 bin jitter
    'spots',     # 1 to 4 dark spots on a circle inside the object
    'notch',     # a bite out of the outline: up, side or down (side drawn at random), +-15 degrees
    'outline',   # a rim inside the outline: none, dark or bright
    'aspect',    # the object stretched wide or tall (x1.25 +- 0.06)
    'two_tone',  # one half of the object lighter: split across (top/bottom) or along (left/right) the vertical
    'blur',      # the outline sharp (0.8 px) or soft (2.6 px), +-0.3 px
    'glyph',     # a bright mark at the object's centre: a plus or a ring
    'marks',     # two small bright marks somewhere in the image: side by side or one above the other
)
CUE_VALUES: tuple[int, ...] = (12, 6, 4, 3, 3, 2, 2, 2, 2, 2)
assert len(CUE_VALUES) == len(CUE_KINDS)


def cue_kind_of(num_superclasses: int, specificity: int) -> np.ndarray:
  """int32 [S]: the cue kind (index into CUE_KINDS) that sets superclass s's subclass: s % specificity."""
  return (np.arange(num_superclasses) % specificity).astype(np.int32)


def cue_value_counts(sizes: Sequence[int], specificity: int) -> np.ndarray:
  """int32 [len(CUE_KINDS)]: how many values each kind takes in this dataset: the most subclasses of a superclass it
  serves, or every value it has where it serves none (then it is pure noise)."""
  counts = np.array(CUE_VALUES, np.int32)
  kinds = cue_kind_of(len(sizes), specificity)
  for k in range(len(CUE_KINDS)):
    served = [n for n, kind in zip(sizes, kinds) if kind == k]
    if served:
      counts[k] = max(served)
  return counts


def validate_specificity(sizes: Sequence[int], specificity: int) -> int:
  """Returns ``specificity`` after checking every cue kind can tell its superclasses' subclasses apart."""
  if isinstance(specificity, bool) or int(specificity) != specificity or not 0 <= specificity <= len(CUE_KINDS):
    raise ValueError(f'specificity={specificity!r}: an integer in [0, {len(CUE_KINDS)}] (0: the texture grating '
                     'for every superclass, as dataset 1.2.0; m >= 1: superclass s takes cue kind s % m).')
  specificity = int(specificity)
  if specificity:
    for s, (n, k) in enumerate(zip(sizes, cue_kind_of(len(sizes), specificity))):
      if n > CUE_VALUES[k]:
        raise ValueError(f'specificity={specificity}: superclass {s} has {n} subclasses but its cue kind '
                         f'{CUE_KINDS[k]!r} tells only {CUE_VALUES[k]} apart; use another specificity or sizes '
                         f'that fit CUE_VALUES={CUE_VALUES}.')
  return specificity


def cue_values(superclass: np.ndarray, local: np.ndarray, sizes: Sequence[int], specificity: int,
               rng: np.random.Generator) -> np.ndarray:
  """int32 [N, len(CUE_KINDS)]: every image's value of every cue kind, from its superclass and local subclass index
  (int [N] each).

  The kind of the image's superclass takes the value of its subclass, spread over the kind's values (subclass j of a
  superclass with n takes value floor(j * count / n), so two subclasses are as far apart as the kind allows); every
  other kind takes a value drawn uniformly from its ``cue_value_counts``: the marginal a superclass that uses the
  kind with that many subclasses gives it, so where each kind serves one superclass (m = 10) no kind's value tells the
  superclass.  The grating keeps GRATINGS' order (its first n patterns are the most distinct ones).
  """
  counts = cue_value_counts(sizes, specificity)
  values = np.stack([rng.integers(0, c, superclass.shape[0]) for c in counts], axis=1).astype(np.int32)
  kind = cue_kind_of(len(sizes), specificity)[superclass]
  n = np.asarray(sizes, np.int32)[superclass]
  own = np.where(kind == 0, local, (local * counts[kind]) // n)
  values[np.arange(superclass.shape[0]), kind] = own
  return values


def _disc(u: np.ndarray, v: np.ndarray, cu, cv, radius, scale) -> np.ndarray:
  """Soft disc masks: float32 [N, H, W] in [0, 1]; u, v [N, H, W] object coordinates; cu, cv, radius [N] in the same
  units; scale [N, 1, 1] pixels per unit (one pixel of soft edge)."""
  d = np.sqrt((u - cu[:, None, None]) ** 2 + (v - cv[:, None, None]) ** 2) - radius[:, None, None]
  return np.clip(0.5 - d * scale, 0.0, 1.0)


def layers(cues: np.ndarray, counts: np.ndarray, n: int, uniform, rng) -> dict:
  """Per-image parameters of every cue kind from its value (float32 [N] each; see CUE_KINDS for the meanings)."""
  hue = (cues[:, 1] + uniform(-0.3, 0.3)) / counts[1]
  side = np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32)
  # Spread over [0, 180] degrees from up: with 3 values up, side, down.
  notch = np.deg2rad(cues[:, 3] * 180.0 / max(int(counts[3]) - 1, 1) + uniform(-15, 15))
  stretch = np.where(cues[:, 5] == 0, 1.25, 1 / 1.25).astype(np.float32) * uniform(0.94, 1.06)
  softness = np.where(cues[:, 7] == 0, 0.8, 2.6).astype(np.float32) + uniform(-0.3, 0.3)
  return dict(hue=hue % 1.0, notch_u=side * np.sin(notch) * 0.8, notch_v=-np.cos(notch) * 0.8, stretch=stretch,
              softness=softness, spots=cues[:, 2] + 1, spot_start=uniform(0, 2 * np.pi), outline=cues[:, 4],
              tone_axis=cues[:, 6], tone_side=side * np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32),
              glyph=cues[:, 8], marks=cues[:, 9])


def shade(cue: dict, u, v, dist, rad) -> np.ndarray:
  """float32 [N, H, W]: the object's brightness factor from the cues painted on it: two tones, spots, the rim."""
  def per_image(x):
    return x[:, None, None]
  # Two tones: one half 30% lighter; the split is across (axis 0: top/bottom) or along (1: left/right) the vertical.
  across = np.where(per_image(cue['tone_axis']) == 0, v, u) * per_image(cue['tone_side'])
  shade = 1.0 + 0.3 * np.clip(0.5 + across * rad, 0.0, 1.0)
  # Spots: 1 to 4 dark discs evenly spaced on a circle of half the radius, from a random start.
  spots = np.zeros_like(u)
  for i in range(int(cue['spots'].max())):
    on = cue['spots'] > i
    phi = cue['spot_start'] + 2 * np.pi * i / np.maximum(cue['spots'], 1)
    disc = _disc(u, v, 0.5 * np.cos(phi), 0.5 * np.sin(phi), np.full_like(phi, 0.17), rad)
    spots = np.maximum(spots, disc * per_image(on.astype(np.float32)))
  shade = shade * (1.0 - 0.7 * spots)
  # The rim: a band of 1.2 pixels inside the outline, darker (1) or lighter (2), or none (0).
  band = np.clip(1.0 - np.abs(dist * rad + 1.1) / 0.8, 0.0, 1.0)
  rim = np.select([per_image(cue['outline']) == 1, per_image(cue['outline']) == 2], [0.45, 1.5], 1.0)
  return shade * (1.0 + band * (rim - 1.0))


def overlays(img, cue: dict, u, v, rad, xs, ys, size: float, uniform) -> np.ndarray:
  """The bright marks drawn over the image: the glyph at the object's centre and the pair of marks."""
  n = img.shape[0]
  r = np.sqrt(u * u + v * v)
  plus = np.minimum(np.maximum(np.abs(u) - 0.09, np.abs(v) - 0.3), np.maximum(np.abs(u) - 0.3, np.abs(v) - 0.09))
  ring = np.abs(r - 0.24) - 0.08
  glyph = np.where(cue['glyph'][:, None, None] == 0, plus, ring)
  alpha = np.clip(0.5 - glyph * rad, 0.0, 1.0) * 0.8
  img = img + alpha[..., None] * (0.95 - img)
  # Two 2-pixel marks 4 pixels apart, side by side (0) or one above the other (1), anywhere but the border.
  mx, my = uniform(0.15, 0.85) * size, uniform(0.15, 0.85) * size
  dx = np.where(cue['marks'] == 0, 2.0, 0.0).astype(np.float32) * size / 32
  dy = np.where(cue['marks'] == 0, 0.0, 2.0).astype(np.float32) * size / 32
  half = np.float32(size / 32)
  marks = np.zeros(img.shape[:3], np.float32)
  for sign in (-1.0, 1.0):
    px, py = (mx + sign * dx)[:, None, None], (my + sign * dy)[:, None, None]
    box = np.maximum(np.abs(xs[None] - px), np.abs(ys[None] - py)) - half
    marks = np.maximum(marks, np.clip(0.5 - box, 0.0, 1.0))
  del n
  return img + marks[..., None] * (0.95 - img)


