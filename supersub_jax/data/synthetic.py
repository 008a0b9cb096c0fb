"""Synthetic hierarchical images: a miniature of Superclassing ImageNet that needs no download.

Superclass s is COARSE structure: its object has shape family s (disc, square, triangle, ...) and
texture type s mod 5 (stripes, checks, waves, dots, hatch), like fur vs feathers.  Superclasses s and
s + 5 share a texture type, and each image's silhouette morphs part of the way (up to halfway) toward the
partner's shape, so the coarse level is not separable at a glance: ambiguous shapes lie between partners.
Subclass j of superclass s is FINE detail: the (orientation, period) of that texture, from the
12 pairs in `GRATINGS` -- visible at 32x32, invisible to a shape-only classifier, and never
enough on its own to tell superclasses apart (superclasses s and s + 5 share a texture type).
Orientations are unsigned (each image draws the sign), so a horizontal flip keeps the subclass.
Everything else is nuisance, drawn independently of the class: object position, scale and rotation,
object and background colour, background gradient, distractor shapes (random families, flat
colour), texture phase and contrast, global brightness/contrast and pixel noise.  So a classifier
confuses subclasses of one superclass far more often than superclasses, as on ImageNet.

The dataset is a TFDS `GeneratorBasedBuilder` written as array_record (no TensorFlow needed:
images are PNG-encoded with pillow before TFDS sees them) and read back with
`builder.as_data_source(split)`.

Run `python -m supersub_jax.data.prepare --dataset=synthetic --data_dir=DIR --grid=samples.png` to build it,
print a summary and write a PNG grid of samples.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core.utils import tqdm_utils

from supersub_jax import files
from supersub_jax.hierarchy import DEFAULT_SYNTHETIC_SIZES as DEFAULT_SIZES  # one home: the hierarchy's

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


def _shape_mask(families: np.ndarray, cx, cy, radius, angle, xs, ys, morph=None) -> np.ndarray:
  """Soft (anti-aliased) masks of one shape per image.

  families: int [N]; cx, cy, radius, angle: float [N]; xs, ys: float32 [H, W] pixel centres;
  morph: float [N] in [0, 1], the weight of the partner family's distance (None: no morph).
  Returns float32 [N, H, W] in [0, 1].
  """
  dx = xs[None] - cx[:, None, None]
  dy = ys[None] - cy[:, None, None]
  cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
  rad = radius[:, None, None]
  u = ((cos * dx + sin * dy) / rad).astype(np.float32)
  v = ((-sin * dx + cos * dy) / rad).astype(np.float32)
  dist = np.empty_like(u)
  for family in np.unique(families):
    sel = families == family
    dist[sel] = _sdf(int(family), u[sel], v[sel])
    if morph is not None:
      w = morph[sel][:, None, None]
      dist[sel] = (1 - w) * dist[sel] + w * _sdf(int(partner(family)), u[sel], v[sel])
  # One pixel of soft edge: distance is in radius units, so scale by radius (pixels).
  return np.clip(0.5 - dist * rad, 0.0, 1.0)


def render(labels: np.ndarray, sizes: Sequence[int], image_size: int,
           rng: np.random.Generator) -> np.ndarray:
  """Draws one image per label.

  Args:
    labels: int [N] global class ids in [0, sum(sizes)).
    sizes: subclasses per superclass.
    image_size: side H = W of the square images.
    rng: source of all nuisance randomness (consumed deterministically).

  Returns:
    uint8 [N, image_size, image_size, 3].
  """
  superclass_of, local_of = class_table(sizes)
  labels = np.asarray(labels)
  n, size = labels.shape[0], float(image_size)
  families = superclass_of[labels]
  gratings = np.asarray(GRATINGS, np.float32)[local_of[labels]]
  coords = np.arange(image_size, dtype=np.float32) + 0.5
  xs, ys = np.meshgrid(coords, coords)

  def uniform(low, high, shape=(n,)):
    # float32 throughout: float64 intermediates double the rendering time.
    return rng.uniform(low, high, shape).astype(np.float32)

  def per_image(x):  # [N] -> [N, 1, 1] for broadcasting against [N, H, W].
    return x[:, None, None]

  # Background: random hue, a linear gradient in a random direction.
  bg_hue = uniform(0, 1)
  # Darker than any object, so the silhouette is a luminance edge whatever the hues.
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

  # The object: class-dependent family and grating, class-independent pose and colour.
  radius = uniform(0.24, 0.38) * size
  cx = size / 2 + uniform(-0.18, 0.18) * size
  cy = size / 2 + uniform(-0.18, 0.18) * size
  mask = _shape_mask(families, cx, cy, radius, uniform(-0.25, 0.25), xs, ys, morph=uniform(0, MORPH_MAX))
  # Hue kept away from the background's so the silhouette stays visible.
  obj_hue = (bg_hue + uniform(0.2, 0.8)) % 1.0
  obj = _hsv_to_rgb(obj_hue, uniform(0.35, 1.0), uniform(0.65, 1.0))
  # Orientation and period get small jitter; phases are free: no pixel is class-specific.
  sign = np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32)
  theta = np.deg2rad(sign * (gratings[:, 0] + uniform(-10, 10)))
  period = gratings[:, 1] * uniform(0.9, 1.1) * np.float32(size / 32.0)
  pattern = _texture(families % len(TEXTURES), theta, period, uniform(0, 2 * np.pi),
                     uniform(0, 2 * np.pi), xs, ys)
  contrast = per_image(uniform(0.08, 0.2))
  shade = (1.0 - contrast + contrast * pattern)[..., None]
  alpha = mask[..., None]
  img += alpha * (obj[:, None, None, :] * shade - img)

  # Global photometric nuisance and sensor noise.
  mean = img.mean(axis=(1, 2, 3), keepdims=True)
  img = (img - mean) * uniform(0.75, 1.25, (n, 1, 1, 1)) + mean + uniform(-0.1, 0.1, (n, 1, 1, 1))
  img += np.float32(0.07) * rng.standard_normal(img.shape, dtype=np.float32)
  return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def generate(split: str, *, sizes: Sequence[int], image_size: int, per_class: int,
             seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (images uint8 [n, H, W, 3], labels int64 [n]) chunks of one split, deterministically.

  The split name is mixed into the seed, so 'train' and 'test' never share an image.
  """
  sizes = validate_sizes(sizes)
  num_classes = sum(sizes)
  split_id = {'train': 0, 'test': 1}[split]
  rng = np.random.default_rng([seed, split_id])
  # Class-major order here; TFDS shuffles the records on write.
  labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
  for start in range(0, labels.shape[0], _CHUNK):
    chunk = labels[start:start + _CHUNK]
    yield render(chunk, sizes, image_size, rng), chunk


