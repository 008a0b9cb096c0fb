"""benchmarks.inference_scale's memory-only mode: the parameters resident per materialization mode, checked against
the networks' own leaves."""

import jax
import numpy as np

from benchmarks import inference_scale


def _measure(settings):
  return inference_scale.measure_scale(
      model='resnet_tiny', image_size=32, stem='small', sizes=[3, 2], batch_sizes=[], repeats=0, chunk_sizes=[],
      density=0.1, bits=8, half_precision=False, data_dir='unused', memory_only=True, settings=settings)


def test_memory_only_reports_generalist_bank_and_one_layer_against_one_network():
  default, frontier = _measure('default'), _measure('frontier')
  from supersub_jax import models  # pylint: disable=g-import-not-at-top
  gm = models.create_model('resnet_tiny', 2, stem='small')
  params = models.init_variables(gm, jax.random.key(0), (32, 32, 3))['params']
  kernels = [x.size * x.dtype.itemsize for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
             if jax.tree_util.keystr(path).endswith("'kernel']") and 'head' not in jax.tree_util.keystr(path)]
  for run in (default, frontier):
    r = run['params_resident']
    assert r['largest_layer_bytes'] == max(kernels)  # the largest dense delta leaf is the largest trunk kernel
    np.testing.assert_allclose(r['per_layer_ratio'], (r['generalist_bytes'] + r['bank_bytes']
                                                      + r['largest_layer_bytes']) / r['single_bytes'])
    np.testing.assert_allclose(r['per_group_ratio'], (r['generalist_bytes'] + r['bank_bytes']
                                                      + r['whole_specialist_bytes']) / r['single_bytes'])
    assert 1 < r['per_layer_ratio'] < r['per_group_ratio']
    assert run['rows'] == []  # nothing timed
  # FRONTIER (density 0.05 int4) stores and holds fewer bytes than density 0.1 int8.
  assert frontier['params_resident']['bank_bytes'] < default['params_resident']['bank_bytes']
  assert frontier['storage']['total_bytes'] < default['storage']['total_bytes']
  assert (frontier['settings'], default['settings']) == ('frontier', 'default')
