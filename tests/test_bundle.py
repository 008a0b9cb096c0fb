"""The inference bundle (bundle.py): written and read back, old bundles, damaged and hostile files, and that reading
one needs no training code."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from supersub_jax import bank as bank_lib
from supersub_jax import bundle as bundle_lib
from supersub_jax import convert
from supersub_jax import cut as cut_lib
from supersub_jax import decide
from supersub_jax import delta as delta_lib
from supersub_jax import inference
from supersub_jax import models
from supersub_jax import setup_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINING = ('stages', 'specialists', 'recipe', 'runner', 'step', 'convert')


def test_reading_a_bundle_imports_no_training_code(tiny_workdir, tmp_path):
  config, workdir, _ = tiny_workdir
  path = str(tmp_path / 'supersub.msgpack')
  bundle_lib.write_bundle(path, convert.make_bundle(config, workdir))
  script = (f'import sys; from supersub_jax import bundle; _, exported, hierarchy, _ = bundle.load_bundle({path!r}); '
            'print(len(exported), hierarchy.num_superclasses); '
            f'print(sorted(m for m in {TRAINING!r} if "supersub_jax." + m in sys.modules))')
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300, env=env)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split('\n')[:2] == ['3 3', '[]']


def test_bundle_round_trip_predicts_like_the_workdir(tiny_workdir, tmp_path):
  config, workdir, _ = tiny_workdir
  path = str(tmp_path / 'supersub.msgpack')
  size = bundle_lib.write_bundle(path, convert.make_bundle(config, workdir))
  generalist, exported, hierarchy, model = bundle_lib.load_bundle(path)
  assert model['name'] == config.model and hierarchy.num_superclasses == 3
  from_bundle = bank_lib.build_supersub(generalist, exported, hierarchy)
  direct = convert.make_bundle(config, workdir)
  from_workdir = bank_lib.build_supersub(direct['generalist'], [direct['specialists'][str(k)] for k in range(3)],
                                         hierarchy)
  images = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
  g_model = setup_of.make_model(config, hierarchy.num_superclasses)
  s_model = setup_of.make_model(config, hierarchy.max_subclasses)
  a = inference.predict(from_bundle, images, decide.Rule('hard'), generalist_model=g_model, specialist_model=s_model)
  b = inference.predict(from_workdir, images, decide.Rule('hard'), generalist_model=g_model,
                        specialist_model=s_model)
  np.testing.assert_array_equal(a['label'], b['label'])
  np.testing.assert_array_equal(a['router'], b['router'])
  # The bundle holds the compressed specialists, not N dense copies of the network.
  assert size < delta_lib.tree_nbytes(generalist) * 2


def test_a_bundle_from_before_specialists_described_themselves_loads_with_the_cut_of_its_time(tiny_workdir, tmp_path):
  config, workdir, _ = tiny_workdir
  bundle = convert.make_bundle(config, workdir)
  expected = bank_lib.build_supersub(bundle['generalist'], [bundle['specialists'][str(k)] for k in range(3)],
                                     setup_of.make_hierarchy(config))
  for version_1 in ({}, {'branch': 'stem'}):  # bundles from before shared trunks, and from after them
    old = {**bundle, 'model': {**bundle['model'], **version_1},
           'specialists': {k: {n: v for n, v in ex.items() if n != 'spec'} for k, ex in bundle['specialists'].items()}}
    path = str(tmp_path / 'old.msgpack')
    bundle_lib.write_bundle(path, old)
    generalist, exported, hierarchy, model = bundle_lib.load_bundle(path)
    assert [ex['spec']['cut'] for ex in exported] == ['stem'] * 3 and 'branch' not in model
    state = bank_lib.build_supersub(generalist, exported, hierarchy)
    assert state.cut == expected.cut == cut_lib.Cut('stem')
    for a, b in zip(jax.tree.leaves(state.bank), jax.tree.leaves(expected.bank)):
      np.testing.assert_array_equal(a, b)


def test_a_bundle_checks_each_specialists_superclass_and_every_array_finite_and_shaped(tiny_workdir, tmp_path):
  config, workdir, _ = tiny_workdir
  bundle = convert.make_bundle(config, workdir)
  assert [bundle['specialists'][str(k)]['spec']['superclass'] for k in range(3)] == [0, 1, 2]
  path = str(tmp_path / 'b.msgpack')

  def damaged(change):
    tree = jax.tree.map(lambda x: np.array(x) if isinstance(x, np.ndarray) else x, bundle)  # a copy
    change(tree)
    bundle_lib.write_bundle(path, tree)
    return tree

  def swap(tree):
    s = tree['specialists']
    s['1'], s['2'] = s['2'], s['1']  # same shapes (2 subclasses each)

  def inf_bias(tree):
    tree['specialists']['0']['head']['bias'][1] = np.inf

  def nan_stats(tree):
    leaf = jax.tree.leaves(tree['generalist']['batch_stats'])[0]
    leaf[0] = np.nan

  def short_stats(tree):
    stats = tree['specialists']['2']['batch_stats']
    layer = next(iter(stats))
    stats[layer] = {**stats[layer], 'mean': stats[layer]['mean'][:-1]}

  cases = ((swap, r"specialist 1 .*serves superclass 2, not 1"),
           (inf_bias, r'specialist 0 .*head/bias holds 1 non-finite values'),
           (nan_stats, r'generalist .*batch_stats/.* holds 1 non-finite values'),
           (short_stats, r"specialist 2 .*batch statistic '.*mean' has shape"))
  for change, message in cases:
    damaged(change)
    with pytest.raises(ValueError, match=f'b.msgpack: damaged bundle, in its {message}'):
      bundle_lib.load_bundle(path)
  legacy = damaged(lambda tree: [ex['spec'].pop('superclass') for ex in tree['specialists'].values()])
  assert len(bundle_lib.load_bundle(path)[1]) == 3 and 'superclass' not in legacy['specialists']['0']['spec']


def test_garbage_bundle_is_named(tmp_path):
  path = tmp_path / 'bad.msgpack'
  path.write_bytes(b'\xc1' * 7)
  with pytest.raises(ValueError, match='bad.msgpack is not a readable msgpack file'):
    bundle_lib.load_bundle(str(path))
  bundle_lib.write_bundle(str(path), {'format': 'something else'})
  with pytest.raises(ValueError, match='convert bundle'):
    bundle_lib.load_bundle(str(path))


def test_damaged_bundles_give_a_clean_value_error(tiny_workdir, tmp_path):
  from hypothesis import given, settings  # pylint: disable=g-import-not-at-top
  from hypothesis import strategies as st  # pylint: disable=g-import-not-at-top
  config, workdir, _ = tiny_workdir
  good = tmp_path / 'good.msgpack'
  bundle_lib.write_bundle(str(good), convert.make_bundle(config, workdir))
  data = good.read_bytes()
  path = tmp_path / 'fuzzed.msgpack'

  @settings(max_examples=150, deadline=None)
  @given(cut=st.integers(0, len(data)), flips=st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)),
                                                       max_size=4),
         noise=st.binary(max_size=64))
  def check(cut, flips, noise):
    damaged = bytearray(data[:cut] if not flips else data)
    for i, b in flips:
      damaged[i] = b
    path.write_bytes(bytes(damaged) + (noise if cut == len(data) else b''))
    try:
      generalist, exported, hierarchy, _ = bundle_lib.load_bundle(str(path))
    except ValueError as e:
      assert 'fuzzed.msgpack' in str(e)
      return
    assert len(exported) == hierarchy.num_superclasses and 'params' in generalist  # a flip that changed a value

  check()


def test_hostile_bundles_are_refused_before_anything_is_allocated(tiny_workdir, tmp_path):
  # Sizes a bundle only states are checked against sane limits and against the arrays it holds: a hierarchy of 6e8
  # or 1e12 source classes used to allocate 7 GB, or raise MemoryError; a deep JSON raised RecursionError.
  config, workdir, _ = tiny_workdir
  good = convert.make_bundle(config, workdir)
  hierarchy = json.loads(good['hierarchy'])
  cases = {
      'classes_6e8': ({'hierarchy': json.dumps({**hierarchy, 'num_source_classes': 6 * 10**8})},
                      'num_source_classes=600000000, outside'),
      'classes_1e12': ({'hierarchy': json.dumps({**hierarchy, 'num_source_classes': 10**12})},
                       'num_source_classes=1000000000000, outside'),
      'deep_json': ({'hierarchy': '[' * 100_000 + ']' * 100_000}, 'in its hierarchy (RecursionError'),
      'wide_model': ({'model': {**good['model'], 'width': 1e6}}, 'width 1000000.0 is not a multiplier'),
      'no_image': ({'model': {**good['model'], 'image_size': 0}}, 'image_size 0 is not a side'),
      'other_width': ({'model': {**good['model'], 'width': 2.0}}, 'the generalist does not fit resnet_tiny'),
  }
  for name, (change, expected) in cases.items():
    path = tmp_path / f'{name}.msgpack'
    bundle_lib.write_bundle(str(path), {**good, **change})
    with pytest.raises(ValueError) as info:
      bundle_lib.load_bundle(str(path))
    assert f'{path}: damaged bundle' in str(info.value) and expected in str(info.value), (name, str(info.value))


def test_a_bundle_made_for_a_flat_routed_rule_carries_its_router_and_predicts_as_the_evaluation(tiny_workdir,
                                                                                                 tmp_path):
  config, workdir, _ = tiny_workdir
  path = str(tmp_path / 'supersub.msgpack')
  bundle_lib.write_bundle(path, convert.make_bundle(config, workdir))
  assert bundle_lib.load_router(path) == ('hard', None)  # the paper's rule: the generalist routes, no flat network
  config = config.copy_and_resolve_references()
  config.evaluate.verdict_rule = 'hinton:2/mean'
  bundle_lib.write_bundle(path, convert.make_bundle(config, workdir))
  generalist, exported, hierarchy, _ = bundle_lib.load_bundle(path)
  rule, flat = bundle_lib.load_router(path)
  assert rule == 'hinton:2/mean'
  # The router is the one the evaluation routes by (workdir.flat_router_of), leaf for leaf.
  from supersub_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  trained = workdir_lib.load_trained(config, workdir, setup_of.build(config))
  for a, b in zip(jax.tree.leaves(flat), jax.tree.leaves({'params': trained.flat_router.params,
                                                         'batch_stats': trained.flat_router.batch_stats})):
    np.testing.assert_array_equal(a, b)
  images = jax.random.normal(jax.random.key(1), (8, 16, 16, 3))
  g_model = setup_of.make_model(config, hierarchy.num_superclasses)
  s_model = setup_of.make_model(config, hierarchy.max_subclasses)
  f_model = setup_of.make_model(config, hierarchy.num_subclasses)
  a = inference.predict(bank_lib.build_supersub(generalist, exported, hierarchy), images, decide.Rule.parse(rule),
                        generalist_model=g_model, specialist_model=s_model, flat=flat, flat_model=f_model)
  b = inference.predict(trained.state, images, decide.Rule.parse(rule), generalist_model=g_model,
                        specialist_model=s_model, flat={'params': trained.flat_router.params,
                                                        'batch_stats': trained.flat_router.batch_stats},
                        flat_model=f_model)
  np.testing.assert_array_equal(a['label'], b['label'])
  # A bundle whose rule needs a flat network it does not hold is damaged, and says where.
  tree = convert.make_bundle(config, workdir)
  del tree['flat']
  bundle_lib.write_bundle(path, tree)
  with pytest.raises(ValueError, match="damaged bundle, in its flat network .*routes by a flat network, and the "
                                       'bundle holds none'):
    bundle_lib.load_router(path)