# --------------------------------------------------------------------------------------------
# TFDS builder
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)  # TFDS's BuilderConfig is a non-frozen dataclass.
class SyntheticConfig(tfds.core.BuilderConfig):
  """Knobs of the synthetic dataset; `config_name` encodes them so configs never collide."""
  image_size: int = 32
  train_per_class: int = 300
  test_per_class: int = 100
  seed: int = 0
  sizes: tuple[int, ...] = DEFAULT_SIZES


def config_name(*, image_size: int, train_per_class: int, test_per_class: int, seed: int,
                sizes: Sequence[int]) -> str:
  """e.g. 'px32_train300_test100_seed0_sizes12-6-4-3-3-2-2-2-2-2'."""
  return (f'px{image_size}_train{train_per_class}_test{test_per_class}_seed{seed}_'
          f'sizes{"-".join(str(int(n)) for n in sizes)}')


def make_config(*, image_size: int = 32, train_per_class: int = 300, test_per_class: int = 100,
                seed: int = 0, sizes: Sequence[int] = DEFAULT_SIZES) -> SyntheticConfig:
  sizes = validate_sizes(sizes)
  for knob, value, low in (('image_size', image_size, 8), ('train_per_class', train_per_class, 1),
                           ('test_per_class', test_per_class, 1), ('seed', seed, 0)):
    if int(value) != value or value < low:
      raise ValueError(f'{knob}={value!r} must be an integer >= {low}.')
  knobs = dict(image_size=int(image_size), train_per_class=int(train_per_class),
               test_per_class=int(test_per_class), seed=int(seed), sizes=sizes)
  return SyntheticConfig(name=config_name(**knobs), version='1.2.0',
                         description='synthetic hierarchical shapes', **knobs)


