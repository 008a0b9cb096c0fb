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
  config.superclass.num_train_steps = 300
  config.superclass.learning_rate = 0.05
  config.specialists.num_epochs = 10.0   # 3600 images of the largest superclass: 290 steps; 600 images: 50
  config.specialists.learning_rate = 0.05
  config.specialists.mask_update_every = 5
  return config
