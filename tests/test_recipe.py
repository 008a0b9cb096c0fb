"""The recipe's checks before anything trains (supersub_jax.recipe.validate), and the run of config.stages."""

import os

import pytest

from conftest import make_tiny_config
from supersub_jax import recipe


def _problems(config) -> str:
  with pytest.raises(recipe.ConfigError) as info:
    recipe.validate(config)
  return str(info.value)


def test_every_problem_is_listed_at_once_with_its_field_and_fix(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.specialists.bits = 3
  config.specialists.density = 1.5
  config.specialists.dense_leaves = '(scale'
  config.model = 'resnet_huge'
  config.stages = ('superclass', 'vanilla')
  config.unlock()
  config.specialist = config.specialists  # a typo'd field, as an API user could add it
  message = _problems(config)
  assert 'cannot run (6 problem(s))' in message
  assert "specialists.dense_leaves='(scale': not a valid regex" in message
  assert 'specialists.bits=3: use one of (8, 4, 2), or 0 for no quantization.' in message
  assert 'specialists.density=1.5: use a fraction in [0, 1]' in message
  assert "model='resnet_huge': use one of" in message and 'resnet50' in message
  assert "stages=('superclass', 'vanilla'): out of order" in message
  assert 'specialist: unknown field; did you mean specialists?' in message


def test_a_branch_outside_the_model_names_its_layer_groups(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.specialists.branch = 'stage4'  # resnet_tiny has three stages
  message = _problems(config)
  assert "config.specialists.branch='stage4' is not a layer group of this model" in message
  assert "('stem', 'stage1', 'stage2', 'stage3', 'head')" in message


def test_unknown_hierarchy_dataset_and_missing_init_file(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.hierarchy = 'mixed_11'
  config.dataset = 'imagenet2021'
  config.init.path = str(tmp_path / 'resnet50.pth')
  message = _problems(config)
  assert "hierarchy='mixed_11': unknown hierarchy spec" in message
  assert "dataset='imagenet2021': use one of ('synthetic', 'cifar100', 'imagenet2012')" in message
  assert "resnet50.pth': no such file" in message


def test_a_data_dir_that_cannot_be_written_is_refused(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  message = _problems(make_tiny_config(str(blocker / 'data')))
  assert 'data_dir=' in message and 'cannot be written' in message


def test_a_bad_config_fails_before_anything_is_written(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.specialists.bits = 5
  with pytest.raises(recipe.ConfigError, match='specialists.bits=5'):
    recipe.run(config, str(tmp_path / 'workdir'))
  assert not os.path.exists(tmp_path / 'workdir')


def test_defaults_and_shipped_configs_are_valid(tmp_path):
  recipe.validate(make_tiny_config(str(tmp_path / 'data')))


def test_values_of_the_right_type_but_no_meaning_are_listed(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.image_size = 0
  config.synthetic.test_per_class = 0
  config.width = -1.0
  config.vanilla.learning_rate = -0.1
  config.superclass.momentum = 1.0
  config.specialists.mask_update_every = 0
  config.specialists.prune_begin_fraction = 0.7  # after prune_end_fraction = 0.6
  config.log_every_steps = 0
  config.checkpoint_every_steps = 0
  config.evaluate.benchmark_batch_sizes = (0,)
  config.evaluate.chunk_sizes = ()
  config.evaluate.top2_threshold = 1.5
  config.batch_size = 0
  message = _problems(config)
  assert 'cannot run (14 problem(s))' in message
  for expected in ('image_size=0: use an integer >= 1', 'synthetic.test_per_class=0: use an integer >= 1',
                   'width=-1.0: use a number in (0, 64]', 'vanilla.learning_rate=-0.1: use a number >= 0',
                   'superclass.momentum=1.0: use a number in [0, 1)', 'specialists.mask_update_every=0',
                   'prune_begin_fraction=0.7 is after prune_end_fraction=0.6', 'log_every_steps=0',
                   'checkpoint_every_steps=0', 'evaluate.benchmark_batch_sizes=(0,): use a non-empty tuple',
                   'evaluate.chunk_sizes=(): use a non-empty tuple', 'evaluate.top2_threshold=1.5',
                   'batch_size=0: use a positive multiple of the'):
    assert expected in message, expected


def test_evaluation_checks_what_it_reads_and_not_the_training_knobs(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.checkpoint_every_steps = 0  # a workdir trained before the check existed is still evaluated
  config.init.path = str(tmp_path / 'deleted_since.pth')
  recipe.validate(config, training=False)
  config.evaluate.batch_size = 0
  with pytest.raises(recipe.ConfigError, match=r'\(1 problem\(s\)\):\n  evaluate.batch_size=0'):
    recipe.validate(config, training=False)


def test_only_checkpoints_count_in_the_settings_check_not_a_config_json_they_do_not_back(tmp_path, tiny_workdir):
  # A start that failed after writing config.json and an empty stage directory must not block the corrected command.
  from supersub_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = make_tiny_config(str(tmp_path / 'data'))
  failed = make_tiny_config(str(tmp_path / 'data'))
  failed.image_size = 8
  config_lib.write(failed, str(tmp_path / 'w'))
  os.makedirs(tmp_path / 'w' / 'vanilla')
  recipe.check_previous_run(config, str(tmp_path / 'w'))
  trained_config, trained, _ = tiny_workdir  # read only
  changed = trained_config.copy_and_resolve_references()
  changed.seed = 1
  changed.specialists.density = 0.5
  with pytest.raises(recipe.runner.SettingsMismatchError) as info:
    recipe.check_previous_run(changed, trained)
  assert 'seed: 0 -> 1 (checkpoints of vanilla, superclass, specialists, vanilla_matched, head_only)' in str(info.value)
  assert 'specialists.density: 0.05 -> 0.5 (checkpoints of specialists, head_only)' in str(info.value)


def test_an_image_or_batch_that_cannot_fit_is_refused_with_the_estimate(tmp_path, monkeypatch):
  config = make_tiny_config(str(tmp_path / 'data'))
  per_image, largest = recipe.activation_bytes(config)
  config.image_size *= 2  # every convolution's output has 4x the pixels (the pooled features and logits do not)
  doubled, doubled_largest = recipe.activation_bytes(config)
  assert doubled_largest == 4 * largest and 3.9 * per_image < doubled < 4 * per_image
  config.image_size //= 2
  monkeypatch.setattr(recipe, 'device_memory', lambda: (1000 * per_image, 'the test\'s memory'))
  recipe.validate(config)  # 16 images of per_image each fit
  config.batch_size = 1024
  message = _problems(config)
  assert 'cannot run (1 problem(s))' in message
  assert (f'image_size=16, batch_size=1024: training needs at least {recipe._size(1024 * per_image)} per device '  # pylint: disable=protected-access
          f"(1024 image(s) of {recipe._size(per_image)} of activations), more than the "  # pylint: disable=protected-access
          f"{recipe._size(1000 * per_image)} of the test's memory; use a batch_size of at most 1000") in message  # pylint: disable=protected-access
  config.batch_size, config.image_size = 16, 1024
  message = _problems(config)
  assert 'image_size=1024, batch_size=16: training needs' in message and 'even one image per device' in message
  assert 'image_size=1024, eval_batch_size=32: inference needs' in message


def test_an_empty_stage_list_is_an_error(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.stages = ()
  assert 'stages=(): nothing to train' in _problems(config)


def test_a_pre_resized_store_is_imagenets_with_a_quality_in_range(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))  # the synthetic dataset
  config.max_side = 512
  config.jpeg_quality = 101
  message = _problems(config)
  assert "max_side=512: the pre-resized store is imagenet2012's; use 0 for dataset='synthetic'." in message
  assert 'jpeg_quality=101: use an integer in [1, 100]' in message
  config.max_side, config.jpeg_quality = -1, 90
  assert 'max_side=-1: use an integer >= 0; 0 reads the JPEGs as distributed.' in _problems(config)
