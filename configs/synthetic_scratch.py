"""The synthetic dataset's pipeline from random weights: the vanilla network, the generalist from it, the
specialists from the generalist, and the flat network given the whole pipeline's steps (the scratch regime of
studies/regimes.py; the demo, configs/synthetic.py, starts from a converged flat network instead).

Command:
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python train.py --config=configs/synthetic_scratch.py \
      --workdir=runs/scratch
  python evaluate.py --workdir=runs/scratch
Runtime: about 28 minutes on the 2-core CPU of docs/benchmarks.md (vanilla 1,200 steps, generalist 300,
  specialists 950, the compute-matched flat network 2,450, then the evaluation).
Expected result: see docs/benchmarks.md, "Where the hierarchy pays" (scratch regime, seeds 0, 1, 2: the flat
  network 0.9614 top-1, Super-Sub 0.9537 with the hard rule, means); the flat recipe alone
  (studies/plateau.py, docs/results/plateau.md) reaches 0.947 top-1 at 1,200 steps and 0.960 at 2,400 (seed 0).
"""

from supersub_jax import config as config_lib
from supersub_jax import delta


def get_config():
  config = config_lib.default_config()
  config.stages = ('vanilla', 'superclass', 'specialists', 'vanilla_matched')
  # The flat recipe: every residual branch live from the first step (config.zero_init_residual), a short warm-up and
  # a higher peak; the default recipe sat at chance for ~300 steps (studies/plateau.py, docs/results/plateau.md).
  config.zero_init_residual = False
  config.vanilla.num_train_steps = 1200
  config.vanilla.warmup_steps = 20
  config.vanilla.learning_rate = 0.2
  config.superclass.num_train_steps = 300
  config.superclass.learning_rate = 0.05
  config.specialists.num_epochs = 10.0   # 3600 images of the largest superclass: 290 steps; 600 images: 50
  config.specialists.learning_rate = 0.05
  config.specialists.mask_update_every = 5
  config.specialists.update(delta.FRONTIER)  # sparse int4 kernels, BatchNorm deltas whole: alpha 0.026
  return config
