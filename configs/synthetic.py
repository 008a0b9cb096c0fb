"""The embedded default: the synthetic hierarchical dataset, the main job of the README (`make demo`).

Command:
  python train.py --config=configs/synthetic.py --workdir=runs/demo
  python evaluate.py --config=configs/synthetic.py --workdir=runs/demo
Runtime: RUNTIME_PLACEHOLDER
Expected result: RESULT_PLACEHOLDER
"""

from configs import default


def get_config():
  config = default.get_config()
  config.vanilla.num_train_steps = 1200
  config.superclass.num_train_steps = 600
  config.specialists.num_train_steps = 100
  config.specialists.mask_update_every = 5
  return config
