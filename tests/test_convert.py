"""Conversion of a trained workdir: the inference bundle and a dense specialist."""

import jax
import numpy as np
import pytest

from supersub_jax import convert
from supersub_jax import delta as delta_lib
from supersub_jax import inference
from supersub_jax import stages


def test_bundle_round_trip_predicts_like_the_workdir(tiny_workdir, tmp_path):
  config, workdir, _ = tiny_workdir
  path = str(tmp_path / 'supersub.msgpack')
  size = convert._write(path, convert.make_bundle(config, workdir))
  generalist, exported, hierarchy, model = convert.load_bundle(path)
  assert model['name'] == config.model and hierarchy.num_superclasses == 3
  from_bundle = inference.build_supersub(generalist, exported, hierarchy)
  direct = convert.make_bundle(config, workdir)
  from_workdir = inference.build_supersub(direct['generalist'], [direct['specialists'][str(k)] for k in range(3)],
                                          hierarchy)
  images = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
  g_model = stages.make_model(config, hierarchy.num_superclasses)
  s_model = stages.make_model(config, hierarchy.max_subclasses)
  a = inference.predict(from_bundle, images, generalist_model=g_model, specialist_model=s_model)
  b = inference.predict(from_workdir, images, generalist_model=g_model, specialist_model=s_model)
  np.testing.assert_array_equal(a['label'], b['label'])
  np.testing.assert_array_equal(a['prob'], b['prob'])
  # The bundle holds the compressed specialists, not N dense copies of the network.
  dense_network = delta_lib.tree_nbytes(generalist)
  assert size < dense_network * 2


def test_dense_specialist_equals_materialized_weights(tiny_workdir, tmp_path):
  config, workdir, _ = tiny_workdir
  path = str(tmp_path / 'specialist.msgpack')
  convert._write(path, {'format': convert.DENSE_FORMAT, **convert.dense_specialist(config, workdir, 1)})
  variables = convert.load_dense(path)
  hierarchy = stages.make_hierarchy(config)
  bundle = convert.make_bundle(config, workdir)
  state = inference.build_supersub(bundle['generalist'], [bundle['specialists'][str(k)] for k in range(3)],
                                   hierarchy)
  banked = inference.specialist_variables(state.bank, state.base, 1)
  n1 = int(hierarchy.sizes[1])
  for path_, leaf in jax.tree_util.tree_flatten_with_path(variables['params'])[0]:
    other = banked['params']
    for key in path_:
      other = other[key.key]
    if path_[0].key == 'head':
      other = other[..., :n1]
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(other))
  model = stages.make_model(config, n1)
  logits = model.apply(variables, np.zeros((2, 16, 16, 3), np.float32), train=False)
  assert logits.shape == (2, n1)


def test_wrong_file_kind_is_named(tiny_workdir, tmp_path):
  config, workdir, _ = tiny_workdir
  path = str(tmp_path / 'specialist.msgpack')
  convert._write(path, {'format': convert.DENSE_FORMAT, **convert.dense_specialist(config, workdir, 0)})
  with pytest.raises(ValueError, match='--to=bundle'):
    convert.load_bundle(path)
