"""Tests for supersub_jax.models: architecture, dtypes, BatchNorm state, registry, helpers.

XLA compiles dominate the runtime on CPU, so each tiny model is initialised once
(module fixtures), every forward pass is jitted, and big models are only traced
with ``jax.eval_shape``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from hypothesis import given, settings
from hypothesis import strategies as st

from supersub_jax import config as config_lib
from supersub_jax import setup_of
from supersub_jax.cut import Cut
from supersub_jax.models import (
    MODELS,
    BottleneckResNetBlock,
    ResNet,
    ResNetBlock,
    create_model,
    flops_per_example,
    init_variables,
    param_count,
)

NUM_CLASSES = 5
TINY_FEATURES = 32  # resnet_tiny: 8 filters doubled over 3 stages


def _abstract_variables(model: ResNet, image_size: int) -> dict:
  """Variables as ShapeDtypeStructs: nothing is allocated, even for ResNet-50."""
  init = functools.partial(model.init, train=False)
  return jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))


def _capture(module_names):
  """capture_intermediates filter keeping the outputs of modules with these names."""
  return lambda mdl, _: mdl.name in module_names


@functools.partial(jax.jit, static_argnames=('model', 'train', 'capture'))
def _apply(model, variables, images, train, capture=None):
  """Jitted forward: returns (logits, features, mutated collections)."""
  mutable = ['batch_stats'] if train else []
  kwargs = {}
  if capture is not None:
    mutable.append('intermediates')
    kwargs['capture_intermediates'] = _capture(capture)
  (logits, features), state = model.apply(
      variables, images, train=train, return_features=True, mutable=mutable, **kwargs
  )
  return logits, features, state


@functools.cache
def _tiny_setup(stem):
  """resnet_tiny with this stem: (model, variables, images [4, 32, 32, 3]); built once."""
  model = create_model('resnet_tiny', NUM_CLASSES, stem=stem)
  # Any PRNG implementation must work; 'rbg' compiles ~4x faster than threefry
  # on CPU, so the second model uses it to keep the suite quick.
  rng = jax.random.key(0, impl='threefry2x32' if stem == 'small' else 'rbg')
  variables = init_variables(model, rng, (32, 32, 3))
  images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  return model, variables, images


@pytest.fixture(params=['small', 'imagenet'])
def tiny(request):
  return _tiny_setup(request.param)


@pytest.fixture
def tiny_small():
  return _tiny_setup('small')


# --- Parameter counts equal torchvision's (params only, batch_stats excluded). ---

@pytest.mark.parametrize(
    'name, expected',
    [('resnet18', 11_689_512), ('resnet34', 21_797_672), ('resnet50', 25_557_032)],
)
def test_standard_parameter_counts(name, expected):
  variables = _abstract_variables(create_model(name, 1000), 224)
  assert set(variables) == {'params', 'batch_stats'}
  assert param_count(variables['params']) == expected


def _basic_small_stem_count(stage_sizes, filters, num_classes):
  """Closed-form parameter count of a basic-block ResNet with the 'small' stem."""
  bn = lambda c: 2 * c  # scale + bias
  total = 3 * 3 * 3 * filters + bn(filters)
  c_in = filters
  for i, blocks in enumerate(stage_sizes):
    c_out = filters * 2**i
    for j in range(blocks):
      total += 9 * c_in * c_out + bn(c_out) + 9 * c_out * c_out + bn(c_out)
      if c_in != c_out or (i > 0 and j == 0):
        total += c_in * c_out + bn(c_out)
      c_in = c_out
  return total + c_in * num_classes + num_classes


@settings(max_examples=10, deadline=None)
@given(
    stage_sizes=st.lists(st.integers(1, 2), min_size=1, max_size=3),
    filters=st.integers(1, 6),
    num_classes=st.integers(1, 7),
)
def test_parameter_count_matches_closed_form(stage_sizes, filters, num_classes):
  model = ResNet(
      stage_sizes=stage_sizes,
      block_cls=ResNetBlock,
      num_classes=num_classes,
      num_filters=filters,
      stem='small',
  )
  variables = _abstract_variables(model, 8)
  assert param_count(variables['params']) == _basic_small_stem_count(
      stage_sizes, filters, num_classes
  )


def test_param_count_counts_arrays_and_shape_structs():
  tree = {'a': jnp.zeros((2, 3)), 'b': {'c': jax.ShapeDtypeStruct((4,), jnp.float32)}}
  assert param_count(tree) == 10
  assert param_count({}) == 0


# --- Forward pass: shapes, dtypes, features. ---

def test_logits_features_and_downsampling_for_both_stems(tiny):
  model, variables, images = tiny
  logits, features, state = _apply(model, variables, images, False, ('stage3_block1',))
  assert logits.shape == (4, NUM_CLASSES) and logits.dtype == jnp.float32
  assert features.shape == (4, TINY_FEATURES) and features.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  # 'imagenet' downsamples 4x in the stem, 'small' not at all; stages 2 and 3 halve.
  last_hw = 32 // (4 if model.stem == 'imagenet' else 1) // 4
  (last_block_out,) = state['intermediates']['stage3_block1']['__call__']
  assert last_block_out.shape == (4, last_hw, last_hw, TINY_FEATURES)
  # features are the spatial mean of the last block's output.
  np.testing.assert_allclose(features, last_block_out.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_return_features_is_the_input_of_the_head(tiny_small):
  model, variables, images = tiny_small
  logits, features, _ = _apply(model, variables, images, False)
  head = variables['params']['head']
  np.testing.assert_allclose(
      logits, features @ head['kernel'] + head['bias'], rtol=1e-5, atol=1e-5
  )
  plain = jax.jit(functools.partial(model.apply, train=False))(variables, images)
  np.testing.assert_allclose(plain, logits, rtol=1e-6, atol=1e-6)


def test_bottleneck_features_are_four_times_wider():
  model = create_model('resnet50', 7)
  variables = _abstract_variables(model, 32)
  apply = functools.partial(model.apply, train=False, return_features=True)
  logits, features = jax.eval_shape(apply, variables, jnp.zeros((2, 32, 32, 3)))
  assert features.shape == (2, 2048) and features.dtype == jnp.float32
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32


def test_head_is_top_level_dense_named_head(tiny_small):
  model, variables, images = tiny_small
  params = variables['params']
  assert params['head']['kernel'].shape == (TINY_FEATURES, NUM_CLASSES)
  # Swapping the head alone must fully determine the logits: zero kernel -> bias.
  bias = jnp.arange(NUM_CLASSES, dtype=jnp.float32)
  new_head = {'kernel': jnp.zeros((TINY_FEATURES, NUM_CLASSES)), 'bias': bias}
  swapped = {**variables, 'params': {**params, 'head': new_head}}
  logits, _, _ = _apply(model, swapped, images, False)
  np.testing.assert_array_equal(logits, jnp.broadcast_to(bias, logits.shape))
  # Every other kernel is a conv kernel [kh, kw, in, out]: 'head' is the only classifier.
  flat = traverse_util.flatten_dict(params)
  backbone_kernels = [v for k, v in flat.items() if k[0] != 'head' and k[-1] == 'kernel']
  assert backbone_kernels and all(v.ndim == 4 for v in backbone_kernels)


def test_bf16_compute_keeps_float32_params_and_logits(tiny_small):
  _, variables, images = tiny_small
  model = create_model('resnet_tiny', NUM_CLASSES, stem='small', dtype=jnp.bfloat16)
  abstract = _abstract_variables(model, 32)
  assert {leaf.dtype for leaf in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
  # Same parameter tree as the float32 model, so its variables can be reused.
  assert jax.tree.structure(abstract) == jax.tree.structure(variables)
  logits, features, state = _apply(model, variables, images, False, ('Conv_0',))
  assert logits.dtype == jnp.float32 and features.dtype == jnp.float32
  # The backbone really computes in bf16 (the dtype field is not ignored).
  (conv_out,) = state['intermediates']['stage1_block1']['Conv_0']['__call__']
  assert conv_out.dtype == jnp.bfloat16
  reference, _, _ = _apply(tiny_small[0], variables, images, False)
  np.testing.assert_allclose(logits, reference, rtol=0.1, atol=0.1)


# --- Architecture details of the residual blocks. ---

def test_residual_blocks_zero_init_last_bn_and_project_when_shape_changes(tiny_small):
  params = tiny_small[1]['params']
  for name in ('stage1_block1', 'stage2_block1', 'stage3_block1'):
    block = params[name]
    assert not jnp.any(block['BatchNorm_1']['scale']), name
    assert jnp.all(block['BatchNorm_0']['scale'] == 1), name
  # Stage 1 keeps 8 channels and the resolution: identity shortcut.
  assert 'conv_proj' not in params['stage1_block1']
  for name in ('stage2_block1', 'stage3_block1'):
    assert params[name]['conv_proj']['kernel'].shape[:2] == (1, 1)
    assert 'norm_proj' in params[name]
  flat = traverse_util.flatten_dict(params)
  conv_biases = [k for k in flat if k[-2].lower().startswith('conv') and k[-1] == 'bias']
  assert conv_biases == []


def test_zero_init_residual_false_starts_every_block_at_unit_scale():
  # One block per stage (resnet_small): with zero scales the branches would start dead (models.ResNet).
  model = create_model('resnet_tiny', NUM_CLASSES, stem='small', zero_init_residual=False)
  params = init_variables(model, jax.random.key(0), (32, 32, 3))['params']
  for name in ('stage1_block1', 'stage2_block1', 'stage3_block1'):
    scale = params[name]['BatchNorm_1']['scale']
    np.testing.assert_array_equal(scale, np.ones(scale.shape), err_msg=name)


def test_config_zero_init_residual_reaches_the_model():
  config = config_lib.default_config()
  assert config.zero_init_residual  # the default keeps the models' behaviour
  config.zero_init_residual = False
  assert not setup_of.make_model(config, 3).zero_init_residual


def test_bottleneck_block_structure():
  model = ResNet(stage_sizes=(1,), block_cls=BottleneckResNetBlock, num_classes=3, num_filters=4)
  # Only the checked leaf is returned, so XLA prunes the rest of the init.
  third_bn_scale = jax.jit(
      lambda rng: model.init(rng, jnp.zeros((1, 8, 8, 3)), train=False)['params'][
          'stage1_block1'
      ]['BatchNorm_2']['scale']
  )(jax.random.key(0))
  np.testing.assert_array_equal(third_bn_scale, np.zeros(16))
  block = _abstract_variables(model, 8)['params']['stage1_block1']
  assert [block[f'Conv_{i}']['kernel'].shape for i in range(3)] == [
      (1, 1, 4, 4), (3, 3, 4, 4), (1, 1, 4, 16)
  ]
  assert block['conv_proj']['kernel'].shape == (1, 1, 4, 16)  # 4 -> 16 channels


# --- BatchNorm state. ---

def test_batch_stats_update_in_train_mode_only(tiny_small):
  model, variables, images = tiny_small
  images = 3.0 * images + 1.0  # batch statistics far from the initial (0, 1)
  logits, _, state = _apply(model, variables, images, True, ('conv_init',))
  assert logits.shape == (4, NUM_CLASSES)
  old = variables['batch_stats']['bn_init']
  new = state['batch_stats']['bn_init']
  assert not np.allclose(new['mean'], old['mean'])
  assert not np.allclose(new['var'], old['var'])
  # Momentum 0.9: running = 0.9 * old + 0.1 * statistic of this batch's BN input.
  (bn_input,) = state['intermediates']['conv_init']['__call__']
  batch_mean = jnp.mean(bn_input, axis=(0, 1, 2))
  np.testing.assert_allclose(new['mean'], 0.9 * old['mean'] + 0.1 * batch_mean, atol=1e-5)
  # Every BatchNorm layer got updated, not only the stem's.
  changed = jax.tree.map(
      lambda a, b: not np.allclose(a, b), state['batch_stats'], variables['batch_stats']
  )
  assert all(jax.tree.leaves(changed))

  eval_apply = jax.jit(functools.partial(model.apply, train=False, mutable=['batch_stats']))
  _, eval_state = eval_apply(variables, images)
  jax.tree.map(
      np.testing.assert_array_equal, eval_state['batch_stats'], variables['batch_stats']
  )


def test_init_keeps_initial_running_statistics(tiny_small):
  stats = traverse_util.flatten_dict(tiny_small[1]['batch_stats'])
  assert stats
  for path, value in stats.items():
    expected = 0.0 if path[-1] == 'mean' else 1.0
    np.testing.assert_array_equal(value, expected, err_msg=str(path))


def test_eval_mode_is_per_example_and_train_mode_is_not(tiny_small):
  model, variables, images = tiny_small
  # Two batches sharing example 0: in eval mode its logits must not depend on the others.
  other = jnp.concatenate([images[:1], -images[1:]])
  eval_a, _, _ = _apply(model, variables, images, False)
  eval_b, _, _ = _apply(model, variables, other, False)
  np.testing.assert_allclose(eval_a[0], eval_b[0], rtol=1e-5, atol=1e-5)
  # Train mode normalises with batch statistics, so examples interact.
  train_a, _, _ = _apply(model, variables, images, True)
  train_b, _, _ = _apply(model, variables, other, True)
  assert not np.allclose(train_a[0], train_b[0], atol=1e-4)


# --- Layer groups: cutting the network at a branch. ---

def test_trunk_then_top_at_every_cut_equals_the_whole_network(tiny):
  model, variables, images = tiny
  whole, features, _ = _apply(model, variables, images, False)
  assert model.layer_groups == ('stem', 'stage1', 'stage2', 'stage3', 'head')
  for branch in model.layer_groups:
    trunk_out = jax.jit(functools.partial(model.apply, train=False, stop=branch))(variables, images)
    # The top reads only its own groups' variables.
    top = {c: Cut(branch).split(v)[1] for c, v in variables.items()}
    logits = jax.jit(functools.partial(model.apply, train=False, start=branch))(top, trunk_out)
    np.testing.assert_allclose(logits, whole, rtol=1e-5, atol=1e-5, err_msg=branch)
    if branch == 'stem':
      np.testing.assert_array_equal(trunk_out, images)
    elif branch == 'head':
      np.testing.assert_allclose(trunk_out, features, rtol=1e-5, atol=1e-6)
    else:  # NHWC activations at the input of the branch's first block
      assert trunk_out.ndim == 4 and trunk_out.shape[0] == images.shape[0]


def test_bad_cut_points_are_rejected(tiny_small):
  model, variables, images = tiny_small
  with pytest.raises(ValueError, match='stage9'):
    model.apply(variables, images, train=False, stop='stage9')
  with pytest.raises(ValueError, match='comes after'):
    model.apply(variables, images, train=False, start='stage3', stop='stage1')
  with pytest.raises(ValueError, match=r'features \[B, D\]'):
    model.apply(variables, images, train=False, start='head')


# --- Registry, factory, helpers. ---

def test_registry_names():
  assert set(MODELS) == {'resnet18', 'resnet34', 'resnet50', 'resnet_tiny', 'resnet_small'}


def test_unknown_model_name_lists_known_names():
  with pytest.raises(ValueError, match='resnet_tiny') as info:
    create_model('resnet1000', 10)
  assert 'resnet1000' in str(info.value) and 'resnet50' in str(info.value)


def test_invalid_stem_width_and_image_shape_are_rejected():
  with pytest.raises(ValueError, match='stem'):
    create_model('resnet_tiny', 10, stem='cifar')
  with pytest.raises(ValueError, match='width'):
    create_model('resnet_tiny', 10, width=0.01)
  with pytest.raises(ValueError, match=r'\(H, W, C\)'):
    init_variables(create_model('resnet_tiny', 10), jax.random.key(0), (1, 16, 16, 3))


@pytest.mark.parametrize(
    'name, base_filters', [('resnet_tiny', 8), ('resnet_small', 16), ('resnet18', 64)]
)
@pytest.mark.parametrize('width', [0.5, 1.0, 2.0])
def test_width_scales_base_filters(name, base_filters, width):
  model = create_model(name, 10, width=width)
  assert model.num_filters == int(round(base_filters * width))


def test_resnet_small_is_a_four_stage_basic_resnet():
  model = create_model('resnet_small', 10, stem='small')
  params = _abstract_variables(model, 32)['params']
  assert model.block_cls is ResNetBlock
  assert [k for k in params if k.startswith('stage')] == [
      'stage1_block1', 'stage2_block1', 'stage3_block1', 'stage4_block1'
  ]
  assert params['head']['kernel'].shape == (128, 10)
  assert param_count(params) == _basic_small_stem_count((1, 1, 1, 1), 16, 10)


def _textbook_forward_flops(model, variables, images):
  """2 * multiply-adds of all convs and the head per image, ignoring padding."""
  _, state = jax.jit(
      lambda v, x: model.apply(
          v,
          x,
          train=False,
          capture_intermediates=lambda mdl, _: type(mdl).__name__ in ('Conv', 'Dense'),
          mutable=['intermediates'],
      )
  )(variables, images[:1])
  outputs = traverse_util.flatten_dict(state['intermediates'])
  kernels = traverse_util.flatten_dict(variables['params'])
  assert len(outputs) == sum(1 for k in kernels if k[-1] == 'kernel')
  macs = 0
  for path, (out,) in outputs.items():
    kernel = kernels[path[:-1] + ('kernel',)]
    macs += math.prod(out.shape[1:-1]) * math.prod(kernel.shape)
  return 2.0 * macs


def test_flops_per_example_close_to_textbook_count(tiny):
  model, variables, images = tiny
  flops = flops_per_example(model, variables, (32, 32, 3))
  textbook = _textbook_forward_flops(model, variables, images)
  # XLA skips multiplies by padding (fewer FLOPs) but adds BN/ReLU/pool (more).
  assert 0.8 * textbook < flops < 1.1 * textbook, (flops, textbook)


def test_train_mode_flops_are_a_forward_pass_too(tiny_small):
  model, variables, _ = tiny_small
  eval_flops = flops_per_example(model, variables, (32, 32, 3))
  train_flops = flops_per_example(model, variables, (32, 32, 3), train=True)
  assert eval_flops <= train_flops < 1.5 * eval_flops


# --- The convolution: every ResNet convolution is cpu_conv's (tests/test_cpu_conv.py tests it alone). ---

def test_every_resnet_convolution_is_the_custom_convolution(tiny_small):
  model, variables, images = tiny_small
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, images, train=True, mutable=['batch_stats']))(variables).jaxpr

  def primitives(jaxpr):  # every equation's primitive, sub-jaxprs (jit, custom_vjp) included
    for eqn in jaxpr.eqns:
      yield eqn.primitive.name
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        yield from primitives(sub)

  names = list(primitives(jaxpr))
  convs = sum(1 for p in traverse_util.flatten_dict(variables['params']) if p[-1] == 'kernel' and p[0] != 'head')
  assert names.count('custom_vjp_call') == names.count('conv_general_dilated') == convs == 9


def test_resnet_training_gradient_equals_the_one_through_lax_convolutions(tiny_small, monkeypatch):
  model, variables, images = tiny_small

  def grads():
    def loss(params):
      logits, _ = model.apply({**variables, 'params': params}, images, train=True, mutable=['batch_stats'])
      return jax.nn.log_softmax(logits)[:, 0].mean()
    return jax.jit(jax.grad(loss))(variables['params'])

  ours = grads()
  monkeypatch.setattr('supersub_jax.cpu_conv.conv_general_dilated', jax.lax.conv_general_dilated)
  xla = grads()
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(xla)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))


def test_uint8_images_are_normalised_by_the_network_as_the_host_pipeline_does(tiny_small):
  model, variables, _ = tiny_small
  mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
  with_norm = model.clone(input_norm=(mean, std))
  pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  # pipeline._Finalize's host normalisation, in numpy.
  host = pixels.astype(np.float32) * (1 / (255 * np.float32(std))) - np.float32(mean) / np.float32(std)
  np.testing.assert_allclose(with_norm.apply(variables, pixels, train=False),
                             model.apply(variables, host, train=False), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='input_norm'):
    model.apply(variables, pixels, train=False)


def test_the_registry_has_exactly_the_model_names_the_command_line_lists():
  from supersub_jax import choices  # pylint: disable=g-import-not-at-top
  assert tuple(MODELS) == choices.MODELS
