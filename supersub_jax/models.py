"""Flax linen ResNets (v1.5) for the generalist and its specialists.

The architecture follows flax's ``examples/imagenet/models.py``: bias-free
convolutions, BatchNorm after every convolution, the scale of each residual
block's last BatchNorm initialised to zero, and a 1x1 conv + BN projection on the
shortcut whenever the shape changes. Bottleneck blocks stride in the 3x3 conv
(ResNet v1.5, as torchvision), so parameter counts equal torchvision's.

Parameter layout contract (other modules rely on it): the classifier is the
``nn.Dense`` named ``'head'`` at the top level of ``params``; every other
top-level key belongs to the backbone.

Layer groups. In forward order a ResNet of S stages is the groups ``'stem'``
(``conv_init``, ``bn_init``), ``'stage1'`` .. ``'stageS'`` (``stage{i}_block{j}``;
the global average pool ends the last stage) and ``'head'``. A group name is also a
cut point: ``apply(..., stop=g)`` runs the groups before ``g`` and returns their
output (NHWC activations, or pooled features ``[B, D]`` for ``g='head'``);
``apply(..., start=g)`` runs the rest from that output. ``cut.Cut(g)`` is such a
point as specialists use it: it divides a ``params`` or ``batch_stats`` tree the
same way, and specialists with a shared trunk change only the groups from it on.

Convolutions run through ``cpu_conv.conv_general_dilated``: ``jax.lax``'s values and gradients, except that on CPU
the kernel gradient is one matmul per kernel tap instead of XLA:CPU's backward-filter convolution (5-12x faster for
ResNet-18's first two stages at 32x32; ``benchmarks/conv.py``).

Shapes: images are NHWC ``[B, H, W, 3]``; logits are float32 ``[B, num_classes]``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from supersub_jax.choices import STEMS
from supersub_jax import cpu_conv

ModuleDef = Any


# He et al. (2015) initialisation, as in the ResNet paper and torchvision: it keeps
# activations' variance stable through ReLU layers of a deep, BN-free-at-init path.
_conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _same_padding(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  # Symmetric k//2 padding (as PyTorch) rather than XLA 'SAME', which pads
  # asymmetrically for strided convs on even inputs and would shift features.
  p = kernel_size // 2
  return ((p, p), (p, p))


def _head(num_classes: int) -> nn.Dense:
  return nn.Dense(num_classes, dtype=jnp.float32, name='head')


def init_head(num_classes: int, num_features: int, rng: jax.Array) -> dict:
  """Fresh params of a ResNet's ``'head'`` (kernel float32 [D, C], bias float32 [C]) alone.

  Re-heading a pretrained backbone needs only this layer; initialising a whole network for it would compile the
  random initialisers of every layer (seconds per network on CPU).
  """
  return _head(num_classes).init(rng, jnp.zeros((1, num_features), jnp.float32))['params']


def _last_bn_scale_init(zero: bool) -> Callable[..., jax.Array]:
  return nn.initializers.zeros if zero else nn.initializers.ones


class ResNetBlock(nn.Module):
  """Basic residual block: two 3x3 convs. Output channels = ``filters``.

  Input ``[B, H, W, C]`` -> output ``[B, H/s, W/s, filters]`` for stride ``s``.
  """

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[jax.Array], jax.Array]
  strides: tuple[int, int] = (1, 1)
  zero_init_last_bn: bool = True

  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides, padding=_same_padding(3))(x)
    y = self.norm()(y)
    y = self.act(y)
    y = self.conv(self.filters, (3, 3), padding=_same_padding(3))(y)
    # Zero scale makes each block start as the identity, which eases early training of deep networks
    # (``ResNet.zero_init_residual``).
    y = self.norm(scale_init=_last_bn_scale_init(self.zero_init_last_bn))(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides, name='conv_proj')(residual)
      residual = self.norm(name='norm_proj')(residual)
    return self.act(residual + y)


class BottleneckResNetBlock(nn.Module):
  """Bottleneck block: 1x1 -> 3x3 (strided) -> 1x1. Output channels = 4 * ``filters``.

  Input ``[B, H, W, C]`` -> output ``[B, H/s, W/s, 4 * filters]`` for stride ``s``.
  """

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[jax.Array], jax.Array]
  strides: tuple[int, int] = (1, 1)
  zero_init_last_bn: bool = True

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    y = self.conv(self.filters, (1, 1))(x)
    y = self.norm()(y)
    y = self.act(y)
    y = self.conv(self.filters, (3, 3), self.strides, padding=_same_padding(3))(y)
    y = self.norm()(y)
    y = self.act(y)
    y = self.conv(self.filters * self.expansion, (1, 1))(y)
    y = self.norm(scale_init=_last_bn_scale_init(self.zero_init_last_bn))(y)
    if residual.shape != y.shape:
      residual = self.conv(
          self.filters * self.expansion, (1, 1), self.strides, name='conv_proj'
      )(residual)
      residual = self.norm(name='norm_proj')(residual)
    return self.act(residual + y)


class ResNet(nn.Module):
  """ResNet v1.5 classifier.

  Attributes:
    stage_sizes: number of blocks in each stage; stage ``i > 0`` halves H and W.
    block_cls: ``ResNetBlock`` or ``BottleneckResNetBlock``.
    num_classes: width of the ``'head'`` Dense layer.
    num_filters: channels of the stem and of the first stage (doubles per stage).
    stem: ``'imagenet'`` (7x7/2 conv + 3x3/2 max-pool, 4x downsampling) or
      ``'small'`` (3x3/1 conv, no pooling; for 32x32 inputs such as CIFAR).
    dtype: compute dtype of the backbone (e.g. ``jnp.bfloat16``). Parameters
      are always float32; pooled features, head and logits are float32.
    bn_axis_name: ``pmap``/``shard_map`` axis over which BatchNorm averages batch
      statistics. Leave ``None`` under ``jit`` with a sharded batch: XLA already
      computes the global-batch statistics there.
    bn_momentum: decay of the BatchNorm running averages.
    bn_epsilon: BatchNorm variance epsilon.
    input_norm: ``(mean, std)`` per channel on [0, 1] pixels: the network also takes uint8 images ``[B, H, W, 3]``
      and normalises them first, in the compiled forward, as the input pipeline would on the host
      (``x * 1 / (255 std) - mean / std`` in float32), so batches travel to the device as uint8 (4x fewer bytes).
      None: uint8 images are refused. Float images are taken as already normalised either way.
    zero_init_residual: initialise the scale of each residual block's last
      BatchNorm to zero (Goyal et al. 2017), so that every block starts as its
      shortcut. That eases deep networks, whose identity shortcuts carry the
      signal meanwhile. With one block per stage (resnet_small) every shortcut
      after the first stage is a strided 1x1 projection: the network starts as
      its 3x3 stem read every 8 pixels (its logits depend on 121 of a 32x32
      image's 1,024 pixels), and a branch's kernels get no gradient until its
      zero scale has grown. That kept the demo's flat network at chance for
      about 300 steps; False (every scale 1) lets the branches learn from the
      first step (studies/plateau.py, docs/results/plateau.md).
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int
  num_filters: int = 64
  stem: str = 'imagenet'
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  input_norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None
  zero_init_residual: bool = True

  @property
  def layer_groups(self) -> tuple[str, ...]:
    """This network's layer groups (and cut points) in forward order: 'stem', 'stage1' .. 'stageS', 'head'."""
    return ('stem',) + tuple(f'stage{i + 1}' for i in range(len(self.stage_sizes))) + ('head',)

  @nn.compact
  def __call__(
      self, x: jax.Array, train: bool = True, return_features: bool = False, *, start: str = 'stem',
      stop: str | None = None,
  ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Classifies a batch of images, or runs the layer groups from ``start`` to before ``stop``.

    Args:
      x: float images ``[B, H, W, 3]``; with ``start`` past 'stem', the output of ``apply(..., stop=start)``.
      train: if True, BatchNorm normalises with batch statistics and updates
        ``batch_stats`` (apply with ``mutable=['batch_stats']``); if False it
        uses the running averages.
      return_features: also return the pooled features fed to the head.
      start, stop: layer groups (``layer_groups``; module docstring): run the groups from ``start`` up to, not
        including, ``stop`` (None: through the head). Only the variables of the groups run are read.

    Returns:
      logits float32 ``[B, num_classes]``, or ``(logits, features)`` with
      features float32 ``[B, D]``, ``D = num_filters * 2**(len(stage_sizes)-1)
      * block_cls.expansion``. With ``stop`` set: the activations at ``stop``, ``[B, h, w, c]`` in the compute
      dtype, or the float32 features ``[B, D]`` for ``stop='head'``.
    """
    if self.stem not in STEMS:
      raise ValueError(f'Unknown stem {self.stem!r}; use one of {STEMS}.')
    groups = self.layer_groups
    for name, group in (('start', start), ('stop', stop or 'head')):
      if group not in groups:
        raise ValueError(f'{name}={group!r} is not a layer group of this ResNet; use one of {groups}.')
    first, end = groups.index(start), (groups.index(stop) if stop else len(groups))
    if first > end:
      raise ValueError(f'start={start!r} comes after stop={stop!r}.')
    if return_features and stop:
      raise ValueError('return_features needs the head to run (stop=None).')
    want_ndim = 2 if start == 'head' else 4
    if x.ndim != want_ndim:
      raise ValueError(f'Expected {"features [B, D]" if want_ndim == 2 else "NHWC images [B, H, W, C]"} at '
                       f'start={start!r}, got shape {x.shape}.')
    runs = lambda group: first <= groups.index(group) < end
    if x.dtype == jnp.uint8:
      if self.input_norm is None or start != 'stem':
        raise ValueError('uint8 images need the network\'s input_norm (mean, std) to normalise them, and start at '
                         "'stem'; build it with input_norm=..., or pass normalised float images.")
      mean, std = (jnp.asarray(v, jnp.float32) for v in self.input_norm)
      x = x.astype(jnp.float32) * (1.0 / (255.0 * std)) - mean / std

    conv = functools.partial(
        nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=_conv_kernel_init,
        conv_general_dilated=cpu_conv.conv_general_dilated
    )
    norm = functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        dtype=self.dtype,
        axis_name=self.bn_axis_name,
    )

    if runs('stem'):
      if self.stem == 'imagenet':
        x = conv(
            self.num_filters, (7, 7), (2, 2), padding=_same_padding(7), name='conv_init'
        )(x)
        x = norm(name='bn_init')(x)
        x = nn.relu(x)
        # max_pool pads with -inf, so explicit padding matches PyTorch's MaxPool2d(3, 2, 1).
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_same_padding(3))
      else:
        x = conv(self.num_filters, (3, 3), padding=_same_padding(3), name='conv_init')(x)
        x = norm(name='bn_init')(x)
        x = nn.relu(x)

    for i, block_size in enumerate(self.stage_sizes):
      if not runs(f'stage{i + 1}'):
        continue
      for j in range(block_size):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        x = self.block_cls(
            self.num_filters * 2**i,
            strides=strides,
            conv=conv,
            norm=norm,
            act=nn.relu,
            zero_init_last_bn=self.zero_init_residual,
            name=f'stage{i + 1}_block{j + 1}',
        )(x)
      if i == len(self.stage_sizes) - 1:
        # Pool and classify in float32: a bf16 mean over H*W positions and bf16
        # logits lose precision that the softmax and the specialist deltas need.
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))

    if not runs('head'):
      return x
    logits = _head(self.num_classes)(x)
    if return_features:
      return logits, x
    return logits


# name -> (block_cls, stage_sizes, base num_filters)
_ARCHS: dict[str, tuple[ModuleDef, tuple[int, ...], int]] = {
    'resnet18': (ResNetBlock, (2, 2, 2, 2), 64),
    'resnet34': (ResNetBlock, (3, 4, 6, 3), 64),
    'resnet50': (BottleneckResNetBlock, (3, 4, 6, 3), 64),
    # Test-sized: 3 stages of one basic block, 8/16/32 channels.
    'resnet_tiny': (ResNetBlock, (1, 1, 1), 8),
    # Demo-sized: a real 4-stage ResNet (16..128 channels) that trains in
    # minutes on a 2-core CPU at 32x32 with the 'small' stem.
    'resnet_small': (ResNetBlock, (1, 1, 1, 1), 16),
}


def _make_factory(name: str) -> Callable[..., ResNet]:
  block_cls, stage_sizes, base_filters = _ARCHS[name]

  def factory(
      num_classes: int,
      *,
      stem: str = 'imagenet',
      width: float = 1.0,
      dtype: Any = jnp.float32,
      bn_axis_name: str | None = None,
      input_norm: tuple | None = None,
      zero_init_residual: bool = True,
  ) -> ResNet:
    if num_classes < 1:
      raise ValueError(f'num_classes must be >= 1, got {num_classes}.')
    if stem not in STEMS:
      raise ValueError(f'Unknown stem {stem!r}; use one of {STEMS}.')
    num_filters = int(round(base_filters * width))
    if num_filters < 1:
      raise ValueError(
          f'width={width} gives {num_filters} filters for {name} (base {base_filters});'
          ' use a width of at least 1/base filters.'
      )
    return ResNet(
        stage_sizes=stage_sizes,
        block_cls=block_cls,
        num_classes=num_classes,
        num_filters=num_filters,
        stem=stem,
        dtype=dtype,
        bn_axis_name=bn_axis_name,
        input_norm=input_norm,
        zero_init_residual=zero_init_residual,
    )

  factory.__name__ = name
  factory.__doc__ = f'Builds {name}; ``width`` scales its base {base_filters} filters.'
  return factory


# Registry of model factories: ``MODELS[name](num_classes, *, stem, width, dtype, bn_axis_name, input_norm,
# zero_init_residual)``.
MODELS: Mapping[str, Callable[..., ResNet]] = {name: _make_factory(name) for name in _ARCHS}


def create_model(
    name: str,
    num_classes: int,
    *,
    stem: str = 'imagenet',
    width: float = 1.0,
    dtype: Any = jnp.float32,
    bn_axis_name: str | None = None,
    input_norm: tuple | None = None,
    zero_init_residual: bool = True,
) -> ResNet:
  """Builds a registered ResNet; ``width`` multiplies the architecture's base filters; ``input_norm`` (mean, std)
  lets it take uint8 images; ``zero_init_residual``: ``ResNet``'s (an initialisation only: checkpoints and
  converted weights do not depend on it)."""
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}; known models: {sorted(MODELS)}.')
  return MODELS[name](
      num_classes, stem=stem, width=width, dtype=dtype, bn_axis_name=bn_axis_name, input_norm=input_norm,
      zero_init_residual=zero_init_residual,
  )


def param_count(params: Any) -> int:
  """Number of scalars in a pytree of arrays or ``jax.ShapeDtypeStruct``s."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def _check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
  if len(image_shape) != 3:
    raise ValueError(
        f'image_shape must be (H, W, C) without the batch axis, got {tuple(image_shape)}.'
    )
  return tuple(int(d) for d in image_shape)  # type: ignore[return-value]


def init_variables(model: ResNet, rng: jax.Array, image_shape: Sequence[int]) -> dict:
  """Initialises ``{'params', 'batch_stats'}`` from a ``[1, H, W, C]`` zeros input.

  ``image_shape`` is ``(H, W, C)``. The running averages hold their initial
  values (mean 0, var 1): flax does not update them during init.
  """
  h, w, c = _check_image_shape(image_shape)
  dummy = jnp.zeros((1, h, w, c), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(rng, dummy)
  return dict(variables)


def flops_per_example(
    model: ResNet,
    variables: Mapping[str, Any],
    image_shape: Sequence[int],
    train: bool = False,
) -> float:
  """Forward-pass FLOPs for one image, from XLA's cost analysis of the
  computation lowered for the CPU, whatever the default backend.

  FLOPs do not depend on the backend, but the analysis does: a compiled GPU
  module moves the convolutions into cuDNN custom calls that it does not count
  (it read 40x low on an H200), and jax 0.11's GPU client analyses no lowered
  module at all. The CPU lowering holds every convolution as HLO. Counts a
  multiply-add as 2 FLOPs (XLA's convention), for a batch of one ``(H, W, C)``
  image. XLA skips multiplies by padding, so this reads a few percent under
  textbook counts (ResNet-18 at 224: 3.37 vs 3.64 GFLOPs; ResNet-50: 7.95 vs
  8.18). This is the forward pass only; a training step
  (forward + backward) costs about 3x this. ``train=True`` measures the
  train-mode forward (batch statistics and their update), slightly more.
  ``variables`` may hold arrays or ``jax.ShapeDtypeStruct``s.
  """
  h, w, c = _check_image_shape(image_shape)
  on_cpu = jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0])
  image = jax.ShapeDtypeStruct((1, h, w, c), jnp.float32, sharding=on_cpu)
  variables = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on_cpu), variables
  )

  def forward(variables, images):
    if train:
      return model.apply(variables, images, train=True, mutable=['batch_stats'])
    return model.apply(variables, images, train=False)

  analysis = jax.jit(forward).lower(variables, image).cost_analysis()
  # Older jax returned one dict per computation in a list.
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  if not analysis or 'flops' not in analysis:
    raise RuntimeError(
        'XLA cost analysis reported no FLOPs for this backend;'
        ' compute the FLOPs analytically instead.'
    )
  return float(analysis['flops'])
