"""The embedded default: the synthetic hierarchical dataset, the main job of the README (`make demo`).

Command:
  python train.py --config=configs/synthetic.py --workdir=runs/demo
  python evaluate.py --config=configs/synthetic.py --workdir=runs/demo
Runtime: about 12 minutes on a 2-core CPU for the three stages plus evaluation (see docs/benchmarks.md).
Expected result: see the README's sample report table (vanilla top-1, superclass top-1, Super-Sub top-1).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.vanilla.num_train_steps = 1200
  config.superclass.num_train_steps = 600
  config.specialists.num_train_steps = 150
  return config
