"""The synthetic dataset: a miniature of Superclassing ImageNet that needs no download, as a TFDS builder.

Superclass s is coarse structure (a shape family and a texture type, with silhouettes that morph toward a partner's);
a subclass is fine detail: by default (``specificity=0``, the demo's data) the orientation and period of the object's
texture, the same kind of cue in every superclass; with ``specificity=m >= 1`` superclass s's subclass is cue kind
s % m of ten (a hue, a count of satellite dots, a notch, ...), so with m = 10 each superclass's subclasses need features only it
uses.  The images come from `render` (see its docstring); nuisance variation is independent of the class, so a
classifier confuses subclasses of one superclass far more often than superclasses, as on ImageNet.

The dataset is a TFDS `GeneratorBasedBuilder` written as array_record (no TensorFlow needed: images are PNG-encoded
with pillow before TFDS sees them), with 'train', 'validation' and 'test' splits, read back with
`builder.as_data_source(split)`.

Run `python -m tools.prepare --dataset=synthetic --data_dir=DIR --grid=samples.png` to build it,
print a summary and write a PNG grid of samples.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core.utils import tqdm_utils

from supersub_jax import locks
from supersub_jax.data import cues
from supersub_jax.data.render import GRATINGS, SHAPE_FAMILIES, TEXTURES, class_table, generate, partner, validate_sizes
from supersub_jax.hierarchy import DEFAULT_SYNTHETIC_SIZES as DEFAULT_SIZES  # one home: the hierarchy's

# --------------------------------------------------------------------------------------------
# TFDS builder
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)  # TFDS's BuilderConfig is a non-frozen dataclass.
class SyntheticConfig(tfds.core.BuilderConfig):
  """Knobs of the synthetic dataset; `config_name` encodes them so configs never collide."""
  image_size: int = 32
  train_per_class: int = 300
  validation_per_class: int = 100
  test_per_class: int = 100
  seed: int = 0
  sizes: tuple[int, ...] = DEFAULT_SIZES
  specificity: int = 0


KNOBS = ('image_size', 'train_per_class', 'validation_per_class', 'test_per_class', 'seed', 'sizes', 'specificity')


def config_name(*, image_size: int, train_per_class: int, validation_per_class: int, test_per_class: int, seed: int,
                sizes: Sequence[int], specificity: int) -> str:
  """e.g. 'px32_train300_val100_test100_seed0_sizes12-6-4-3-3-2-2-2-2-2' (+ '_m10' with specificity 10)."""
  return (f'px{image_size}_train{train_per_class}_val{validation_per_class}_test{test_per_class}_seed{seed}_'
          f'sizes{"-".join(str(int(n)) for n in sizes)}' + (f'_m{specificity}' if specificity else ''))


def make_config(*, image_size: int = 32, train_per_class: int = 300, validation_per_class: int = 100,
                test_per_class: int = 100, seed: int = 0, sizes: Sequence[int] = DEFAULT_SIZES,
                specificity: int = 0) -> SyntheticConfig:
  sizes = validate_sizes(sizes)
  specificity = cues.validate_specificity(sizes, specificity)
  for knob, value, low in (('image_size', image_size, 8), ('train_per_class', train_per_class, 1),
                           ('validation_per_class', validation_per_class, 1),
                           ('test_per_class', test_per_class, 1), ('seed', seed, 0)):
    if int(value) != value or value < low:
      raise ValueError(f'{knob}={value!r} must be an integer >= {low}.')
  knobs = dict(image_size=int(image_size), train_per_class=int(train_per_class),
               validation_per_class=int(validation_per_class), test_per_class=int(test_per_class), seed=int(seed),
               sizes=sizes, specificity=specificity)
  return SyntheticConfig(name=config_name(**knobs), version=VERSION,
                         description='synthetic hierarchical shapes', **knobs)


VERSION = '2.3.0'
_DEFAULT_CONFIG = make_config()


class SupersubSynthetic(tfds.core.GeneratorBasedBuilder):
  """Synthetic hierarchical images (see module docstring).  Build with `build_synthetic`."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': 'Flip-invariant subclasses (orientation sign drawn per image), 30/60 degree '
                            'gratings (+-10 degree jitter: neighbouring orientations overlap), wider pose, '
                            'weaker texture contrast, more pixel noise.',
                   '1.2.0': 'Superclasses that share a texture type morph into each other\'s shape (up to halfway): '
                            'the coarse level is no longer nearly separable.',
                   '2.0.0': 'A validation split (its own seed: train and test are 1.2.0\'s, image for image), and '
                            'the specificity knob: superclass s takes its subclass from cue kind s % m of ten.',
                   '2.1.0': 'Cue kinds calibrated (specificity >= 1 only; specificity 0 draws 2.0.0\'s images bit for '
                            'bit): the glyph, marks and satellites (now a die\'s pips) drawn whole inside the image '
                            'in colours of their own; soft edges fall off outward; a flat, louder rim; louder '
                            'aspect and shadow; the hue jittered across its bins; the hatch texture louder: so that '
                            'a network given the superclass finds each kind about as hard as the grating of the '
                            'same superclass (docs/results/cue_probe.md; the notch and the shadow still fall short, '
                            'the marks overshoot).',
                   '2.2.0': 'Cue kinds recalibrated on the map\'s own learner (specificity >= 1 only; specificity 0 '
                            'draws 2.0.0\'s images bit for bit; cues.SALIENCE_2_1_0 draws 2.1.0\'s): a network '
                            'trained on every superclass\'s images left the glyph, marks and satellites near chance '
                            'and hardly saw the dark shadow, so the glyph and the marks are drawn twice as large, '
                            'the satellites larger on a die that grows with them, the shadow pale and farther out, '
                            'the notch deeper, the rim wider, the stretch stronger and the hue less jittered '
                            '(docs/results.md, section 1).',
                   '2.3.0': 'The superclass made readable again (specificity >= 1 only; specificity 0 draws 2.0.0\'s '
                            'images bit for bit; cues.SALIENCE_2_2_0 draws 2.2.0\'s): 2.2.0\'s deep notch, strong '
                            'stretch and beside-kinds drawn over the object hid its shape, which is the superclass, '
                            'so the notch is a smaller bite, the stretch milder, the satellites, glyph and marks are '
                            'drawn beneath the object, and the silhouette morphs at most 0.3 of the way toward its '
                            'partner (docs/results.md, section 1).'}
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
            'validation': self._generate_examples('validation', cfg.validation_per_class),
            'test': self._generate_examples('test', cfg.test_per_class)}

  def _generate_examples(self, split: str, per_class: int):
    cfg = self.builder_config
    superclass_of, _ = class_table(cfg.sizes)
    key = 0
    for images, labels in generate(split, sizes=cfg.sizes, image_size=cfg.image_size,
                                   per_class=per_class, seed=cfg.seed, specificity=cfg.specificity):
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


