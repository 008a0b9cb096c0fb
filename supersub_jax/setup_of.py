"""What a config sets up, built once: the hierarchy, the networks' models, the image shape and the data it reads.

  setup = setup_of.build(config)   # recipe.run and evaluation.run, once; passed down to the stages and loaders

Below ``build``, nothing re-resolves the config into a hierarchy or a model: the stages and the workdir reader take
the ``Setup`` (or its hierarchy) as an argument.

The synthetic sizes are stated once, in ``config.synthetic.sizes``: ``config.hierarchy='synthetic'`` is the
hierarchy of those sizes (the dataset's own classes), and a spec with sizes of its own ('synthetic:4,2,2', which
``hierarchy.get`` reads) is refused by the config check with the fix (``config_check``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from supersub_jax import cut as cut_lib
from supersub_jax import delta as delta_lib
from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax import models
from supersub_jax.data import pipeline


def make_hierarchy(config) -> hierarchy_lib.Hierarchy:
  """The hierarchy of ``config.hierarchy``; 'synthetic' is that of ``config.synthetic.sizes``."""
  if config.hierarchy == 'synthetic':
    return hierarchy_lib.synthetic(tuple(config.synthetic.sizes))
  return hierarchy_lib.get(config.hierarchy)


def dataset_kwargs(config) -> dict:
  """The knobs of ``config.dataset`` that ``sources.load_source`` takes (synthetic: its size and cues; ImageNet:
  the pre-resized store)."""
  if config.dataset == 'synthetic':
    from supersub_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    return {k: tuple(config.synthetic[k]) if k == 'sizes' else config.synthetic[k] for k in synthetic.KNOBS}
  if config.dataset == 'imagenet2012' and config.max_side:
    return dict(max_side=int(config.max_side), jpeg_quality=int(config.jpeg_quality))
  return {}


def make_model(config, num_classes: int):
  """The config's ResNet; with ``config.input.normalize == 'device'`` it takes the pipeline's uint8 batches and
  normalises them itself (``models.ResNet.input_norm``)."""
  input_norm = None
  if config.input.normalize == 'device' and config.dataset in pipeline.DATASET_STATS:
    stats = pipeline.DATASET_STATS[config.dataset]
    input_norm = (tuple(stats.mean), tuple(stats.std))
  return models.create_model(config.model, num_classes, stem=config.stem, width=config.width,
                             dtype=jnp.bfloat16 if config.half_precision else jnp.float32, input_norm=input_norm,
                             zero_init_residual=config.zero_init_residual)


def image_shape(config) -> tuple[int, int, int]:
  return (config.image_size, config.image_size, 3)


@dataclasses.dataclass(frozen=True)
class Data:
  """Where the examples come from: ``dataset`` (``choices.DATASETS``), its ``kwargs`` (``dataset_kwargs``), the
  TFDS ``data_dir`` and ImageNet's ``manual_dir`` ('' when none) as the config states them."""
  dataset: str
  kwargs: dict
  data_dir: str
  manual_dir: str
  eval_split: str


@dataclasses.dataclass(frozen=True)
class Setup:
  """A config's hierarchy, models and data, built once (``build``).

  ``flat``: the flat networks' model (vanilla, vanilla_matched, config.init's flat router; one output per subclass);
  ``generalist``: one output per superclass; ``specialist``: a specialist's (the largest superclass's subclasses,
  plus the dustbin column with ``config.specialists.dustbin``). ``image_shape``: (H, W, 3) of one image.
  """
  hierarchy: hierarchy_lib.Hierarchy
  flat: Any
  generalist: Any
  specialist: Any
  image_shape: tuple[int, int, int]
  data: Data

  def model(self, stage: str):
    """The model of a network stage: the generalist's for 'superclass', else the flat one."""
    return self.generalist if stage == 'superclass' else self.flat


def build(config) -> Setup:
  """The ``Setup`` of ``config`` (models are flax modules: nothing is initialised nor compiled). Raises ValueError
  for a hierarchy spec it cannot build (the config check reports it first)."""
  hierarchy = make_hierarchy(config)
  dustbin = int(bool(config.specialists.dustbin))
  data = Data(config.dataset, dataset_kwargs(config), config.data_dir, config.manual_dir, config.eval_split)
  return Setup(hierarchy, flat=make_model(config, hierarchy.num_subclasses),
               generalist=make_model(config, hierarchy.num_superclasses),
               specialist=make_model(config, hierarchy.max_subclasses + dustbin), image_shape=image_shape(config),
               data=data)


def delta_config(cfg) -> delta_lib.DeltaConfig:
  """The DeltaConfig of ``config.specialists`` (bits 0 means no quantization): no delta on the head or the trunk
  before ``cfg.branch``."""
  pattern = delta_lib.LEAVES.get(cfg.leaves, cfg.leaves)
  bits = int(cfg.bits) or None
  trunk = cut_lib.Cut(cfg.branch).trunk_regex
  exclude = delta_lib.EXCLUDE_HEAD if trunk is None else f'{delta_lib.EXCLUDE_HEAD}|{trunk}'
  return delta_lib.DeltaConfig(bits=bits, granularity=cfg.granularity, pattern=pattern, exclude=exclude)


def model_description(config) -> dict:
  """The architecture a specialist's delta fits (JSON): registry name, stem and width multiplier."""
  return {'name': config.model, 'stem': config.stem, 'width': float(config.width)}
