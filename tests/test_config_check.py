"""The config check (supersub_jax.config_check): every field's problem listed at once with its fix, without touching
the disk or the devices; every shipped config passes it; one home for the choice lists (supersub_jax.choices)."""

import importlib.util
import os

import pytest

from conftest import make_tiny_config
from supersub_jax import choices
from supersub_jax import config_check
from supersub_jax import decide
from supersub_jax import inference
from supersub_jax import models
from supersub_jax.data import pipeline, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs')) if f.endswith('.py') and f != '__init__.py')


def _problems(config, **kwargs) -> str:
  with pytest.raises(config_check.ConfigError) as info:
    config_check.check(config, **kwargs)
  return str(info.value)


def _shipped(name):
  """configs/<name>.py's config, loaded by path as --config=configs/<name>.py loads it."""
  spec = importlib.util.spec_from_file_location(f'{name}_config', os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize('name', CONFIGS)
def test_every_shipped_config_passes_the_check_for_training_and_evaluation(name):
  config = _shipped(name)
  assert config_check.problems_of(config) == []
  assert config_check.problems_of(config, training=False) == []


def test_the_tiny_config_of_the_tests_passes_the_check(tmp_path):
  config_check.check(make_tiny_config(str(tmp_path / 'data')))


def test_the_check_writes_nothing_not_even_the_data_dir(tmp_path):
  config = make_tiny_config(str(tmp_path / 'missing' / 'data'))
  config_check.check(config)
  assert os.listdir(tmp_path) == []


def test_the_batch_must_split_over_the_devices_given(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.batch_size = 18
  assert config_check.problems_of(config, devices=2) == []
  message = _problems(config, devices=4)
  assert 'batch_size=18: not divisible by the 4 devices; use a multiple of 4, e.g. 16.' in message


CHOICE_FIELDS = [('model', sorted(models.MODELS)), ('stem', choices.STEMS), ('dataset', choices.DATASETS),
                 ('augment', choices.AUGMENTATIONS), ('parallelism', choices.PARALLELISMS),
                 ('nonfinite', choices.NONFINITE), ('init.format', choices.INIT_FORMATS),
                 ('input.decoder', choices.DECODERS), ('input.normalize', choices.NORMALIZE),
                 ('evaluate.routing', choices.ROUTINGS + ('auto',)),
                 ('evaluate.materialize', choices.MATERIALIZE + ('auto',)),
                 ('vanilla.optimizer', choices.OPTIMIZERS), ('superclass.schedule', choices.SCHEDULES),
                 ('specialists.granularity', choices.GRANULARITIES), ('specialists.sparsity_scope', choices.SCOPES),
                 ('specialists.sparsity_schedule', choices.SCHEDULE_KINDS),
                 ('specialists.dustbin_others', choices.DUSTBIN_OTHERS),
                 ('specialists.head_from', choices.HEAD_FROM)]


@pytest.mark.parametrize('field,allowed', CHOICE_FIELDS, ids=[f for f, _ in CHOICE_FIELDS])
def test_a_value_outside_a_fields_choices_is_refused_with_the_choices(tmp_path, field, allowed):
  config = make_tiny_config(str(tmp_path / 'data'))
  section, _, name = field.rpartition('.')
  (config[section] if section else config)[name] = 'bogus'
  assert f"{field}='bogus': use one of {tuple(allowed)}." in _problems(config)


def test_a_specialist_head_from_init_without_an_init_network_is_refused_with_the_fix(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.specialists.head_from = 'init'
  assert "config.init.path is empty: give init.path" in _problems(config)
  config.init.path = str(tmp_path / 'flat.safetensors')
  assert not any('head_from' in p for p in config_check.problems_of(config))


def test_a_rule_or_router_outside_the_decision_rules_is_refused(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.evaluate.rules = ('vote:2', 'hard/crowd')  # 'hard/oracle' is a rule: the true superclass routes
  message = _problems(config)
  assert 'cannot run (2 problem(s))' in message and message.count('evaluate.rules: ') == 2


def test_a_verdict_rule_not_evaluated_or_a_map_of_other_data_is_refused_with_the_fix(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.evaluate.rules = ('hard', 'hard/flat')
  config.evaluate.verdict_rule = 'soft:2/flat'
  assert "verdict_rule='soft:2/flat' is not among evaluate.rules ('hard', 'hard/flat'): add it there" in _problems(
      config)
  config.evaluate.verdict_rule = 'vote'
  assert 'evaluate.verdict_rule: ' in _problems(config)
  for rule in ('hard/flat', 'hard'):  # 'hard', the paper's, is always evaluated
    config.evaluate.verdict_rule = rule
    assert not any('verdict_rule' in p for p in config_check.problems_of(config))
  config.dataset, config.evaluate.map_summary = 'cifar100', 'docs/results/map.json'
  assert "evaluate.map_summary='docs/results/map.json': a map is over the synthetic data" in _problems(config)


def test_the_choice_lists_are_those_the_modules_act_on():
  # The modules act on choices' tuples themselves (one home), not on copies.
  assert choices.ROUTINGS is inference.ROUTINGS and choices.MATERIALIZE is inference.MATERIALIZE
  assert choices.RULES is decide.RULES and choices.ROUTERS is decide.ROUTERS
  assert choices.STEMS is models.STEMS and choices.DATASETS is sources.DATASETS
  assert (choices.AUGMENTATIONS, choices.DECODERS, choices.LABEL_MODES) == (pipeline.AUGMENTATIONS, pipeline.DECODERS,
                                                                           pipeline.LABEL_MODES)


def test_the_synthetic_sizes_are_stated_once_in_synthetic_sizes(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.hierarchy = 'synthetic:4,2,2'
  assert ("hierarchy='synthetic:4,2,2': the synthetic sizes are stated once, in synthetic.sizes; use "
          "hierarchy='synthetic' and synthetic.sizes=(4, 2, 2).") in _problems(config)


def test_unknown_hierarchy_and_dataset_are_named_with_their_choices(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.hierarchy = 'mixed_11'
  config.dataset = 'imagenet2021'
  message = _problems(config)
  assert "hierarchy='mixed_11': unknown hierarchy spec" in message
  assert "dataset='imagenet2021': use one of ('synthetic', 'cifar100', 'imagenet2012')" in message


def test_evaluation_checks_what_it_reads_and_not_the_training_knobs(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  config.checkpoint_every_steps = 0  # a workdir trained before the check existed is still evaluated
  config_check.check(config, training=False)
  config.evaluate.batch_size = 0
  with pytest.raises(config_check.ConfigError, match=r'\(1 problem\(s\)\):\n  evaluate.batch_size=0'):
    config_check.check(config, training=False)


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


def test_an_image_or_batch_that_cannot_fit_is_refused_with_the_estimate(tmp_path):
  config = make_tiny_config(str(tmp_path / 'data'))
  per_image, largest = config_check.activation_bytes(config)
  config.image_size *= 2  # every convolution's output has 4x the pixels (the pooled features and logits do not)
  doubled, doubled_largest = config_check.activation_bytes(config)
  assert doubled_largest == 4 * largest and 3.9 * per_image < doubled < 4 * per_image
  config.image_size //= 2
  memory = (1000 * per_image, 'the test\'s memory')
  config_check.check(config, memory=memory)  # 16 images of per_image each fit
  config.batch_size = 1024
  message = _problems(config, memory=memory)
  assert 'cannot run (1 problem(s))' in message
  assert (f'image_size=16, batch_size=1024: training needs at least {config_check._size(1024 * per_image)} per device '  # pylint: disable=protected-access
          f"(1024 image(s) of {config_check._size(per_image)} of activations), more than the "  # pylint: disable=protected-access
          f"{config_check._size(1000 * per_image)} of the test's memory; use a batch_size of at most 1000") in message  # pylint: disable=protected-access
  config.batch_size, config.image_size = 16, 1024
  message = _problems(config, memory=memory)
  assert 'image_size=1024, batch_size=16: training needs' in message and 'even one image per device' in message
  assert 'image_size=1024, eval_batch_size=32: inference needs' in message
