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
    'satellites',  # 1 to 4 white dots beside the object, laid out as a die's pips
    'notch',       # a bite out of the outline: up, side or down (side drawn at random), +-15 degrees
    'outline',     # a flat rim inside the outline: none, dark or bright
    'aspect',      # the object stretched wide or tall
    'shadow',      # a copy of the silhouette beneath it, offset down or to a side (drawn at random), dark or pale
    'blur',        # the outline sharp or soft (falling off outward)
    'glyph',       # a yellow plus or ring beside the object
    'marks',       # two cyan squares beside the object: side by side or one above the other
)
CUE_VALUES: tuple[int, ...] = (12, 6, 4, 3, 3, 2, 2, 2, 2, 2)
assert len(CUE_VALUES) == len(CUE_KINDS)

# The object's interior belongs to the grating alone: every other kind is drawn in its colour (hue), its shape
# (aspect, notch), its edge (outline, blur) or the background beside it (satellites, shadow, glyph, marks), because a
# kind painted over the texture as noise hides the grating (studies/cue_probe.py: a half-brighter tone over a star's
# texture took the grating's probe from 0.92 to 0.64). How loud each kind is: dataset 2.1.0 calibrated it on a
# probe that learns one superclass alone; 2.2.0 on the map's own learner, a network trained on every superclass's
# images and measured given the true superclass (docs/results.md, section 1), where the beside-kinds drawn at 2.1.0's
# size were near chance and the dark shadow hardly showed on the dark background. 2.3.0 gives the superclass (the
# object's shape) back: in 2.2.0 the deep notch, the strong stretch and the beside-kinds drawn over the object left a
# narrow flat network's superclass top-1 at 0.40 (0.95 on the demo's data; without the notch 0.61, without the stretch
# 0.51, the beside-kinds beneath the object 0.50; 2.3.0: 0.80, docs/results.md, section 1):
SALIENCE_2_1_0: dict[str, float] = {
    'grating_contrast': 0.6, 'hatch_gain': 1.65, 'hue_jitter': 0.55, 'notch_radius': 0.6, 'notch_offset': 0.85,
    'outline_dark': 0.15, 'outline_bright': 2.5, 'outline_width': 2.0, 'stretch': 1.45, 'shadow_offset': 5.0,
    'shadow_alpha': 1.0, 'shadow_level': 0.0, 'blur_sharp': 0.8, 'blur_soft': 7.5, 'satellite_alpha': 1.0,
    'satellite_radius': 1.3, 'glyph_alpha': 1.0, 'glyph_size': 1.0, 'marks_alpha': 1.0, 'marks_size': 1.0,
    'morph_max': 0.5, 'beside_on_top': 1.0,
}
SALIENCE_2_2_0: dict[str, float] = dict(
    SALIENCE_2_1_0, hue_jitter=0.4, notch_radius=1.0, notch_offset=1.0, outline_width=3.0, stretch=1.6,
    shadow_offset=8.0, shadow_level=0.7, satellite_radius=1.8, glyph_size=2.0, marks_size=2.0)
