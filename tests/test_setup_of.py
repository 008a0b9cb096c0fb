"""The setup built once from a config (supersub_jax.setup_of): the hierarchy, each network's model, the image shape,
the data, and the delta settings the specialists' stage trains."""

import dataclasses

import pytest

from conftest import make_tiny_config
from supersub_jax import cut as cut_lib
from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax import models
from supersub_jax import setup_of


def _outputs(model) -> int:
  """A model's number of classes, as flax holds it."""
  return model.num_classes


def test_build_gives_each_network_its_outputs_the_image_shape_and_the_data(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))  # sizes (3, 2, 2)
  setup = setup_of.build(config)
  assert setup.hierarchy.sizes.tolist() == [3, 2, 2]
  assert (_outputs(setup.flat), _outputs(setup.generalist), _outputs(setup.specialist)) == (7, 3, 3)
  assert setup.model('superclass') is setup.generalist
  assert setup.model('vanilla') is setup.model('vanilla_matched') is setup.flat
  assert setup.image_shape == (16, 16, 3)
  assert (setup.data.dataset, setup.data.data_dir, setup.data.eval_split) == ('synthetic', str(tmp_path / 'data'),
                                                                              'test')
  assert setup.data.kwargs['sizes'] == (3, 2, 2) and setup.data.kwargs['image_size'] == 16
  with pytest.raises(dataclasses.FrozenInstanceError):
    setup.hierarchy = None


def test_a_dustbin_adds_one_output_to_the_specialists_model_only(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.specialists.dustbin = True
  setup = setup_of.build(config)
  assert (_outputs(setup.flat), _outputs(setup.generalist), _outputs(setup.specialist)) == (7, 3, 4)


def test_the_synthetic_hierarchy_is_that_of_synthetic_sizes(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.synthetic.sizes = (4, 1)
  assert setup_of.make_hierarchy(config).to_dict() == hierarchy_lib.synthetic((4, 1)).to_dict()
  config.hierarchy = 'cifar100'
  assert setup_of.make_hierarchy(config).num_superclasses == 20


def test_delta_config_spares_the_head_and_the_trunk_before_the_branch(tmp_path):
  cfg = make_tiny_config(str(tmp_path / 'data')).specialists
  cfg.bits, cfg.leaves, cfg.branch = 0, 'kernels', 'stage2'
  dcfg = setup_of.delta_config(cfg)
  assert dcfg.bits is None and dcfg.pattern == r'.*kernel$'
  assert dcfg.exclude == f'^head/|{cut_lib.Cut("stage2").trunk_regex}'
  cfg.bits, cfg.leaves, cfg.branch = 4, r'conv\d', 'stem'
  dcfg = setup_of.delta_config(cfg)
  assert (dcfg.bits, dcfg.pattern, dcfg.exclude) == (4, r'conv\d', '^head/')
