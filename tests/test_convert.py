"""Conversion of a trained workdir (bundle, export) and of torchvision weights (import-torchvision)."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import make_tiny_config
from supersub_jax import bank as bank_lib
from supersub_jax import convert
from supersub_jax import delta as delta_lib
from supersub_jax import inference
from supersub_jax import models
from supersub_jax import setup_of
from supersub_jax import stages
from supersub_jax import weights
from supersub_jax import workdir as workdir_lib

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def _convert(*args, timeout=300, cwd=None):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
  return subprocess.run([sys.executable, '-m', 'supersub_jax.convert', *args], capture_output=True, text=True,
                        timeout=timeout, cwd=cwd, env=env)


def test_bundle_round_trip_predicts_like_the_workdir(tiny_workdir, tmp_path):
  config, workdir, _ = tiny_workdir
  path = str(tmp_path / 'supersub.msgpack')
  size = convert.write_bundle(path, convert.make_bundle(config, workdir))
  generalist, exported, hierarchy, model = convert.load_bundle(path)
  assert model['name'] == config.model and hierarchy.num_superclasses == 3
  from_bundle = bank_lib.build_supersub(generalist, exported, hierarchy)
  direct = convert.make_bundle(config, workdir)
  from_workdir = bank_lib.build_supersub(direct['generalist'], [direct['specialists'][str(k)] for k in range(3)],
                                         hierarchy)
  images = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
  g_model = setup_of.make_model(config, hierarchy.num_superclasses)
  s_model = setup_of.make_model(config, hierarchy.max_subclasses)
  a = inference.predict(from_bundle, images, generalist_model=g_model, specialist_model=s_model)
  b = inference.predict(from_workdir, images, generalist_model=g_model, specialist_model=s_model)
  np.testing.assert_array_equal(a['label'], b['label'])
  np.testing.assert_array_equal(a['prob'], b['prob'])
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
    convert.write_bundle(path, old)
    generalist, exported, hierarchy, model = convert.load_bundle(path)
    assert [ex['spec']['cut'] for ex in exported] == ['stem'] * 3 and 'branch' not in model
    state = bank_lib.build_supersub(generalist, exported, hierarchy)
    assert state.cut == expected.cut == models.Cut('stem')
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
    convert.write_bundle(path, tree)
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
      convert.load_bundle(path)
  legacy = damaged(lambda tree: [ex['spec'].pop('superclass') for ex in tree['specialists'].values()])
  assert len(convert.load_bundle(path)[1]) == 3 and 'superclass' not in legacy['specialists']['0']['spec']


def test_garbage_bundle_is_named(tmp_path):
  path = tmp_path / 'bad.msgpack'
  path.write_bytes(b'\xc1' * 7)
  with pytest.raises(ValueError, match='bad.msgpack is not a readable msgpack file'):
    convert.load_bundle(str(path))
  convert.write_bundle(str(path), {'format': 'something else'})
  with pytest.raises(ValueError, match='convert bundle'):
    convert.load_bundle(str(path))


def _banked_specialist(config, workdir, k):
  """Specialist k as two-stage inference materializes it from the bank (the reference for exports)."""
  bundle = convert.make_bundle(config, workdir)
  hierarchy = setup_of.make_hierarchy(config)
  state = bank_lib.build_supersub(bundle['generalist'], [bundle['specialists'][str(i)] for i in range(3)],
                                  hierarchy)
  banked = inference.specialist_variables(state.bank, state.base, k, hierarchy.max_subclasses)
  n = int(hierarchy.sizes[k])
  return jax.tree_util.tree_map_with_path(
      lambda p, x: np.asarray(x)[..., :n] if p[1].key == 'head' else np.asarray(x), banked), n


@pytest.mark.parametrize('fmt', convert.EXPORT_FORMATS)
def test_export_is_the_banked_specialist(tiny_workdir, tmp_path, fmt):
  config, workdir, _ = tiny_workdir
  k = 1
  expected, n = _banked_specialist(config, workdir, k)
  output = str(tmp_path / {'orbax': 'spec', 'safetensors': 'spec.safetensors', 'npz': 'spec.npz'}[fmt])
  convert.export_specialist(config, workdir, k, fmt, output)
  model = setup_of.make_model(config, n)
  if fmt == 'orbax':
    variables, meta = weights.load_orbax(output)
    assert meta['superclass'] == k and meta['num_classes'] == n and len(meta['subclasses']) == n
  else:
    variables = weights.from_torchvision(weights.read_state_dict(output), model)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(expected)[0], jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  logits = model.apply(variables, np.zeros((2, 16, 16, 3), np.float32), train=False)
  assert logits.shape == (2, n)


def test_export_rejects_bad_input_and_writes_nothing(tiny_workdir, tmp_path):
  config, workdir, _ = tiny_workdir
  with pytest.raises(ValueError, match=r'--superclass=99 is outside \[0, 3\)'):
    convert.export_specialist(config, workdir, 99, 'orbax', str(tmp_path / 'a'))
  with pytest.raises(ValueError, match='must end with .safetensors'):
    convert.export_specialist(config, workdir, 0, 'safetensors', str(tmp_path / 'a.bin'))
  empty = str(tmp_path / 'empty_workdir')
  with pytest.raises(FileNotFoundError, match='No superclass checkpoint'):
    convert.export_specialist(config, empty, 0, 'npz', str(tmp_path / 'a.npz'))
  assert sorted(os.listdir(tmp_path)) == []  # no output, and no directory created in the empty workdir


def test_import_torchvision_cli_reproduces_the_reference_logits(tmp_path):
  output = str(tmp_path / 'resnet18_orbax')
  out = _convert('import-torchvision', '--arch=resnet18', '--width=0.125',
                 f'--input={FIXTURES}/torchvision_basic.safetensors', f'--output={output}')
  assert out.returncode == 0, out.stderr
  assert f'wrote {output}: resnet18' in out.stdout
  variables, meta = weights.load_orbax(output)
  assert meta['num_classes'] == 10 and meta['source_sha256'] == weights.file_sha256(
      f'{FIXTURES}/torchvision_basic.safetensors')
  with np.load(f'{FIXTURES}/torchvision_basic.npz') as ref:
    model = models.create_model('resnet18', 10, width=0.125)
    logits = np.asarray(model.apply(variables, ref['input_nchw'].transpose(0, 2, 3, 1), train=False))
    assert np.abs(logits - ref['logits']).max() / np.abs(ref['logits']).max() < 1e-4


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path):
  weights_file = f'{FIXTURES}/torchvision_basic.safetensors'
  output = str(tmp_path / 'out')
  cases = {
      'wrong architecture': (['import-torchvision', '--arch=resnet50', f'--input={weights_file}'],
                             'does not fit ResNet'),
      'unknown architecture': (['import-torchvision', '--arch=vgg16', f'--input={weights_file}'],
                               'value should be one of'),
      'not a state dict': (['import-torchvision', '--arch=resnet18', f'--input={FIXTURES}/torchvision_basic.npz'],
                           'has no fc.weight'),
      'wrong file type': (['import-torchvision', '--arch=resnet18', f'--input={FIXTURES}/../conftest.py'],
                          "unknown weights file type '.py'"),
      'missing workdir': (['export', f'--workdir={tmp_path}/none', '--superclass=0', f'--config={CONFIGS}/synthetic.py'],
                          'No superclass checkpoint'),
      'no verb': ([], 'give one verb'),
  }
  for name, (args, message) in cases.items():
    out = _convert(*args, f'--output={output}')
    assert out.returncode != 0, name
    assert message in out.stderr, (name, out.stderr)
    assert 'Traceback' not in out.stderr, name
  assert os.listdir(tmp_path) == []


def test_an_output_among_the_workdirs_own_files_is_refused_in_one_line(tiny_workdir, tmp_path):
  _, workdir, _ = tiny_workdir
  before = {name: os.path.getmtime(os.path.join(workdir, name)) for name in os.listdir(workdir)}
  for verb, output in ((['bundle'], 'config.json'), (['export', '--superclass=0'], 'vanilla/exported')):
    out = _convert(*verb, f'--workdir={workdir}', f'--output={os.path.join(workdir, output)}')
    assert out.returncode == 1, (output, out.stderr[-3000:])
    assert 'Traceback' not in out.stderr
    assert 'is inside the workdir' in out.stderr.splitlines()[-1], (output, out.stderr)
  assert {name: os.path.getmtime(os.path.join(workdir, name)) for name in os.listdir(workdir)} == before
  for output in ('metrics.jsonl', 'report.md', 'report.json', '.lock', '.', 'plot.png', 'superclass/x', 'results.json'):
    with pytest.raises(ValueError, match='is inside the workdir'):
      convert.check_output_outside(os.path.join(workdir, output), workdir)
  for output in (f'{tmp_path}/a.msgpack', f'{workdir}/../outside.msgpack', f'{workdir}/new.msgpack'):  # allowed
    convert.check_output_outside(output, workdir)


def test_an_empty_path_flag_is_refused_in_one_line(tmp_path):
  from processes import run_together  # pylint: disable=g-import-not-at-top
  cases = ((['bundle', '--workdir=', f'--output={tmp_path}/b.msgpack'], 'workdir'),
           (['bundle', f'--workdir={tmp_path}', '--output='], 'output'),
           (['import-torchvision', '--arch=resnet18', '--input=', f'--output={tmp_path}/o'], 'input'))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
  outs = run_together([[sys.executable, '-m', 'supersub_jax.convert', *args] for args, _ in cases], env=env,
                      cwd=tmp_path, timeout=300)
  for (args, flag), (code, out) in zip(cases, outs):
    assert code == 1 and 'Traceback' not in out, out[-3000:]
    assert [l for l in out.splitlines() if l.startswith('error: ')][0].startswith(f'error: --{flag} is empty'), out


def test_without_output_a_conversion_writes_into_the_workdir_named_for_what_it_writes(tiny_workdir, tmp_path):
  assert convert.default_output('export', 'w', fmt='npz', superclass=2) == os.path.join('w', 'specialist2.npz')
  assert convert.default_output('network', 'w', fmt='orbax', stage='vanilla') == os.path.join('w', 'vanilla_orbax')
  assert convert.default_output('bundle', 'w') == os.path.join('w', 'supersub.msgpack')
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'workdir')
  shutil.copytree(tiny_workdir[1], workdir)  # it writes there: a copy of the shared workdir
  out = _convert('network', f'--workdir={workdir}', '--stage=vanilla', '--format=safetensors')
  assert out.returncode == 0, out.stderr[-3000:]
  assert os.path.getsize(os.path.join(workdir, 'vanilla.safetensors')) > 0
  assert f'wrote {workdir}/vanilla.safetensors' in out.stdout


def test_a_missing_workdir_is_named_with_the_command_that_makes_one(tmp_path):
  out = _convert('network', f'--workdir={tmp_path}/none', '--stage=vanilla')
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert f'error: --workdir={tmp_path}/none does not exist: train one first (python train.py' in out.stderr
  assert '--config=<the configs' not in out.stderr  # not the fix for a workdir that is not there
  assert os.listdir(tmp_path) == []


def test_each_verb_help_shows_an_example():
  for verb in convert.VERBS:
    out = _convert(verb, '--help')
    assert out.returncode == 0
    assert f'python -m supersub_jax.convert {verb} --' in out.stdout, verb
    assert '--output' in out.stdout


def test_damaged_bundles_give_a_clean_value_error(tiny_workdir, tmp_path):
  from hypothesis import given, settings  # pylint: disable=g-import-not-at-top
  from hypothesis import strategies as st  # pylint: disable=g-import-not-at-top
  config, workdir, _ = tiny_workdir
  good = tmp_path / 'good.msgpack'
  convert.write_bundle(str(good), convert.make_bundle(config, workdir))
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
      generalist, exported, hierarchy, _ = convert.load_bundle(str(path))
    except ValueError as e:
      assert 'fuzzed.msgpack' in str(e)
      return
    assert len(exported) == hierarchy.num_superclasses and 'params' in generalist  # a flip that changed a value

  check()


@pytest.mark.parametrize('fmt', ['safetensors', 'orbax'])
def test_a_network_stage_exported_is_what_config_init_continues_and_routes_by(tiny_workdir, tmp_path, fmt):
  config, workdir, _ = tiny_workdir
  output = str(tmp_path / ('flat.safetensors' if fmt == 'safetensors' else 'flat'))
  assert 'the vanilla network (7 classes' in convert.export_network(config, workdir, 'vanilla', fmt, output)
  vanilla = workdir_lib.load_network(config, workdir, 'vanilla', setup_of.build(config))
  pretrained = make_tiny_config(config.data_dir)
  pretrained.init.update(dict(path=output, format='torchvision' if fmt == 'safetensors' else 'orbax',
                              keep_head=True))
  pretrained.superclass.init_from_vanilla = False
  setup = setup_of.build(pretrained)
  # The flat stages continue the whole network; the generalist takes its backbone and a new head.
  start = stages._pretrained_start(pretrained, 'vanilla', setup.flat)
  for a, b in zip(jax.tree.leaves({'params': vanilla.params, 'batch_stats': vanilla.batch_stats}),
                  jax.tree.leaves(start)):
    np.testing.assert_array_equal(a, b)
  assert 'head' not in stages._pretrained_start(pretrained, 'superclass', setup.generalist)['params']
  # It is the flat router of a pipeline whose generalist starts from it; the vanilla network is, otherwise.
  router = workdir_lib.flat_router_of(pretrained, vanilla, setup)
  for a, b in zip(jax.tree.leaves(router.params), jax.tree.leaves(vanilla.params)):
    np.testing.assert_array_equal(a, b)
  assert workdir_lib.flat_router_of(config, vanilla, setup_of.build(config)) is vanilla
  with pytest.raises(ValueError, match='superclass'):
    convert.export_network(config, workdir, 'specialists', fmt, str(tmp_path / 'x.npz'))


def test_hostile_bundles_are_refused_before_anything_is_allocated(tiny_workdir, tmp_path):
  # Sizes a bundle only states are checked against sane limits and against the arrays it holds: a hierarchy of 6e8
  # or 1e12 source classes used to allocate 7 GB, or raise MemoryError; a deep JSON raised RecursionError.
  import json  # pylint: disable=g-import-not-at-top
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
    convert.write_bundle(str(path), {**good, **change})
    with pytest.raises(ValueError) as info:
      convert.load_bundle(str(path))
    assert f'{path}: damaged bundle' in str(info.value) and expected in str(info.value), (name, str(info.value))