SALIENCE: dict[str, float] = {
    'grating_contrast': 0.6,  # the texture's contrast is drawn from [this / 2.5, this] (dataset 1.2.0: 0.2, which
                              # the probe found far harder than any other kind)
    'hatch_gain': 1.65,       # the hatch texture's contrast x this: two gratings at half contrast each, on the
                              # thinnest shapes (ring, L), its grating was near chance (2.0.0: 1)
    'hue_jitter': 0.4,        # +- this many bins around a hue bin's centre (2.0.0: 0.3, 2.1.0: 0.55; past 0.5
                              # neighbouring bins overlap)
    'notch_radius': 0.45,     # the bite's radius, in object radii (2.1.0: 0.6, 2.2.0: 1.0, which bit away the shape)
    'notch_offset': 1.0,      # its centre's distance from the object's, in object radii (2.1.0: 0.85)
    'outline_dark': 0.15,     # the dark rim's brightness, times the object's colour
    'outline_bright': 2.5,    # the bright rim's (clipped: toward white)
    'outline_width': 3.0,     # the rim's width, pixels at 32x32 (2.1.0: 2)
    'stretch': 1.3,           # wide: x this along u and / this along v; tall: the reverse (2.1.0: 1.45, 2.2.0: 1.6)
    'shadow_offset': 8.0,     # pixels (at 32x32) the shadow lies below or beside the object (2.1.0: 5)
    'shadow_alpha': 1.0,      # its opacity
    'shadow_level': 0.7,      # the brightness it blends toward: 0 a dark shadow (2.1.0), 0.7 a pale copy
    'blur_sharp': 0.8,        # the outline's fall-off outward, pixels, sharp
    'blur_soft': 7.5,         # and soft
    'satellite_alpha': 1.0,   # the satellites' opacity
    'satellite_radius': 1.8,  # and radius, pixels at 32x32; the die grows with it (2.1.0: 1.3)
    'glyph_alpha': 1.0,       # the glyph's opacity
    'glyph_size': 2.0,        # and size: 1 is 5 pixels across at 32x32 (2.1.0: 1)
    'marks_alpha': 1.0,       # the marks' opacity
    'marks_size': 2.0,        # and size: 1 is two squares 2.4 pixels across, 2.2 pixels from their middle (2.1.0: 1)
    'morph_max': 0.3,         # how far (at most) the silhouette morphs toward its partner's (render.MORPH_MAX, 0.5,
                              # up to 2.2.0 and at specificity 0)
    'beside_on_top': 0.0,     # 1: the kinds beside the object drawn over it (up to 2.2.0); 0: beneath it, so that
                              # they never hide its shape
}
assert set(SALIENCE) == set(SALIENCE_2_1_0) == set(SALIENCE_2_2_0)


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
  glyph_turn = side()  # the glyph a quarter turn to one side of the satellites, the marks to the other
  offset = salience['notch_offset']
  return dict(hue=hue % 1.0, notch_u=notch_side * np.sin(notch) * offset, notch_v=-np.cos(notch) * offset,
              stretch=stretch, softness=softness, satellites=cues[:, 2] + 1, satellite_angle=uniform(-0.3, 0.3),
              outline=cues[:, 4], shadow_dx=shadow_dx, shadow_dy=shadow_dy, glyph=cues[:, 8],
              glyph_angle=glyph_turn * np.float32(np.pi / 2) + uniform(-0.3, 0.3), marks=cues[:, 9],
              marks_angle=-glyph_turn * np.float32(np.pi / 2) + uniform(-0.3, 0.3), salience=salience)


def rim(cue: dict, dist, rad, shade) -> np.ndarray:
  """float32 [N, H, W]: the object's ``shade`` (its texture, [N, H, W]) with its rim, a band of ``outline_width``
  pixels inside the outline, set to a flat dark (outline 1) or bright (2) level over the texture, or none (0): flat,
  so that a loud texture does not hide it (2.0.0 multiplied the texture, and the hatch's hid it). dist: signed
  distance in radius units; rad: [N, 1, 1] pixels per unit."""
  width = cue['salience']['outline_width']
  band = np.clip(1.0 - np.abs(dist * rad + 0.5 * width) / (0.5 * width), 0.0, 1.0) ** 0.5
  outline = cue['outline'][:, None, None]
  level = np.select([outline == 1, outline == 2],
                    [cue['salience']['outline_dark'], cue['salience']['outline_bright']], 1.0)
  return np.where(outline == 0, shade, shade + band * (level - shade)).astype(np.float32)


def _blend(img, alpha, value):
  """img float32 [N, H, W, 3] moved toward ``value`` (a colour [3]) by alpha [N, H, W]."""
  return img + alpha[..., None] * (np.asarray(value, np.float32) - img)


def anchor(cx, cy, radius, angle, size: float, margin: float) -> tuple[np.ndarray, np.ndarray]:
  """Where a kind beside the object is drawn: float32 [N] x and y, pixels.

  On the ray from the object's centre toward the image corner farthest from it, turned by ``angle`` (radians [N]),
  1.3 radii + ``margin`` out, or nearer where the image ends sooner, so that a mark ``margin`` pixels across always
  lies whole inside the image (2.0.0 drew the glyph and the marks 1.55 radii out at any angle, which left them outside
  the image on most large objects: the probe found both at chance). cx, cy, radius: float32 [N] pixels.
  """
  far_x = np.where(cx < size / 2, size, 0.0)
  far_y = np.where(cy < size / 2, size, 0.0)
  phi = np.arctan2(far_y - cy, far_x - cx) + angle
  cos, sin = np.cos(phi), np.sin(phi)
  tiny = np.float32(1e-6)
  # Distance along the ray to the box [margin, size - margin] on each axis.
  to_x = np.where(cos > 0, size - margin - cx, cx - margin) / np.maximum(np.abs(cos), tiny)
  to_y = np.where(sin > 0, size - margin - cy, cy - margin) / np.maximum(np.abs(sin), tiny)
  reach = np.maximum(np.minimum(np.minimum(to_x, to_y), 1.3 * radius + margin), 0.0)
  return (cx + reach * cos).astype(np.float32), (cy + reach * sin).astype(np.float32)