def synthetic_builder(data_dir: str | os.PathLike, **knobs) -> SupersubSynthetic:
  """The builder for these knobs (`make_config`'s, defaults for the rest), prepared or not (see `build_synthetic`)."""
  config = make_config(**knobs)
  # TFDS refuses a custom config object named like a predefined one, also when a pickled data
  # source (grain workers) rebuilds the builder: name the predefined config by its string.
  if config.name == _DEFAULT_CONFIG.name:
    config = _DEFAULT_CONFIG.name
  return SupersubSynthetic(data_dir=os.fspath(data_dir), config=config,
                           file_format='array_record')


def build_synthetic(data_dir: str | os.PathLike, **knobs) -> SupersubSynthetic:
  """Builds (or reuses, if already prepared) the synthetic dataset of these knobs (`make_config`'s) in `data_dir`.

  Returns the prepared builder: read splits with `builder.as_data_source('train')`, whose
  examples are {'image': uint8 [H, W, 3], 'label': int64 global class, 'superclass': int64}.
  """
  builder = synthetic_builder(data_dir, **knobs)
  if builder.is_prepared():
    return builder
  with locks.building(os.fspath(data_dir), builder.name):
    builder = synthetic_builder(data_dir, **knobs)  # another process may have built it while this one waited
    if builder.is_prepared():
      return builder
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


def knobs_of(builder: SupersubSynthetic) -> dict:
  """The `make_config` knobs of a synthetic builder (what names the dataset among several)."""
  cfg = builder.builder_config
  return {k: tuple(cfg.sizes) if k == 'sizes' else getattr(cfg, k) for k in KNOBS}


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
           f'superclasses={len(cfg.sizes)} specificity={cfg.specificity}']
  offset = 0
  for s, n in enumerate(cfg.sizes):
    if cfg.specificity:
      kind = int(cues.cue_kind_of(len(cfg.sizes), cfg.specificity)[s])
      patterns = f'cue {cues.CUE_KINDS[kind]} ({cues.cue_value_counts(cfg.sizes, cfg.specificity)[kind]} values)'
    else:
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
