"""configs/synthetic_scratch.py (the pipeline from random weights) shrunk to seconds, for tests: 3 superclasses of (3, 2, 2) subclasses, 16x16 images,
resnet_tiny. A config file like the others, so that subprocess tests can run the real entry points with it:

  python train.py --config=tests/tiny_config.py:<data_dir> --workdir=...
"""

import importlib.util
import os


def get_config(data_dir: str = './data'):
  spec = importlib.util.spec_from_file_location(  # configs/ by path, as config_flags loads it
      'synthetic_config', os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs',
                                       'synthetic_scratch.py'))
  synthetic = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(synthetic)
  config = synthetic.get_config()
  config.data_dir = data_dir
  config.synthetic.sizes = (3, 2, 2)
  config.synthetic.image_size = 16
  config.synthetic.train_per_class = 16
  config.synthetic.validation_per_class = 4
  config.synthetic.test_per_class = 4
  config.image_size = 16
  config.model = 'resnet_tiny'
  config.stages = ('vanilla', 'superclass', 'specialists')  # a test that wants a baseline stage adds it
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
  # One save a stage, at its end: an orbax save is a quarter of a second here, the tiny run's steps a few ms (the
  # tests of the checkpoint cadence set it themselves).
  config.checkpoint_every_steps = 1000
  config.evaluate.benchmark_batches = 1
  config.evaluate.benchmark_batch_sizes = (1, 16)
  config.evaluate.rules = ('hard', 'soft:2', 'hinton:2/mean')  # every rule and a flat router, at few compiles
  return config
