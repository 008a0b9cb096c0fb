"""The workdir reader (supersub_jax.workdir): a finished run's networks, exported specialists and checkpoint
identities read back, checked against the config, without the training code."""

import ast
import json
import os

import pytest

from conftest import make_tiny_config
from supersub_jax import delta as delta_lib
from supersub_jax import exported as exported_lib
from supersub_jax import runner
from supersub_jax import setup_of
from supersub_jax import workdir as workdir_lib

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'supersub_jax')


def _imports(module: str) -> set[str]:
  """The package modules ``module`` imports, directly or through others (read from the sources, nothing run)."""
  seen, todo = set(), [module]
  while todo:
    path = os.path.join(PACKAGE, *todo.pop().split('.'))
    path = path + '.py' if os.path.exists(path + '.py') else os.path.join(path, '__init__.py')
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('supersub_jax'):
        inner = node.module.split('.', 1)[1] if '.' in node.module else ''
        for alias in node.names:
          name = f'{inner}.{alias.name}'.lstrip('.')
          name = name if os.path.exists(os.path.join(PACKAGE, *name.split('.')) + '.py') else inner
          if name and name not in seen:
            seen.add(name)
            todo.append(name)
  return seen


def test_the_reader_imports_no_training_code():
  assert not _imports('workdir') & {'stages', 'specialists', 'recipe', 'evaluation'}
  assert 'workdir' in _imports('evaluation') and not _imports('evaluation') & {'specialists', 'recipe'}


def test_load_trained_reads_every_network_and_specialist_with_the_setups_models(tiny_workdir):
  config, workdir, _ = tiny_workdir
  setup = setup_of.build(config)
  trained = workdir_lib.load_trained(config, workdir, setup)
  assert trained.hierarchy is setup.hierarchy
  assert (trained.vanilla.model, trained.generalist.model, trained.specialist_model) == (
      setup.flat, setup.generalist, setup.specialist)  # built once, passed down
  assert (trained.vanilla.steps, trained.generalist.steps) == (config.vanilla.num_train_steps,
                                                               config.superclass.num_train_steps)
  assert len(trained.exported) == setup.hierarchy.num_superclasses
  assert [e['spec']['superclass'] for e in trained.exported] == [0, 1, 2]
  assert trained.vanilla_matched.model is setup.flat and trained.head_only.num_outputs == setup.hierarchy.max_subclasses
  assert trained.flat_router is trained.vanilla  # the generalist starts from the vanilla network


def test_checkpoint_identity_is_the_newest_steps_metadata_digest(tmp_path):
  assert workdir_lib.checkpoint_identity(str(tmp_path / 'none')) is None
  for step, text in ((2, b'old'), (10, b'new')):
    os.makedirs(tmp_path / str(step) / 'meta')
    (tmp_path / str(step) / 'meta' / 'metadata').write_bytes(text)
  os.makedirs(tmp_path / '12')  # a step whose save did not finish: no metadata
  import hashlib  # pylint: disable=g-import-not-at-top
  assert workdir_lib.checkpoint_identity(str(tmp_path)) == {'step': 10,
                                                            'meta_sha256': hashlib.sha256(b'new').hexdigest()}


def test_file_identity_lists_each_file_with_its_size(tmp_path):
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'sub' / 'b.bin').write_bytes(b'12345')
  (tmp_path / 'a.txt').write_text('hi')
  assert [(path, size) for path, size, _ in workdir_lib.file_identity(str(tmp_path))] == [('a.txt', 2),
                                                                                          ('sub/b.bin', 5)]
  assert [size for _, size, _ in workdir_lib.file_identity(str(tmp_path / 'a.txt'))] == [2]


def test_stored_report_is_none_when_absent_or_unreadable(tmp_path):
  assert workdir_lib.stored_report(str(tmp_path)) is None
  (tmp_path / 'report.json').write_text('{"verdict": 1')
  assert workdir_lib.stored_report(str(tmp_path)) is None
  (tmp_path / 'report.json').write_text(json.dumps({'verdict': 1}))
  assert workdir_lib.stored_report(str(tmp_path)) == {'verdict': 1}


def test_restoring_one_specialist_reads_only_its_directory(tiny_workdir):
  config, workdir, _ = tiny_workdir
  hierarchy = setup_of.make_hierarchy(config)
  dirs = sorted(os.listdir(os.path.join(workdir, 'specialists')))
  assert [d for d in dirs if not d.endswith('.json')] == [
      os.path.basename(workdir_lib.specialist_dir(workdir, hierarchy, k)) for k in range(3)]
  # The base is the superclass stage's checkpoint: no specialist directory holds a full copy of it.
  generalist = workdir_lib.load_network(config, workdir, 'superclass', setup_of.build(config))
  base_bytes = delta_lib.tree_nbytes(generalist.params)
  for k in range(3):
    exported = workdir_lib.load_exported(config, workdir, k, generalist, hierarchy)
    assert sum(exported_lib.exported_nbytes(exported).values()) < 0.5 * base_bytes


def test_changed_config_lists_the_differing_fields(tiny_workdir):
  config, workdir, _ = tiny_workdir
  wider = make_tiny_config(config.data_dir)
  wider.width = 2.0
  with pytest.raises(runner.SettingsMismatchError, match=r'width: 1.0 -> 2.0'):
    workdir_lib.load_network(wider, workdir, 'superclass', setup_of.build(wider))


def test_missing_stage_names_the_command(tmp_path, tiny_data_dir):
  config = make_tiny_config(tiny_data_dir)
  with pytest.raises(FileNotFoundError, match='train.py'):
    workdir_lib.load_network(config, str(tmp_path), 'vanilla', setup_of.build(config))


def test_a_checkpoint_from_before_specialists_described_themselves_gets_its_own_recorded_cut():
  from supersub_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  stored = config_lib.default_config().to_dict()
  stored['specialists']['branch'] = 'stage2'
  spec = workdir_lib._legacy_spec({'config': stored, 'stage': 'specialists', 'num_subclasses': 4,
                                   'summary': {'density': 0.07}})
  assert spec['cut'] == 'stage2' and spec['num_subclasses'] == 4 and spec['delta']['density'] == 0.07
  # head_only recorded config.specialists as given, and trained it at the head.
  assert workdir_lib._legacy_spec({'config': stored, 'stage': 'head_only', 'num_subclasses': 2})['cut'] == 'head'


def test_two_specialists_swapped_between_their_directories_are_refused_naming_the_place(tiny_workdir, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  config, trained, _ = tiny_workdir
  workdir = str(tmp_path / 'w')
  shutil.copytree(trained, workdir)
  hierarchy = setup_of.make_hierarchy(config)
  one, two = (workdir_lib.specialist_dir(workdir, hierarchy, k) for k in (1, 2))
  os.rename(one, one + '.x')
  os.rename(two, one)
  os.rename(one + '.x', two)
  generalist = workdir_lib.load_network(config, workdir, 'superclass', setup_of.build(config))
  spec = workdir_lib.load_exported(config, workdir, 0, generalist, hierarchy)['spec']
  assert spec['superclass'] == 0
  assert spec['model'] == {'name': config.model, 'stem': config.stem, 'width': config.width}  # what its delta fits
  with pytest.raises(ValueError, match=f"{one} holds the specialist of superclass 2 .*, not of superclass 1 .*move it "
                                       f'back to {two}'):
    workdir_lib.load_exported(config, workdir, 1, generalist, hierarchy)
