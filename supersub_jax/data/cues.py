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
    'grating',     # the object's texture: (orientation, period) of GRATINGS, +-10 degrees and +-10% jitter
    'hue',         # the object's hue: one of 6 bins of the colour circle, with jitter
    'satellites',  # 1 to 4 small dots around the object, evenly spaced from a random angle
    'notch',       # a bite out of the outline: up, side or down (side drawn at random), +-15 degrees
    'outline',     # a rim inside the outline: none, dark or bright
    'aspect',      # the object stretched wide or tall
    'shadow',      # a dark copy of the silhouette beneath it, offset down or to a side (drawn at random)
    'blur',        # the outline sharp or soft
    'glyph',       # a small bright plus or ring beside the object
    'marks',       # two small bright marks beside the object: side by side or one above the other
)
CUE_VALUES: tuple[int, ...] = (12, 6, 4, 3, 3, 2, 2, 2, 2, 2)
assert len(CUE_VALUES) == len(CUE_KINDS)

# The object's interior belongs to the grating alone: every other kind is drawn in its colour (hue), its shape
# (aspect, notch), its edge (outline, blur) or the background beside it (satellites, shadow, glyph, marks), because a
# kind painted over the texture as noise hides the grating (studies/cue_probe.py: a half-brighter tone over a star's
# texture took the grating's probe from 0.92 to 0.64). How loud each kind is:
SALIENCE: dict[str, float] = {
    'grating_contrast': 0.6,  # the texture's contrast is drawn from [this / 2.5, this] (dataset 1.2.0: 0.2, which
                              # the probe found far harder than any other kind)
    'hue_jitter': 0.3,        # +- this many bins around a hue bin's centre
    'notch_radius': 0.6,      # the bite's radius, in object radii (its centre 0.85 from the object's)
    'outline_dark': 0.35,     # the dark rim's brightness factor
    'outline_bright': 1.8,    # the bright rim's brightness factor
    'stretch': 1.3,           # wide: x this along u and / this along v; tall: the reverse
    'shadow_offset': 3.5,     # pixels (at 32x32) the shadow lies below or beside the object
    'shadow_alpha': 0.8,      # its opacity
    'blur_sharp': 0.8,        # the outline's width in pixels, sharp
    'blur_soft': 3.0,         # and soft
    'satellite_alpha': 1.0,   # the satellites' opacity
    'satellite_radius': 1.6,  # and radius, pixels at 32x32
    'glyph_alpha': 1.0,       # the glyph's opacity
    'marks_alpha': 1.0,       # the marks' opacity
}


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


def layers(cues: np.ndarray, counts: np.ndarray, n: int, uniform, rng, salience: dict) -> dict:
  """Per-image parameters of every cue kind from its value (float32 [N] each; see CUE_KINDS for the meanings), at
  ``salience`` (SALIENCE's keys)."""
  def side():
    return np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32)
  hue = (cues[:, 1] + uniform(-salience['hue_jitter'], salience['hue_jitter'])) / counts[1]
  # Spread over [0, 180] degrees from up: with 3 values up, side, down.
  notch = np.deg2rad(cues[:, 3] * 180.0 / max(int(counts[3]) - 1, 1) + uniform(-15, 15))
  notch_side = side()
  stretch = (np.where(cues[:, 5] == 0, salience['stretch'], 1 / salience['stretch']).astype(np.float32)
             * uniform(0.97, 1.03))
  softness = (np.where(cues[:, 7] == 0, salience['blur_sharp'], salience['blur_soft']).astype(np.float32)
              + uniform(-0.2, 0.2))
  down = cues[:, 6] == 0
  shadow_dx = np.where(down, 0.0, side() * salience['shadow_offset']).astype(np.float32)
  shadow_dy = np.where(down, salience['shadow_offset'], 0.0).astype(np.float32)
  return dict(hue=hue % 1.0, notch_u=notch_side * np.sin(notch) * 0.85, notch_v=-np.cos(notch) * 0.85,
              stretch=stretch, softness=softness, satellites=cues[:, 2] + 1, satellite_start=uniform(0, 2 * np.pi),
              outline=cues[:, 4], shadow_dx=shadow_dx, shadow_dy=shadow_dy, glyph=cues[:, 8],
              glyph_angle=uniform(0, 2 * np.pi), marks=cues[:, 9], marks_angle=uniform(0, 2 * np.pi),
              salience=salience)