# The satellites' count as the pips of a die: (x, y) offsets in half-steps, used in this order (1: the centre;
# 2: two opposite corners; 3: those and the centre; 4: the four corners).  A horizontal flip keeps every count.
_PIPS: dict[int, tuple[tuple[float, float], ...]] = {
    1: ((0, 0),), 2: ((-1, -1), (1, 1)), 3: ((-1, -1), (0, 0), (1, 1)), 4: ((-1, -1), (1, 1), (1, -1), (-1, 1)),
}


def beside(img, cue: dict, cx, cy, radius, xs, ys, size: float) -> np.ndarray:
  """Draws the kinds that live beside the object, each at its own ``anchor`` (a corner of the image apart), over the
  background (and the object's edge where the image is too small to keep them off it): the satellites (1 to 4 white
  dots of a die), the glyph (a yellow plus or ring, 5 pixels across) and the marks (two cyan squares, side by side or
  one above the other). cx, cy, radius: float32 [N] pixels."""
  salience, scale = cue['salience'], np.float32(size / 32)

  def around(x0, y0):  # pixel offsets from a point [N], in pixels at 32x32: [N, H, W] each
    return (xs[None] - x0[:, None, None]) / scale, (ys[None] - y0[:, None, None]) / scale

  # The die grows with its pips (2.1.0's: radius 1.3, 2.3 pixels apart), so that larger pips stay apart.
  die = np.float32(salience['satellite_radius'] / 1.3)
  sx, sy = around(*anchor(cx, cy, radius, cue['satellite_angle'], size, 4.5 * die * scale))
  dots = np.zeros(img.shape[:3], np.float32)
  step, count = 2.3 * die, cue['satellites'][:, None, None]
  for n, pips in _PIPS.items():
    for px, py in pips:
      d = np.sqrt((sx - px * step) ** 2 + (sy - py * step) ** 2) - salience['satellite_radius']
      dots = np.maximum(dots, (count == n) * np.clip(0.5 - d, 0.0, 1.0))
  img = _blend(img, salience['satellite_alpha'] * dots, (0.95, 0.95, 0.95))
  glyph_size, marks_size = np.float32(salience['glyph_size']), np.float32(salience['marks_size'])
  gx, gy = around(*anchor(cx, cy, radius, cue['glyph_angle'], size, 3.5 * glyph_size * scale))
  gx, gy = gx / glyph_size, gy / glyph_size
  plus = np.minimum(np.maximum(np.abs(gx) - 0.8, np.abs(gy) - 2.6), np.maximum(np.abs(gx) - 2.6, np.abs(gy) - 0.8))
  ring = np.abs(np.sqrt(gx * gx + gy * gy) - 2.0) - 0.7
  glyph = np.where(cue['glyph'][:, None, None] == 0, plus, ring)
  img = _blend(img, salience['glyph_alpha'] * np.clip(0.5 - glyph, 0.0, 1.0), (1.0, 0.85, 0.2))
  mx, my = around(*anchor(cx, cy, radius, cue['marks_angle'], size, 4.0 * marks_size * scale))
  mx, my = mx / marks_size, my / marks_size
  step_x = np.where(cue['marks'] == 0, 2.2, 0.0).astype(np.float32)[:, None, None]
  step_y = np.where(cue['marks'] == 0, 0.0, 2.2).astype(np.float32)[:, None, None]
  marks = np.zeros(img.shape[:3], np.float32)
  for sign in (-1.0, 1.0):
    box = np.maximum(np.abs(mx - sign * step_x), np.abs(my - sign * step_y)) - 1.2
    marks = np.maximum(marks, np.clip(0.5 - box, 0.0, 1.0))
  return _blend(img, salience['marks_alpha'] * marks, (0.3, 0.9, 1.0))