_DEFAULT_CONFIG = make_config()


class SupersubSynthetic(tfds.core.GeneratorBasedBuilder):
  """Synthetic hierarchical images (see module docstring).  Build with `build_synthetic`."""

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': 'Flip-invariant subclasses (orientation sign drawn per image), 30/60 degree '
                            'gratings (+-10 degree jitter: neighbouring orientations overlap), wider pose, '
                            'weaker texture contrast, more pixel noise.',
                   '1.2.0': 'Superclasses that share a texture type morph into each other\'s shape (up to halfway): '
                            'the coarse level is no longer nearly separable.'}
  # Other configs are made on the fly by `make_config` (see `synthetic_builder`).
  BUILDER_CONFIGS = [_DEFAULT_CONFIG]

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    size = cfg.image_size
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(size, size, 3), encoding_format='png'),
            'label': tfds.features.ClassLabel(num_classes=sum(cfg.sizes)),
            'superclass': tfds.features.ClassLabel(num_classes=len(cfg.sizes)),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://arxiv.org/abs/2201.08098',
    )

  # TFDS's messages of a download ("Downloading and preparing dataset Unknown size ...", "downloaded and
  # prepared") and of a variant folder without dataset_info.json say something untrue of a dataset generated in
  # seconds; build_synthetic's caller prints what was built.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass

  def is_prepared(self) -> bool:
    if not os.path.exists(os.path.join(os.fspath(self.data_path), 'dataset_info.json')):
      return False  # as TFDS would decide, without its warning
    return super().is_prepared()

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    return {'train': self._generate_examples('train', cfg.train_per_class),
            'test': self._generate_examples('test', cfg.test_per_class)}

  def _generate_examples(self, split: str, per_class: int):
    cfg = self.builder_config
    superclass_of, _ = class_table(cfg.sizes)
    key = 0
    for images, labels in generate(split, sizes=cfg.sizes, image_size=cfg.image_size,
                                   per_class=per_class, seed=cfg.seed):
      for image, label in zip(images, labels):
        # Encoded here with pillow: TFDS would need TensorFlow to encode a numpy image.
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format='png', compress_level=1)
        yield key, {'image': buffer.getvalue(), 'label': int(label),
                    'superclass': int(superclass_of[label])}
        key += 1


