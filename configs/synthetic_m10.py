"""The main job of the README (`make demo`): the cell of the map where the hierarchy pays, run once.

Command:
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python train.py --config=configs/synthetic_m10.py \
      --workdir=runs/demo
  python evaluate.py --workdir=runs/demo
Runtime: see README, "Quick start" (the two commands of `make demo`).
Expected result: Super-Sub (rule hard/flat) 0.8432 vs the flat network 0.8353 top-1, +0.79 points, at equal
  compute (581 steps an arm): this config is run (specificity 10, width 1.0, base 0, seed 0) of the map's tag
  base_router at E = 25% (docs/results/map_runs/m10_w1_b0_base_router_E0.2421_s0_v2.3.0.json), and its report
  quotes the map's cell and its control cell (docs/results/map.md).

The data: the synthetic dataset at cue specificity 10 (`synthetic.specificity`): superclass s tells its subclasses
apart by cue kind s of ten (a grating, a hue, a glyph, ...; supersub_jax/data/cues.py), which only it uses: the
paper's premise, a dog breed needs features only dogs use. The control cell (specificity 1: one kind of cue in
every superclass) is the map's, not this run's.

The start (config.init) is supersub_jax/resources/pretrained/synthetic_m10_resnet_small.safetensors, the map's base
network 0 of this cell, made by scripts/make_pretrained.py (its .json records the command): the flat recipe of
configs/synthetic_scratch.py, 2,400 steps from random weights (seed 1000) on this data, 0.831 held-out top-1.

From there 581 steps (E = 24% of the base's 2,400) are spent two ways, on the same images per step:
  * the flat network continues (the vanilla stage, init.keep_head: its own head) for exactly Super-Sub's steps;
  * Super-Sub: each specialist a sparse int4 delta over the base network's backbone and a head started from the
    base's subclass head on its superclass's columns (specialists.head_from='init'), 580 steps in all. The base
    network routes (the rule 'hard/flat': the flat network's summed subclass probabilities pick the specialist),
    so the generalist stage takes one step and its router is not used: the report's 'hard' row, a router that
    never trained, is not Super-Sub's answer here. Stored: the backbone plus ten deltas (alpha 0.026).
"""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAINED = os.path.join(ROOT, 'supersub_jax', 'resources', 'pretrained', 'synthetic_m10_resnet_small.safetensors')
MAP = os.path.join(ROOT, 'docs', 'results', 'map.json')


def _converged_default():
  """configs/synthetic.py's config: the converged regime's recipe (the flat network and the specialists continue
  a pretrained flat network), which this config moves to the cell's data and start."""
  spec = importlib.util.spec_from_file_location('synthetic_config', os.path.join(ROOT, 'configs', 'synthetic.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  config = _converged_default()
  config.synthetic.specificity = 10
  config.width = 1.0
  config.init.path = PRETRAINED
  config.specialists.head_from = 'init'
  # The budget of studies/map.py at E = 25% of the base's steps with all of it to the specialists
  # (studies.common.converged, generalist_share=0): the generalist one step, the specialists 6.4 epochs of their
  # superclass's images (580 steps in all), the flat network exactly as many steps as both (tests/test_configs.py).
  config.superclass.num_train_steps = 1
  config.specialists.num_epochs = 6.4
  config.vanilla.num_train_steps = 581
  config.evaluate.rules = ('hard/flat', 'soft:2/flat')
  config.evaluate.verdict_rule = 'hard/flat'
  config.evaluate.map_summary = MAP
  return config
