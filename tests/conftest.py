"""Shared fixtures: a tiny config of the real pipeline and a workdir trained once per session."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # configs/ is imported as a package from the repository root, as train.py does
  sys.path.insert(0, ROOT)


def make_tiny_config(data_dir: str):
  """configs/synthetic.py shrunk to seconds: 3 superclasses of (3, 2, 2) subclasses, 16x16 images, resnet_tiny."""
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  config = synthetic.get_config()
  config.data_dir = data_dir
  config.synthetic.sizes = (3, 2, 2)
  config.synthetic.image_size = 16
  config.synthetic.train_per_class = 16
  config.synthetic.test_per_class = 4
  config.image_size = 16
  config.model = 'resnet_tiny'
  config.batch_size = 16
  config.eval_batch_size = 32
  config.vanilla.num_train_steps = 6
  config.vanilla.warmup_steps = 1
  config.superclass.num_train_steps = 4
  config.superclass.warmup_steps = 1
  config.specialists.num_train_steps = 6
  config.specialists.num_epochs = 0.0  # a fixed budget, whatever the superclass size
  config.specialists.mask_update_every = 1
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.evaluate.benchmark_batches = 1
  return config


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='session')
def tiny_workdir(tmp_path_factory, tiny_data_dir):
  """A workdir with all three stages trained on the tiny config (shared by stage and evaluation tests)."""
  from supersub_jax import stages  # pylint: disable=g-import-not-at-top
  config = make_tiny_config(tiny_data_dir)
  workdir = str(tmp_path_factory.mktemp('workdir'))
  results = stages.run(config, workdir)
  return config, workdir, results
