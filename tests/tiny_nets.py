"""A tiny ResNet, its optimizer config and random batches: what the step, runtime and runner tests train."""

import jax
import ml_collections
import numpy as np

from supersub_jax import models

IMAGE = (16, 16, 3)


def opt_cfg(**kw):
  cfg = ml_collections.ConfigDict(dict(learning_rate=0.1, warmup_steps=2, schedule='cosine', optimizer='sgd',
                                       momentum=0.9, nesterov=True, weight_decay=1e-3))
  cfg.update(kw)
  return cfg


def setup(num_classes=5, seed=0):
  """resnet_tiny -> (model, host params, host batch_stats)."""
  model = models.create_model('resnet_tiny', num_classes, stem='small')
  variables = models.init_variables(model, jax.random.key(seed), IMAGE)
  return model, jax.device_get(variables['params']), jax.device_get(variables['batch_stats'])


def batches(num_devices, per_device, steps, num_classes=5, seed=0):
  """``steps`` random batches: 'image' float32 [num_devices, per_device, *IMAGE], 'label' int32 [num_devices,
  per_device]."""
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    yield {'image': rng.normal(size=(num_devices, per_device) + IMAGE).astype(np.float32),
           'label': rng.integers(0, num_classes, size=(num_devices, per_device)).astype(np.int32)}
