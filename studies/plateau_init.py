"""Study: what the demo's flat network can learn at its first step, with and without zero-initialised residuals.

  python -m studies.plateau_init --config=configs/synthetic_scratch.py [--config.zero_init_residual=False]

On one training batch of the vanilla stage at initialisation (seed ``config.seed``), prints per layer group the
norm of the loss gradient of the convolution kernels, and the receptive field of the network's path that carries
signal at initialisation. With ``zero_init_residual`` every residual branch ends in a BatchNorm of scale 0: its
output is 0 and its kernels' gradient is exactly 0 (the gradient reaches a branch kernel only through that scale),
so the first steps train only the stem, the strided 1x1 projections of the shortcuts, the BatchNorm affine
parameters and the head. Also prints how many input pixels the logits depend on at all (input gradient).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import traverse_util

from supersub_jax import cli
from supersub_jax import models
from supersub_jax import setup_of
from supersub_jax import stages
from supersub_jax import step as step_lib

FLAGS = flags.FLAGS
cli.define_config_flag(stored_in_workdir=False)


def main(argv):
  del argv
  config = FLAGS.config
  hierarchy = setup_of.make_hierarchy(config)
  model = setup_of.make_model(config, hierarchy.num_subclasses)
  seed = int(config.seed)
  variables = models.init_variables(model, jax.random.key(seed), setup_of.image_shape(config))
  batches = stages.train_batches(config, stages.load_source(config, 'train', hierarchy), label_mode='subclass',
                                 seed=seed)
  batch = next(batches)
  images = jnp.asarray(batch['image']).reshape((-1,) + batch['image'].shape[2:])
  labels = jnp.asarray(batch['label']).reshape(-1)

  @jax.jit
  def grads_and_logits(params):
    def loss_fn(params):
      logits, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, images, train=True,
                              mutable=['batch_stats'])
      return step_lib.cross_entropy(logits, labels), logits
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  (loss, logits), grads = grads_and_logits(variables['params'])
  print(f'zero_init_residual={config.zero_init_residual} seed={seed}: loss {float(loss):.4f} '
        f'(ln {hierarchy.num_subclasses} = {np.log(hierarchy.num_subclasses):.4f}), logits std over images '
        f'{float(jnp.std(logits, axis=0).mean()):.4f}')
  flat = traverse_util.flatten_dict(grads)
  # Which pixels the logits depend on at all: the input gradient of a random projection of the logits, in eval mode
  # (train mode's batch statistics would couple every pixel of the batch).
  probe = jax.random.normal(jax.random.key(1), logits.shape)
  pixel_grad = jax.jit(jax.grad(lambda x: jnp.sum(probe * model.apply(variables, x, train=False))))(images)
  seen = np.asarray(jnp.abs(pixel_grad).sum(axis=(0, 3)) > 0)
  print(f'pixels the logits depend on: {int(seen.sum())} of {seen.size} (rows {np.flatnonzero(seen.any(1)).tolist()})')
  print(f'{"kernel":40s} {"shape":>18s} {"|grad|":>10s}')
  for path, g in sorted(flat.items()):
    if path[-1] == 'kernel':
      print(f'{"/".join(path):40s} {str(tuple(g.shape)):>18s} {float(jnp.linalg.norm(g)):10.2e}')


if __name__ == '__main__':
  cli.run(main)
