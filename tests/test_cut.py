"""Tests of supersub_jax.cut: layer groups, the cut between trunk and specialists, the head split."""

import re

import jax
import jax.numpy as jnp
import pytest

from supersub_jax.cut import Cut, group_of, split_head
from supersub_jax.delta import path_str
from supersub_jax.models import create_model


def _tiny_params() -> dict:
  """resnet_tiny's params (small stem, 5 classes) as ShapeDtypeStructs: the keys and paths, nothing computed."""
  model = create_model('resnet_tiny', 5, stem='small')
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))['params']


def test_cut_splits_params_and_matches_its_trunk_by_forward_order():
  params = _tiny_params()
  order = {'conv_init': 0, 'bn_init': 0, 'stage1_block1': 1, 'stage2_block1': 2, 'stage3_block1': 3, 'head': 4}
  assert set(order) == set(params)
  for position, branch in enumerate(('stem', 'stage1', 'stage2', 'stage3', 'head')):
    cut = Cut(branch)
    trunk, top = cut.split(params)
    assert set(trunk) == {k for k, p in order.items() if p < position}
    assert set(top) == {k for k, p in order.items() if p >= position}
    assert cut.shares_trunk == (position > 0) and cut.keeps_backbone == (branch == 'head')
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
      p = path_str(path)
      in_trunk = p.split('/')[0] in trunk
      assert (cut.trunk_regex is not None and re.search(cut.trunk_regex, p) is not None) == in_trunk, (branch, p)
  with pytest.raises(ValueError, match='layer group'):
    Cut('block3')


def test_a_cut_beyond_the_models_stages_is_refused_by_name():
  model = create_model('resnet_tiny', 5)
  Cut('stage3').check(model)
  with pytest.raises(ValueError, match="branch='stage4' is not a layer group of this model"):
    Cut('stage4').check(model)


def test_group_of_names_each_top_level_key_s_group_and_split_head_takes_the_classifier_off():
  params = _tiny_params()
  assert {k: group_of(k) for k in params} == {'conv_init': 'stem', 'bn_init': 'stem', 'stage1_block1': 'stage1',
                                              'stage2_block1': 'stage2', 'stage3_block1': 'stage3', 'head': 'head'}
  backbone, head = split_head(params)
  assert set(backbone) == set(params) - {'head'} and head is params['head']
  with pytest.raises(ValueError, match="no 'head'"):
    split_head(backbone)