class _NotCustomConfigs(logging.Filter):
  """Drops TFDS's warning "Using custom data configuration: SyntheticConfig(...)": every synthetic dataset but the
  default is made from its knobs by design (``make_config``), and each open of one repeated it."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (str(record.msg).startswith('Using custom data configuration')
                and any(isinstance(a, SyntheticConfig) for a in (record.args or ())))


logging.getLogger('absl').addFilter(_NotCustomConfigs())


def synthetic_builder(data_dir: str | os.PathLike, *, image_size: int = 32,
                      train_per_class: int = 300, test_per_class: int = 100, seed: int = 0,
                      sizes: Sequence[int] = DEFAULT_SIZES) -> SupersubSynthetic:
  """The builder for these knobs, prepared or not (see `build_synthetic`)."""
  config = make_config(image_size=image_size, train_per_class=train_per_class,
                       test_per_class=test_per_class, seed=seed, sizes=sizes)
  # TFDS refuses a custom config object named like a predefined one, also when a pickled data
  # source (grain workers) rebuilds the builder: name the predefined config by its string.
  if config.name == _DEFAULT_CONFIG.name:
    config = _DEFAULT_CONFIG.name
  return SupersubSynthetic(data_dir=os.fspath(data_dir), config=config,
                           file_format='array_record')


def build_synthetic(data_dir: str | os.PathLike, *, image_size: int = 32,
                    train_per_class: int = 300, test_per_class: int = 100, seed: int = 0,
                    sizes: Sequence[int] = DEFAULT_SIZES) -> SupersubSynthetic:
  """Builds (or reuses, if already prepared) the synthetic dataset in `data_dir`.

  Returns the prepared builder: read splits with `builder.as_data_source('train')`, whose
  examples are {'image': uint8 [H, W, 3], 'label': int64 global class, 'superclass': int64}.
  """
  builder = synthetic_builder(data_dir, image_size=image_size, train_per_class=train_per_class,
                              test_per_class=test_per_class, seed=seed, sizes=sizes)
  if not builder.is_prepared():
    shown = tqdm_utils._active  # pylint: disable=protected-access
    tqdm_utils.display_progress_bar(False)  # bars of a build of seconds, redrawn in place: noise in a log
    try:
      builder.download_and_prepare(
          file_format='array_record',
          download_config=tfds.download.DownloadConfig(
              # Statistics would need TensorFlow and are not used.
              compute_stats=tfds.download.ComputeStatsMode.SKIP),
      )
    finally:
      tqdm_utils.display_progress_bar(shown)
  return builder


def fingerprint(builder: SupersubSynthetic, split: str = 'train') -> str:
  """SHA-256 of a split's content: its builder name, version and config name, then every example's label,
  superclass and decoded pixels in record order. What a network trained on the split records of it, so that a
  change of the dataset (a new version, other knobs, another renderer) shows as a different fingerprint."""
  digest = hashlib.sha256(f'{builder.name}|{builder.version}|{builder.builder_config.name}|{split}|'.encode())
  source = builder.as_data_source(split)
  for start in range(0, len(source), 1024):
    for example in source.__getitems__(range(start, min(start + 1024, len(source)))):
      digest.update(np.asarray([example['label'], example['superclass']], np.int64).tobytes())
      digest.update(np.ascontiguousarray(example['image'], np.uint8).tobytes())
  return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Command line: build, summarise, draw a grid of samples
# --------------------------------------------------------------------------------------------


def summary_lines(builder: SupersubSynthetic, build_seconds: float | None = None) -> list[str]:
  """Human-readable description of a prepared synthetic dataset."""
  cfg = builder.builder_config
  lines = [f'supersub_synthetic/{cfg.name} at {builder.data_dir}',
           f'image_size={cfg.image_size} seed={cfg.seed} classes={sum(cfg.sizes)} '
           f'superclasses={len(cfg.sizes)}']
  offset = 0
  for s, n in enumerate(cfg.sizes):
    patterns = ', '.join(f'{GRATINGS[j][0]:.0f}deg/{GRATINGS[j][1]:.1f}px' for j in range(n))
    lines.append(f'  superclass {s:2d} {SHAPE_FAMILIES[s]:8s} {TEXTURES[s % len(TEXTURES)]:7s} '
                 f'morphs toward {SHAPE_FAMILIES[partner(s)]:8s} {n:2d} subclasses '
                 f'(labels {offset}..{offset + n - 1}): {patterns}')
    offset += n
  for split, info in builder.info.splits.items():
    lines.append(f'  split {split}: {info.num_examples} examples')
  if build_seconds is not None:
    lines.append(f'  build time: {build_seconds:.1f} s')
  return lines


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


def save_grid_png(path: str | os.PathLike, grid: np.ndarray, row_labels: list[list[int]],
                  sizes: Sequence[int]) -> None:
  """Writes the sample grid from `sample_grid` as a PNG, one titled row per superclass."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows, cols = grid.shape[:2]
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.15), squeeze=False)
  for s in range(rows):
    for c in range(cols):
      ax = axes[s, c]
      ax.imshow(grid[s, c], interpolation='nearest')
      ax.set_xticks([])
      ax.set_yticks([])
      if row_labels[s][c] >= 0:
        ax.set_title(f'label {row_labels[s][c]}', fontsize=6, pad=2)
      else:
        ax.axis('off')
    axes[s, 0].set_ylabel(f'{s}: {SHAPE_FAMILIES[s]}\n{TEXTURES[s % len(TEXTURES)]}, '
                          f'{sizes[s]} sub', fontsize=7)
  fig.tight_layout(pad=0.3)
  with files.atomic_write(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=110)
  plt.close(fig)
