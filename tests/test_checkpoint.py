"""Orbax checkpoints with integrity checks, and the fall-back past corrupt steps (supersub_jax.checkpoint)."""

import logging
import os
import shutil

import numpy as np
import pytest

from supersub_jax import checkpoint as ckpt


def _state(step: int) -> dict:
  rng = np.random.default_rng(step)
  return {'params': {'w': rng.normal(size=(64, 32)).astype(np.float32), 'b': np.full((32,), step, np.float32)},
          'step': np.asarray(step, np.int32)}


def _saved(tmp_path, steps=(2, 4)) -> tuple[str, object]:
  directory = str(tmp_path / 'stage')
  manager = ckpt.make_manager(directory, max_to_keep=None)
  for step in steps:
    ckpt.save(manager, step, state=_state(step), data={'epoch': step}, meta={'note': f'step {step}'})
  return directory, manager


def _largest_array_file(step_dir: str) -> str:
  files = [os.path.join(root, f) for root, _, names in os.walk(os.path.join(step_dir, 'state')) for f in names
           if os.sep + 'd' + os.sep in os.path.join(root, f)]
  return max(files, key=os.path.getsize)


def test_round_trip_records_checksums_and_reads_them_back(tmp_path):
  directory, manager = _saved(tmp_path)
  restored = ckpt.restore(manager, target=_state(0))
  assert restored.step == 4 and restored.data == {'epoch': 4} and restored.meta['note'] == 'step 4'
  np.testing.assert_array_equal(restored.state['params']['w'], _state(4)['params']['w'])
  assert restored.meta['checksums']['state'] == ckpt.tree_sha256(_state(4))


def test_save_refuses_non_finite_values_and_writes_nothing(tmp_path):
  manager = ckpt.make_manager(str(tmp_path / 'stage'))
  bad = _state(1)
  bad['params']['w'][3, 5] = np.nan
  with pytest.raises(FloatingPointError, match=r"non-finite values in \[\"state\['params'\]\['w'\]\"\]"):
    ckpt.save(manager, 1, state=bad)
  assert manager.all_steps() == []


@pytest.mark.parametrize('damage', ['truncate', 'overwrite 64 bytes', 'garble meta', 'remove state item'])
def test_damaged_latest_step_is_named_and_the_previous_one_restored(tmp_path, damage, caplog):
  directory, manager = _saved(tmp_path)
  step_dir = os.path.join(directory, '4')
  if damage == 'truncate':
    path = _largest_array_file(step_dir)
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)
  elif damage == 'overwrite 64 bytes':
    path = _largest_array_file(step_dir)
    with open(path, 'r+b') as f:
      f.seek(os.path.getsize(path) // 2)
      f.write(b'\x7f' * 64)
  elif damage == 'garble meta':
    with open(os.path.join(step_dir, 'meta', 'metadata'), 'w') as f:
      f.write('{"note": "step 4", "checks')
  else:
    shutil.rmtree(os.path.join(step_dir, 'state'))
  with pytest.raises(ckpt.CheckpointCorruptError, match=f'{directory}/4'):
    ckpt.restore(ckpt.make_manager(directory), target=_state(0), step=4)
  manager = ckpt.make_manager(directory)
  with caplog.at_level(logging.WARNING):
    restored = ckpt.restore_latest(manager, target=_state(0), quarantine=True)
  assert restored.step == 2
  np.testing.assert_array_equal(restored.state['params']['b'], _state(2)['params']['b'])
  assert 'restored step 2 instead' in caplog.text and f'{directory}/4' in caplog.text
  # Moved aside, kept for inspection; the step can be written again.
  assert sorted(os.listdir(directory)) == ['2', '4.corrupt-0']
  ckpt.save(manager, 4, state=_state(4))
  assert manager.all_steps() == [2, 4]


def test_no_intact_step_is_an_error_that_says_what_to_do(tmp_path):
  directory, manager = _saved(tmp_path, steps=(2,))
  shutil.rmtree(os.path.join(directory, '2', 'state'))
  with pytest.raises(ckpt.CheckpointCorruptError, match=f'(?s)no intact checkpoint in {directory}.*Delete'):
    ckpt.restore_latest(ckpt.make_manager(directory), target=_state(0))


def test_restore_rejects_non_finite_values_written_behind_its_back(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = str(tmp_path / 'stage')
  manager = ckpt.make_manager(directory)
  bad = _state(3)
  bad['params']['b'][0] = np.inf
  manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(bad), meta=ocp.args.JsonSave({})))
  manager.wait_until_finished()
  with pytest.raises(ckpt.CheckpointCorruptError, match=r"non-finite values in \[\"\['params'\]\['b'\]\"\]"):
    ckpt.restore(manager, target=_state(0), with_data=False)


def test_leftover_temporary_step_directory_is_ignored_and_overwritten(tmp_path):
  directory, manager = _saved(tmp_path, steps=(2,))
  leftover = os.path.join(directory, '4.orbax-checkpoint-tmp-1234567')
  os.makedirs(os.path.join(leftover, 'state'))
  with open(os.path.join(leftover, 'state', 'junk'), 'wb') as f:
    f.write(b'half a save')
  manager = ckpt.make_manager(directory)
  assert manager.all_steps() == [2]
  assert ckpt.restore_latest(manager, target=_state(0)).step == 2
  ckpt.save(manager, 4, state=_state(4), data={}, meta={})
  assert ckpt.restore(ckpt.make_manager(directory), target=_state(0)).step == 4


def test_tree_mismatches_are_listed_not_treated_as_corruption(tmp_path):
  directory, manager = _saved(tmp_path, steps=(2,))
  extra_leaf = _state(0)
  del extra_leaf['params']['b']  # the checkpoint holds a leaf the target does not expect
  with pytest.raises(ckpt.CheckpointMismatchError, match=r'params/b: stored \(32,\) float32, not expected'):
    ckpt.restore_latest(manager, target=extra_leaf)
  dtype_only = _state(0)
  dtype_only['params']['w'] = dtype_only['params']['w'].astype(np.float16)
  with pytest.raises(ckpt.CheckpointMismatchError,
                     match=r'params/w: expected \(64, 32\) float16, stored \(64, 32\) float32'):
    ckpt.restore(manager, target=dtype_only)
  assert os.listdir(directory) == ['2']  # nothing moved aside


def test_read_meta_of_an_empty_or_missing_directory_names_it(tmp_path):
  (tmp_path / 'empty').mkdir()
  for name in ('empty', 'missing'):
    with pytest.raises(FileNotFoundError, match=f'No checkpoint in {tmp_path / name}'):
      ckpt.read_meta(str(tmp_path / name))
  assert not (tmp_path / 'missing').exists()