def rim(cue: dict, dist, rad) -> np.ndarray:
  """float32 [N, H, W]: the object's brightness factor from its rim, a band of 1.2 pixels inside the outline, darker
  (outline 1) or lighter (2), or none (0). dist: signed distance in radius units; rad: [N, 1, 1] pixels per unit."""
  band = np.clip(1.0 - np.abs(dist * rad + 1.1) / 0.8, 0.0, 1.0)
  outline = cue['outline'][:, None, None]
  factor = np.select([outline == 1, outline == 2],
                     [cue['salience']['outline_dark'], cue['salience']['outline_bright']], 1.0)
  return 1.0 + band * (factor - 1.0)


def _blend(img, alpha, value):
  """img float32 [N, H, W, 3] moved toward ``value`` by alpha [N, H, W]."""
  return img + alpha[..., None] * (value - img)


def beside(img, cue: dict, cx, cy, radius, xs, ys, size: float) -> np.ndarray:
  """Draws the kinds that live beside the object, over the background and the object alike: the satellites (1 to 4
  dots on a circle of 1.3 radii), the glyph (a plus or a ring of 2.5 pixels, 1.55 radii out at a random angle) and
  the marks (two 2-pixel squares 4 pixels apart, side by side or stacked, 1.55 radii out at another angle).
  cx, cy, radius: float32 [N] pixels."""
  salience, scale = cue['salience'], np.float32(size / 32)
  dx, dy = xs[None] - cx[:, None, None], ys[None] - cy[:, None, None]
  dots = np.zeros(img.shape[:3], np.float32)
  for i in range(int(cue['satellites'].max())):
    on = (cue['satellites'] > i).astype(np.float32)[:, None, None]
    phi = cue['satellite_start'] + 2 * np.pi * i / cue['satellites']
    px, py = 1.3 * radius * np.cos(phi), 1.3 * radius * np.sin(phi)
    d = np.sqrt((dx - px[:, None, None]) ** 2 + (dy - py[:, None, None]) ** 2) - salience['satellite_radius'] * scale
    dots = np.maximum(dots, on * np.clip(0.5 - d, 0.0, 1.0))
  img = _blend(img, salience['satellite_alpha'] * dots, 0.95)
  gx = (dx - (1.55 * radius * np.cos(cue['glyph_angle']))[:, None, None]) / scale
  gy = (dy - (1.55 * radius * np.sin(cue['glyph_angle']))[:, None, None]) / scale
  plus = np.minimum(np.maximum(np.abs(gx) - 0.5, np.abs(gy) - 2.0), np.maximum(np.abs(gx) - 2.0, np.abs(gy) - 0.5))
  ring = np.abs(np.sqrt(gx * gx + gy * gy) - 1.6) - 0.5
  glyph = np.where(cue['glyph'][:, None, None] == 0, plus, ring)
  img = _blend(img, salience['glyph_alpha'] * np.clip(0.5 - glyph, 0.0, 1.0), 0.95)
  mx = dx - (1.55 * radius * np.cos(cue['marks_angle']))[:, None, None]
  my = dy - (1.55 * radius * np.sin(cue['marks_angle']))[:, None, None]
  step_x = np.where(cue['marks'] == 0, 2.0, 0.0).astype(np.float32)[:, None, None] * scale
  step_y = np.where(cue['marks'] == 0, 0.0, 2.0).astype(np.float32)[:, None, None] * scale
  marks = np.zeros(img.shape[:3], np.float32)
  for sign in (-1.0, 1.0):
    box = np.maximum(np.abs(mx - sign * step_x), np.abs(my - sign * step_y)) - scale
    marks = np.maximum(marks, np.clip(0.5 - box, 0.0, 1.0))
  return _blend(img, salience['marks_alpha'] * marks, 0.95)
