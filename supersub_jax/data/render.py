"""The synthetic images' renderer: pure numpy, deterministic from a generator, no files.

Superclass s is COARSE structure: its object has shape family s (disc, square, triangle, ...) and texture type
s mod 5 (stripes, checks, waves, dots, hatch), like fur vs feathers.  Superclasses s and s + 5 share a texture type,
and each image's silhouette morphs part of the way (up to halfway) toward the partner's shape, so the coarse level is
not separable at a glance.  Everything else is nuisance, drawn independently of the class: object position, scale and
rotation, background colour and gradient, distractor shapes, texture phase and contrast, global brightness/contrast
and pixel noise.

A subclass is FINE detail, set by a CUE KIND (`cues.CUE_KINDS`):

* ``specificity=0`` (dataset versions up to 1.2.0, and the demo's data): every superclass's subclasses differ by
  the (orientation, period) of the object's texture (`GRATINGS`), and nothing else is drawn: the images of version
  1.2.0, bit for bit.
* ``specificity=m >= 1``: superclass s takes its subclass from cue kind ``cues.CUE_KINDS[s % m]``.  Every image draws
  EVERY kind at random (a hue, satellite dots, a notch, ...), and only its own superclass's kind is set by its
  label, so no kind tells the superclass apart.  ``m=1`` is the control (every superclass's subclass is a grating:
  the same kind of cue everywhere, as in version 1.2.0, among the other kinds' noise); ``m=10`` gives each of ten
  superclasses a cue that only it uses, the paper's premise (a dog breed needs features only dogs use).

Every kind is flip-invariant (a horizontal flip, the standard augmentation, never changes a subclass): orientations
are unsigned, directions are measured from the vertical with a random side.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from supersub_jax.data import cues as cues_lib

SHAPE_FAMILIES: tuple[str, ...] = (
    'disc', 'square', 'triangle', 'cross', 'ring', 'bars', 'star', 'diamond', 'crescent', 'L',
)

# Fine detail of subclass j: (grating orientation in degrees, period in pixels at 32x32).
# Ordered so that superclasses with few subclasses get the most distinct pairs first.
_FINE: float = 3.4
_MID: float = 5.0
_COARSE: float = 7.6
# Orientations are |angle| from the horizontal: each image draws the sign at random, so a horizontal flip
# (angle -> -angle), the standard augmentation, never turns one subclass into another.
GRATINGS: tuple[tuple[float, float], ...] = (
    (0.0, _MID), (90.0, _MID), (45.0, _FINE), (0.0, _COARSE),
    (90.0, _COARSE), (45.0, _COARSE), (0.0, _FINE), (90.0, _FINE),
    (30.0, _MID), (60.0, _MID), (30.0, _COARSE), (60.0, _COARSE),
)

# Texture type of superclass s is TEXTURES[s % len(TEXTURES)].
TEXTURES: tuple[str, ...] = ('stripes', 'checks', 'waves', 'dots', 'hatch')

# Superclass s's silhouette morphs toward that of its partner (the superclass sharing its texture type): the
# signed distance is (1 - w) sdf(s) + w sdf(partner(s)), w ~ U(0, MORPH_MAX) per image.  At w = 0.5 the two
# superclasses draw the same silhouette, so images near it are ambiguous at 32x32, as some ImageNet superclasses
# are (a fox-like dog), and the minority superclass of a pair loses most of them; texture cannot help, since
# partners share it.  MORPH_MAX = 0.5 keeps a perfect observer always right.
MORPH_MAX: float = 0.5

_NUM_DISTRACTORS = 2
SPLIT_IDS = {'train': 0, 'test': 1, 'validation': 2}
_CHUNK = 1024  # images rendered at once: bounds memory to ~ _CHUNK * H * W * 3 float32.


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def validate_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
  """Returns `sizes` as a tuple after checking the renderer can draw that many classes."""
  sizes = tuple(int(n) for n in sizes)
  if not sizes or min(sizes) < 1:
    raise ValueError(f'sizes={sizes}: need at least one superclass, each with >= 1 subclass.')
  if len(sizes) > len(SHAPE_FAMILIES):
    raise ValueError(
        f'sizes has {len(sizes)} superclasses but the synthetic renderer knows only '
        f'{len(SHAPE_FAMILIES)} shape families {SHAPE_FAMILIES}; pass at most '
        f'{len(SHAPE_FAMILIES)} sizes.')
  if max(sizes) > len(GRATINGS):
    raise ValueError(
        f'sizes={sizes} asks for {max(sizes)} subclasses in one superclass but only '
        f'{len(GRATINGS)} grating patterns exist; keep every size <= {len(GRATINGS)}.')
  return sizes


def class_table(sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Superclass and local index of every global class id (superclass-major order).

  Returns:
    (superclass int32[C], local int32[C]) with C = sum(sizes).
  """
  sizes = validate_sizes(sizes)
  superclass = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
  local = np.concatenate([np.arange(n, dtype=np.int32) for n in sizes])
  return superclass, local


