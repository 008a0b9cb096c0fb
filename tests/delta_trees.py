"""Small params trees laid out like a flax linen ResNet, and bitwise tree comparisons (test_delta, test_exported)."""

import jax
import jax.numpy as jnp
import numpy as np

from supersub_jax import delta as dl


def rand(rng, shape, std=1.0):
  return np.float32(rng.randn(*shape) * std)


def params(seed=0):
  """Tiny params dict laid out like a flax linen ResNet 'params' collection."""
  r = np.random.RandomState(seed)
  return {
      'conv_init': {'kernel': rand(r, (3, 3, 3, 8))},
      'bn_init': {'scale': 1 + rand(r, (8,), 0.1), 'bias': rand(r, (8,), 0.1)},
      'ResNetBlock_0': {
          'Conv_0': {'kernel': rand(r, (3, 3, 8, 8))},
          'BatchNorm_0': {'scale': 1 + rand(r, (8,), 0.1), 'bias': rand(r, (8,), 0.1)},
          'Conv_1': {'kernel': rand(r, (3, 3, 8, 16))},
      },
      'head': {'kernel': rand(r, (16, 5)), 'bias': np.zeros(5, np.float32)},
  }


def trained_delta(base, seed, pattern=dl.KERNELS, std=0.01):
  r = np.random.RandomState(seed)
  return jax.tree.map(lambda z: jnp.asarray(rand(r, z.shape, std)), dl.init_delta(base, pattern))


def bits_equal(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def get(tree, path):
  for k in path:
    tree = tree[k.key]
  return tree


def assert_trees_bit_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for path, x in jax.tree_util.tree_flatten_with_path(a)[0]:
    assert bits_equal(x, get(b, path)), dl.path_str(path)


def flatten_compressed(c, prefix=''):
  out = {}
  for k, v in c.items():
    if isinstance(v, dict):
      out.update(flatten_compressed(v, f'{prefix}{k}/'))
    else:
      out[prefix + k] = v
  return out
