"""Random generalists and hand-built exported specialists over resnet_tiny (8x8 images), for the bank and
inference tests: every encoding (bitmask and indices, int8/int4/unquantized, per-channel and per-tensor scales,
kernel-only and kernel+norm deltas, a leaf with nothing kept)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from supersub_jax import cut as cut_lib
from supersub_jax import delta as dl
from supersub_jax import exported as exported_lib
from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax import models

IMAGE_SHAPE = (8, 8, 3)


def random_variables(model, seed):
  """Random {'params', 'batch_stats'} for ``model`` without compiling its init (slow on a busy CPU): He-scaled
  kernels, BN scales near 1, running statistics unlike the init's (mean 0, var 1)."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct((1,) + IMAGE_SHAPE, jnp.float32))
  r = np.random.RandomState(seed)

  def param(path, x):
    shape, name = x.shape, path[-1].key
    if name == 'kernel':
      return np.float32(r.randn(*shape) * np.sqrt(2.0 / np.prod(shape[:-1])))
    return np.float32((name == 'scale') + r.randn(*shape) * 0.1)

  return {'params': jax.tree_util.tree_map_with_path(param, shapes['params']),
          'batch_stats': random_stats(shapes['batch_stats'], seed + 1)}


def random_stats(stats, seed):
  """Running statistics unlike the init's (mean 0, var 1), so a specialist's own statistics matter."""
  r = np.random.RandomState(seed)

  def leaf(path, x):
    shape = np.shape(x)
    return np.float32(r.rand(*shape) + 0.5) if path[-1].key == 'var' else np.float32(r.randn(*shape) * 0.1)

  return jax.tree_util.tree_map_with_path(leaf, stats)


def export(base, seed, *, bits, granularity, pattern, density, n_sub, d_feat, stats, empty_leaf=None):
  """An ``exported.export``-like dict built by hand: random delta, random mask, random head."""
  r = np.random.RandomState(seed)
  cfg = dl.DeltaConfig(bits=bits, granularity=granularity, pattern=pattern)
  delta = jax.tree.map(lambda z: np.float32(r.randn(*z.shape) * 0.05), dl.init_delta(base, pattern))
  masks = jax.tree.map(lambda d: r.rand(*d.shape) < density, delta)
  if empty_leaf is not None:  # a selected leaf with nothing kept: a record with k = 0
    node = functools.reduce(lambda t, key: t[key], empty_leaf[:-1], masks)
    node[empty_leaf[-1]] = np.zeros_like(node[empty_leaf[-1]])
  return {'delta': exported_lib.compress(delta, masks, cfg),
          'head': {'kernel': np.float32(r.randn(d_feat, n_sub)), 'bias': np.float32(r.randn(n_sub) * 0.1)},
          'batch_stats': random_stats(stats, seed + 7),
          'spec': exported_lib.describe(cut_lib.Cut('stem'), cfg, num_subclasses=n_sub, density=density)}


def world(sizes, seed=0, mixed=True):
  """(hierarchy, generalist model, specialist model, generalist variables, exported specialists)."""
  hierarchy = hierarchy_lib.synthetic(sizes)
  gm = models.create_model('resnet_tiny', hierarchy.num_superclasses, stem='small')
  sm = models.create_model('resnet_tiny', hierarchy.max_subclasses, stem='small')
  gen = random_variables(gm, seed)
  base = cut_lib.split_head(gen['params'])[0]
  d_feat = gen['params']['head']['kernel'].shape[0]
  kinds = [dict(bits=4, granularity='per_channel', pattern=dl.KERNELS, density=0.3),
           dict(bits=8, granularity='per_tensor', pattern=dl.KERNELS_AND_NORM, density=0.3),
           dict(bits=None, granularity='per_channel', pattern=dl.KERNELS, density=0.05,
                empty_leaf=('stage1_block1', 'Conv_1', 'kernel'))]
  if not mixed:
    kinds = [dict(bits=8, granularity='per_channel', pattern=dl.KERNELS, density=0.3)]
  exported = [export(base, 100 + k, n_sub=n, d_feat=d_feat, stats=gen['batch_stats'],
                      **kinds[k % len(kinds)]) for k, n in enumerate(sizes)]
  return hierarchy, gm, sm, gen, exported


def routed_world(sizes):
  """``world(sizes)`` as a dict, with signed zeros in the base (base + 0.0 must reproduce materialize_compressed)
  and the generalist's head centred on 10 random images ('images') so that they go to several specialists; 'state'
  is the SuperSub state, 'base' the backbone, 'gen_logits' float32[10, N] the generalist's logits on 'images'."""
  from supersub_jax import bank as bank_lib  # pylint: disable=g-import-not-at-top
  hierarchy, gm, sm, gen, exported = world(sizes)
  kernel = gen['params']['stage2_block1']['Conv_0']['kernel']
  kernel.reshape(-1)[:64] = -0.0
  images = np.float32(np.random.RandomState(3).randn(10, *IMAGE_SHAPE))
  _, features = jax.jit(functools.partial(gm.apply, train=False, return_features=True))(gen, images)
  features = np.asarray(features)
  head = gen['params']['head']
  head['kernel'] = head['kernel'] * np.float32(10.0 / np.std(features))
  head['bias'] = np.float32(-features.mean(0) @ head['kernel'])
  state = bank_lib.build_supersub(gen, exported, hierarchy)
  return {'hierarchy': hierarchy, 'gm': gm, 'sm': sm, 'gen': gen, 'exported': exported, 'state': state,
          'base': cut_lib.split_head(gen['params'])[0], 'images': images,
          'gen_logits': features @ head['kernel'] + head['bias']}


def padded_head(ex, s):
  """An exported specialist's head {'kernel' [D, s], 'bias' [s]}, zero-padded to s columns."""
  kernel, bias = ex['head']['kernel'], ex['head']['bias']
  return {'kernel': np.pad(kernel, ((0, 0), (0, s - kernel.shape[1]))), 'bias': np.pad(bias, (0, s - bias.shape[0]))}