# --------------------------------------------------------------------------------------------
# Vectorised rendering
# --------------------------------------------------------------------------------------------


def _sdf(family: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Approximate signed distance (negative inside) to a shape of radius ~1 centred at 0.

  u, v: float32 [...] object coordinates (v points down).  Returns float32 [...].
  """
  r = np.sqrt(u * u + v * v)
  au, av = np.abs(u), np.abs(v)
  name = SHAPE_FAMILIES[family]
  if name == 'disc':
    return r - 0.95
  if name == 'square':
    return np.maximum(au, av) - 0.8
  if name == 'triangle':
    # Equilateral, apex up: intersection of three half-planes.
    return np.maximum(au * 0.866 - v * 0.5 - 0.5, v - 0.55)
  if name == 'cross':
    return np.minimum(np.maximum(au - 0.32, av - 1.0), np.maximum(au - 1.0, av - 0.32))
  if name == 'ring':
    return np.abs(r - 0.7) - 0.3
  if name == 'bars':
    return np.maximum(np.abs(au - 0.55) - 0.25, av - 0.95)
  if name == 'star':
    theta = np.arctan2(v, u)
    return (r - (0.62 + 0.38 * np.cos(5.0 * theta + np.pi / 2))) * 0.7
  if name == 'diamond':
    return (au + av - 1.05) * 0.707
  if name == 'crescent':
    inner = np.sqrt((u - 0.5) ** 2 + (v + 0.1) ** 2) - 0.75
    return np.maximum(r - 0.95, -inner)
  if name == 'L':
    vertical = np.maximum(np.abs(u + 0.5) - 0.3, av - 0.95)
    horizontal = np.maximum(au - 0.8, np.abs(v - 0.65) - 0.3)
    return np.minimum(vertical, horizontal)
  raise ValueError(f'unknown shape family index {family}')


def _texture(types: np.ndarray, theta: np.ndarray, period: np.ndarray, phase_u: np.ndarray,
             phase_v: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
  """Per-image texture in [-1, 1].

  Args:
    types: int [N] indices into TEXTURES.
    theta: float [N] orientation (radians).  period: float [N] in pixels.
    phase_u, phase_v: float [N] random phases along and across the wave vector.
    xs, ys: float32 [H, W] pixel centres.

  Returns:
    float32 [N, H, W].
  """
  checks_or_dots = np.isin(types, (TEXTURES.index('checks'), TEXTURES.index('dots')))
  # Checks and dots repeat every 90 degrees: halve their angle so all 4 orientations differ.
  theta = np.where(checks_or_dots, theta / 2, theta).astype(np.float32)
  cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
  k = (np.float32(2 * np.pi) / period)[:, None, None]
  u = (cos * xs + sin * ys) * k + phase_u[:, None, None]   # along the wave vector
  v = (-sin * xs + cos * ys) * k + phase_v[:, None, None]  # across it
  out = np.empty(u.shape, np.float32)
  for t in np.unique(types):
    sel = types == t
    su, sv = u[sel], v[sel]
    name = TEXTURES[int(t)]
    if name == 'stripes':
      out[sel] = np.sin(su)
    elif name == 'checks':
      out[sel] = np.clip(2.0 * np.sin(su) * np.sin(sv), -1, 1)
    elif name == 'waves':  # stripes bent by a slow sinusoid across them
      out[sel] = np.sin(su + 1.3 * np.sin(0.4 * sv))
    elif name == 'dots':   # bright blobs on a dark lattice
      out[sel] = 4.0 * np.maximum(np.sin(su) * np.sin(sv), 0) - 1
    elif name == 'hatch':  # the grating plus its copy turned by 60 degrees
      turned = 0.5 * su + 0.866 * sv
      out[sel] = np.sin(su) * 0.5 + np.sin(turned) * 0.5
    else:
      raise ValueError(f'unknown texture index {t}')
  return np.clip(out, -1, 1)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Vectorised HSV -> RGB.  h, s, v: float [...] in [0, 1].  Returns float32 [..., 3]."""
  i = np.floor(h * 6.0).astype(np.int32) % 6
  f = h * 6.0 - np.floor(h * 6.0)
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
  rgb = np.zeros(h.shape + (3,), np.float32)
  for k, (r, g, b) in enumerate(choices):
    sel = i == k
    rgb[sel] = np.stack([r[sel], g[sel], b[sel]], axis=-1)
  return rgb


def partner(family: np.ndarray) -> np.ndarray:
  """The shape family that ``family`` morphs toward: the next one with the same texture type.  int or int [...]."""
  return (family + len(TEXTURES)) % len(SHAPE_FAMILIES)


def _object_uv(cx, cy, radius, angle, xs, ys, stretch=None) -> tuple[np.ndarray, np.ndarray]:
  """Object coordinates of every pixel: float32 [N, H, W] each, in radius units (v points down); ``stretch`` [N]
  widens the object by that factor along u and narrows it along v (None: no stretch)."""
  dx = xs[None] - cx[:, None, None]
  dy = ys[None] - cy[:, None, None]
  cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
  rad = radius[:, None, None]
  u = ((cos * dx + sin * dy) / rad).astype(np.float32)
  v = ((-sin * dx + cos * dy) / rad).astype(np.float32)
  if stretch is not None:
    u, v = u / stretch[:, None, None], v * stretch[:, None, None]
  return u, v


def _signed_distance(families: np.ndarray, u: np.ndarray, v: np.ndarray, morph=None) -> np.ndarray:
  """float32 [N, H, W]: each image's shape's signed distance (radius units), morphed toward its partner by ``morph``
  [N] in [0, 1] (None: no morph)."""
  dist = np.empty_like(u)
  for family in np.unique(families):
    sel = families == family
    dist[sel] = _sdf(int(family), u[sel], v[sel])
    if morph is not None:
      w = morph[sel][:, None, None]
      dist[sel] = (1 - w) * dist[sel] + w * _sdf(int(partner(family)), u[sel], v[sel])
  return dist


def _shape_mask(families: np.ndarray, cx, cy, radius, angle, xs, ys, morph=None) -> np.ndarray:
  """Soft (anti-aliased) masks of one shape per image.

  families: int [N]; cx, cy, radius, angle: float [N]; xs, ys: float32 [H, W] pixel centres;
  morph: float [N] in [0, 1], the weight of the partner family's distance (None: no morph).
  Returns float32 [N, H, W] in [0, 1].
  """
  u, v = _object_uv(cx, cy, radius, angle, xs, ys)
  dist = _signed_distance(families, u, v, morph)
  # One pixel of soft edge: distance is in radius units, so scale by radius (pixels).
  return np.clip(0.5 - dist * radius[:, None, None], 0.0, 1.0)


def render(labels: np.ndarray, sizes: Sequence[int], image_size: int,
           rng: np.random.Generator, specificity: int = 0, salience: dict | None = None) -> np.ndarray:
  """Draws one image per label.

  Args:
    labels: int [N] global class ids in [0, sum(sizes)).
    sizes: subclasses per superclass.
    image_size: side H = W of the square images.
    rng: source of all nuisance randomness (consumed deterministically).
    specificity: 0: every subclass is a texture grating (dataset 1.2.0's images); m >= 1: superclass s's subclass is
      cue kind CUE_KINDS[s % m], and every image draws every kind (module docstring).
    salience: how loud each cue kind is (``cues.SALIENCE``'s keys; None: SALIENCE, the dataset's).

  Returns:
    uint8 [N, image_size, image_size, 3].
  """
  superclass_of, local_of = class_table(sizes)
  specificity = cues_lib.validate_specificity(sizes, specificity)
  labels = np.asarray(labels)
  n, size = labels.shape[0], float(image_size)
  families = superclass_of[labels]
  coords = np.arange(image_size, dtype=np.float32) + 0.5
  xs, ys = np.meshgrid(coords, coords)

  def uniform(low, high, shape=(n,)):
    # float32 throughout: float64 intermediates double the rendering time.
    return rng.uniform(low, high, shape).astype(np.float32)

  def per_image(x):  # [N] -> [N, 1, 1] for broadcasting against [N, H, W].
    return x[:, None, None]

  cue = None
  if specificity:
    counts = cues_lib.cue_value_counts(sizes, specificity)
    cues = cues_lib.cue_values(superclass_of[labels], local_of[labels], sizes, specificity, rng)
    cue = cues_lib.layers(cues, counts, n, uniform, rng, {**cues_lib.SALIENCE, **(salience or {})})
    gratings = np.asarray(GRATINGS, np.float32)[cues[:, 0]]
    bg_hue = (cue['hue'] + uniform(0.25, 0.75)) % 1.0  # far from the object's hue, which is the cue
  else:
    gratings = np.asarray(GRATINGS, np.float32)[local_of[labels]]
    bg_hue = uniform(0, 1)
  # Background: a linear gradient in a random direction, darker than any object, so the silhouette is a luminance
  # edge whatever the hues.
  bg = _hsv_to_rgb(bg_hue, uniform(0.15, 0.6), uniform(0.15, 0.5))
  grad_dir = uniform(0, 2 * np.pi)
  ramp = (per_image(np.cos(grad_dir)) * (xs / size - 0.5)
          + per_image(np.sin(grad_dir)) * (ys / size - 0.5))
  img = bg[:, None, None, :] * (1.0 + per_image(uniform(0, 0.6)) * ramp)[..., None]

  # Clutter: small flat shapes of random families, anywhere, beneath the object.
  for _ in range(_NUM_DISTRACTORS):
    mask = _shape_mask(
        rng.integers(0, len(SHAPE_FAMILIES), n), uniform(0, size), uniform(0, size),
        uniform(0.07, 0.12) * size, uniform(0, 2 * np.pi), xs, ys)
    colour = _hsv_to_rgb(uniform(0, 1), uniform(0.2, 0.9), uniform(0.25, 0.8))
    alpha = (mask * per_image(uniform(0.4, 0.8)))[..., None]
    img += alpha * (colour[:, None, None, :] - img)  # In place: alpha-blend over the background.

  # The object: class-dependent family and cue, class-independent pose and colour.
  radius = uniform(0.24, 0.38) * size
  cx = size / 2 + uniform(-0.18, 0.18) * size
  cy = size / 2 + uniform(-0.18, 0.18) * size
  angle = uniform(-0.25, 0.25)
  morph = uniform(0, MORPH_MAX if cue is None else cue['salience']['morph_max'])
  if cue is None:
    mask = _shape_mask(families, cx, cy, radius, angle, xs, ys, morph=morph)
    # Hue kept away from the background's so the silhouette stays visible.
    obj_hue = (bg_hue + uniform(0.2, 0.8)) % 1.0
    obj = _hsv_to_rgb(obj_hue, uniform(0.35, 1.0), uniform(0.65, 1.0))
  else:
    def silhouette(x0, y0):  # the object's signed distance (radius units) centred at x0, y0: stretched, bitten
      u, v = _object_uv(x0, y0, radius, angle, xs, ys, stretch=cue['stretch'])
      bite = (np.sqrt((u - per_image(cue['notch_u'])) ** 2 + (v - per_image(cue['notch_v'])) ** 2)
              - cue['salience']['notch_radius'])
      return np.maximum(_signed_distance(families, u, v, morph), -bite)
    # The edge falls off outward over ``softness`` pixels, so a soft edge leaves the interior's texture whole (2.0.0
    # centred it on the outline, which washed out half of a thin shape's texture).
    edge = per_image(radius / cue['softness'])  # radius units -> fractions of the edge's width
    scale = np.float32(size / 32)
    shadow = np.clip(1.0 - silhouette(cx + cue['shadow_dx'] * scale, cy + cue['shadow_dy'] * scale) * edge, 0, 1)
    shadow = cue['salience']['shadow_alpha'] * shadow
    # A pale copy shows where a dark one hardly does (the background is darker than any object); level 0 keeps 2.1.0's
    # product, bit for bit (the blend toward 0 rounds differently).
    if cue['salience']['shadow_level']:
      img += shadow[..., None] * (np.float32(cue['salience']['shadow_level']) - img)
    else:
      img *= (1.0 - shadow)[..., None]
    if not cue['salience']['beside_on_top']:
      img = cues_lib.beside(img, cue, cx, cy, radius, xs, ys, size)
    dist = silhouette(cx, cy)
    mask = np.clip(1.0 - dist * edge, 0.0, 1.0)
    obj = _hsv_to_rgb(cue['hue'], uniform(0.55, 1.0), uniform(0.65, 1.0))  # saturated: the hue must show
  # Orientation and period get small jitter; phases are free: no pixel is class-specific.
  sign = np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32)
  theta = np.deg2rad(sign * (gratings[:, 0] + uniform(-10, 10)))
  period = gratings[:, 1] * uniform(0.9, 1.1) * np.float32(size / 32.0)
  pattern = _texture(families % len(TEXTURES), theta, period, uniform(0, 2 * np.pi),
                     uniform(0, 2 * np.pi), xs, ys)
  top = 0.2 if cue is None else cue['salience']['grating_contrast']
  contrast = per_image(uniform(top / 2.5, top))
  if cue is not None:  # the hatch is two gratings at half contrast each: louder, so its grating is as loud as others'
    contrast = contrast * per_image(np.where(families % len(TEXTURES) == TEXTURES.index('hatch'),
                                             cue['salience']['hatch_gain'], 1.0).astype(np.float32))
  shade = 1.0 - contrast + contrast * pattern
  if cue is not None:
    shade = cues_lib.rim(cue, dist, per_image(radius), shade)
  alpha = mask[..., None]
  img += alpha * (obj[:, None, None, :] * shade[..., None] - img)
  if cue is not None and cue['salience']['beside_on_top']:
    img = cues_lib.beside(img, cue, cx, cy, radius, xs, ys, size)

  # Global photometric nuisance and sensor noise.
  mean = img.mean(axis=(1, 2, 3), keepdims=True)
  img = (img - mean) * uniform(0.75, 1.25, (n, 1, 1, 1)) + mean + uniform(-0.1, 0.1, (n, 1, 1, 1))
  img += np.float32(0.07) * rng.standard_normal(img.shape, dtype=np.float32)
  return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def generate(split: str, *, sizes: Sequence[int], image_size: int, per_class: int, seed: int,
             specificity: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (images uint8 [n, H, W, 3], labels int64 [n]) chunks of one split, deterministically.

  The split name is mixed into the seed, so 'train', 'validation' and 'test' never share an image (and adding the
  validation split left the other two as they were).
  """
  sizes = validate_sizes(sizes)
  num_classes = sum(sizes)
  split_id = SPLIT_IDS[split]
  rng = np.random.default_rng([seed, split_id])
  # Class-major order here; TFDS shuffles the records on write.
  labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
  for start in range(0, labels.shape[0], _CHUNK):
    chunk = labels[start:start + _CHUNK]
    yield render(chunk, sizes, image_size, rng, specificity), chunk


def sample_grid(source, sizes: Sequence[int], *, subclasses_per_row: int = 4,
                examples_per_subclass: int = 2) -> tuple[np.ndarray, list[list[int]]]:
  """Picks examples for a grid: row s = superclass s, its first few subclasses side by side.

  Args:
    source: random-access examples {'image': uint8 [H, W, 3], 'label': int}.

  Returns:
    (images uint8 [rows, cols, H, W, 3] (black where a superclass has fewer subclasses),
     labels per row, -1 for the black cells).
  """
  sizes = validate_sizes(sizes)
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  wanted = {}
  for s, n in enumerate(sizes):
    for j in range(min(n, subclasses_per_row)):
      wanted[int(offsets[s] + j)] = []
  for i in range(len(source)):
    example = source[i]
    label = int(example['label'])
    if label in wanted and len(wanted[label]) < examples_per_subclass:
      wanted[label].append(example['image'])
    if all(len(v) == examples_per_subclass for v in wanted.values()):
      break
  h, w, c = source[0]['image'].shape
  cols = subclasses_per_row * examples_per_subclass
  grid = np.zeros((len(sizes), cols, h, w, c), np.uint8)
  row_labels = [[-1] * cols for _ in sizes]
  for s, n in enumerate(sizes):
    for j in range(min(n, subclasses_per_row)):
      label = int(offsets[s] + j)
      for e, image in enumerate(wanted[label]):
        grid[s, j * examples_per_subclass + e] = image
        row_labels[s][j * examples_per_subclass + e] = label
  return grid, row_labels
