"""CIFAR-100 as 20 superclasses x 5 subclasses, ResNet-18 with the small-image stem.

Command (after `python -m tools.prepare --dataset=cifar100 --data_dir=./data`):
  python train.py --config=configs/cifar100_resnet18.py --workdir=runs/cifar100
  python evaluate.py --workdir=runs/cifar100
Runtime: not measured yet on an accelerator (CIFAR-100 cannot be downloaded where this was written); expect about
1 hour on one modern GPU for the three stages (200 + 100 epochs-equivalent of 391 steps, 20 x 1500 specialist steps).
Expected result: not measured yet; a ResNet-18 reaches about 75-78% top-1 on CIFAR-100 with this recipe.
"""

from supersub_jax import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.dataset = 'cifar100'
  config.hierarchy = 'cifar100'
  config.model = 'resnet18'
  config.stem = 'small'
  config.image_size = 32
  config.augment = 'crop_flip'
  config.batch_size = 128
  config.worker_count = 4
  config.checkpoint_every_steps = 2000
  config.log_every_steps = 100
  steps_per_epoch = 50000 // config.batch_size
  config.vanilla.num_train_steps = 200 * steps_per_epoch
  config.vanilla.warmup_steps = 2 * steps_per_epoch
  config.vanilla.learning_rate = 0.1
  config.superclass.num_train_steps = 100 * steps_per_epoch
  config.superclass.warmup_steps = steps_per_epoch
  config.superclass.learning_rate = 0.05
  config.specialists.num_train_steps = 1500
  config.specialists.learning_rate = 0.01
  return config
