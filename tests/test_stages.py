"""Tests of the stages: resume after SIGTERM, the specialists stage and its checkpoints."""

import json
import os
import re
import shutil
import signal

import jax
import numpy as np
import pytest

from conftest import make_tiny_config
from supersub_jax import bank as bank_lib
from supersub_jax import checkpoint as ckpt
from supersub_jax import cut as cut_lib
from supersub_jax import decide
from supersub_jax import delta as delta_lib
from supersub_jax import exported as exported_lib
from supersub_jax import models
from supersub_jax import recipe
from supersub_jax import runner
from supersub_jax import runtime
from supersub_jax import setup_of
from supersub_jax import specialists
from supersub_jax import stages
from supersub_jax import weights
from supersub_jax import workdir as workdir_lib
from supersub_jax.data import sources


def _final_state(config, workdir, stage='vanilla'):
  net = workdir_lib.load_network(config, workdir, stage, setup_of.build(config))
  return net.params, net.batch_stats


def test_resume_after_sigterm_equals_uninterrupted(tmp_path, tiny_data_dir, monkeypatch):
  config = make_tiny_config(tiny_data_dir)
  config.stages = ('vanilla',)
  uninterrupted = str(tmp_path / 'a')
  recipe.run(config, uninterrupted)

  interrupted = str(tmp_path / 'b')
  real_fit = runner.fit

  def fit_with_sigterm(*args, **kwargs):
    def kill_at_step_3(step, state):
      if step == 3:
        os.kill(os.getpid(), signal.SIGTERM)
      return state
    return real_fit(*args, **{**kwargs, 'hooks': (kill_at_step_3,)})

  monkeypatch.setattr(runner, 'fit', fit_with_sigterm)
  with pytest.raises(runtime.Preempted, match='saved step 4'):
    recipe.run(config, interrupted)
  monkeypatch.setattr(runner, 'fit', real_fit)
  assert ckpt.make_manager(os.path.join(interrupted, 'vanilla')).latest_step() == 4
  recipe.run(config, interrupted)  # the same command again resumes from step 4

  a, b = _final_state(config, uninterrupted), _final_state(config, interrupted)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_all_stages_report_metrics_and_log_each_job_under_its_own_name(tiny_workdir):
  config, workdir, results = tiny_workdir
  assert set(results) == {'vanilla', 'superclass', 'specialists', 'vanilla_matched', 'head_only'}
  assert results['vanilla']['count'] == 7 * 4  # 7 subclasses x 4 test images
  assert 0.0 <= results['superclass']['accuracy'] <= 1.0
  summary = results['specialists']
  assert [s['superclass'] for s in summary['specialists']] == [0, 1, 2]
  assert summary['storage']['num_specialists'] == 3
  logged = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  train_stages = {r['stage'] for r in logged if r['split'] == 'train'}
  assert train_stages == {'vanilla', 'superclass', 'specialist_0', 'specialist_1', 'specialist_2', 'vanilla_matched',
                          'head_only_0', 'head_only_1', 'head_only_2'}
  for stage in train_stages:  # the same metrics as TensorBoard event files, one directory per job
    assert [f for f in os.listdir(os.path.join(workdir, 'tb', stage)) if f.startswith('events.out.tfevents')]
  for s in summary['specialists']:
    [final] = [r for r in logged if r['stage'] == f"specialist_{s['superclass']}" and r['split'] == config.eval_split]
    assert final['accuracy'] == s['oracle_top1'] and final['step'] == s['num_steps']


def test_specialist_masks_reach_target_density_and_delta_stays_sparse(tiny_workdir):
  config, workdir, _ = tiny_workdir
  hierarchy = setup_of.make_hierarchy(config)
  # The kept fraction over all delta leaves: the pruned leaves at the target density, the dense_leaves whole.
  generalist = workdir_lib.load_network(config, workdir, 'superclass', setup_of.build(config))
  backbone = cut_lib.split_head(generalist.params)[0]
  sizes = {delta_lib.path_str(p): x.size for p, x in jax.tree_util.tree_flatten_with_path(backbone)[0]}
  in_delta = [p for p in sizes if re.fullmatch(delta_lib.KERNELS_AND_NORM, p)]
  assert config.specialists.leaves == 'kernels_and_norm' and config.specialists.dense_leaves == delta_lib.NORM
  whole = sum(sizes[p] for p in in_delta if re.search(delta_lib.NORM, p))
  pruned = sum(sizes[p] for p in in_delta) - whole
  expected = (config.specialists.density * pruned + whole) / (pruned + whole)
  assert whole > 0 and expected > config.specialists.density + 0.005
  for k in range(hierarchy.num_superclasses):
    manager = ckpt.make_manager(workdir_lib.specialist_dir(workdir, hierarchy, k),
                                item_names=workdir_lib.SPECIALIST_ITEMS)
    meta = ckpt.read_meta(workdir_lib.specialist_dir(workdir, hierarchy, k))
    assert meta['summary']['density'] == pytest.approx(expected, abs=0.003)
    metadata = manager.item_metadata(manager.latest_step())
    assert 'compressed' in metadata and 'state' in metadata


def test_unknown_stage_is_rejected(tmp_path, tiny_data_dir):
  config = make_tiny_config(tiny_data_dir)
  config.stages = ('vanilla', 'distill')
  with pytest.raises(ValueError, match='distill'):
    recipe.run(config, str(tmp_path))


def test_specialist_steps_follow_the_superclass_size(tiny_data_dir):
  cfg = make_tiny_config(tiny_data_dir).specialists
  assert stages.specialist_steps(cfg, 10_000, 128) == cfg.num_train_steps  # num_epochs 0: fixed budget
  cfg.num_epochs, cfg.min_steps, cfg.steps_multiple = 2.0, 5, 10
  assert stages.specialist_steps(cfg, 640, 128) == 10     # 2 epochs of 5 batches
  assert stages.specialist_steps(cfg, 1000, 128) == 20    # 16 steps, rounded up to a multiple of 10
  assert stages.specialist_steps(cfg, 100, 128) == 10     # at least min_steps, rounded up


def test_vanilla_and_generalist_start_from_the_init_backbone(tmp_path, tiny_data_dir):
  config = make_tiny_config(tiny_data_dir)
  config.stages = ('vanilla', 'superclass')
  config.superclass.init_from_vanilla = False
  for stage in ('vanilla', 'superclass'):  # one step at learning rate 0: the params stay the imported ones
    config[stage].learning_rate, config[stage].num_train_steps = 0.0, 1
  # A torchvision-format file (names, layouts, a 1000-way fc) of the tiny config's architecture.
  pretrained = jax.device_get(models.init_variables(setup_of.make_model(config, 1000), jax.random.key(42),
                                                    (16, 16, 3)))
  config.init.path = str(tmp_path / 'pretrained.safetensors')
  weights.write_state_dict(config.init.path, weights.to_torchvision(pretrained))
  workdir = str(tmp_path / 'w')
  recipe.run(config, workdir)
  hierarchy = setup_of.make_hierarchy(config)
  for stage, classes in (('vanilla', hierarchy.num_subclasses), ('superclass', hierarchy.num_superclasses)):
    net = workdir_lib.load_network(config, workdir, stage, setup_of.build(config))
    assert net.params['head']['kernel'].shape[-1] == classes
    assert net.meta['init'] == config.init.path
    backbone = {k: v for k, v in pretrained['params'].items() if k != 'head'}
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(backbone)[0],
                            jax.tree.leaves({k: v for k, v in net.params.items() if k != 'head'})):
      np.testing.assert_array_equal(a, b, err_msg=f'{stage} {jax.tree_util.keystr(path)}')


def test_init_that_does_not_fit_fails_before_training(tmp_path, tiny_data_dir):
  config = make_tiny_config(tiny_data_dir)
  config.stages = ('vanilla',)
  other = jax.device_get(models.init_variables(models.create_model('resnet_tiny', 10, stem='imagenet'),
                                               jax.random.key(0), (16, 16, 3)))
  config.init.path = str(tmp_path / 'imagenet_stem.npz')
  weights.write_state_dict(config.init.path, weights.to_torchvision(other))
  with pytest.raises(weights.WeightsMismatchError, match=r'conv1.weight: file \(8, 3, 7, 7\), model needs '
                                                        r'\(8, 3, 3, 3\)'):
    recipe.run(config, str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w' / 'vanilla' / '0')


def test_missing_eval_split_fails_before_training(tmp_path, tiny_data_dir):
  config = make_tiny_config(tiny_data_dir)
  config.eval_split = 'train_extra'  # the synthetic dataset has train, validation and test
  with pytest.raises(sources.DatasetNotPreparedError,
                     match=r"split 'train_extra' .*available: \['test', 'train', 'validation'\]"):
    recipe.run(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'vanilla' / '0') and not (tmp_path / 'metrics.jsonl').exists()


def test_shared_trunk_apply_leaves_trunk_statistics_and_gradients_alone(tiny_data_dir):
  config = make_tiny_config(tiny_data_dir)
  model = setup_of.make_model(config, 4)
  variables = jax.device_get(models.init_variables(model, jax.random.key(0), (16, 16, 3)))
  images = np.float32(np.random.RandomState(0).randn(4, 16, 16, 3))
  apply = specialists.make_apply_fn(model, cut_lib.Cut('stage2'))

  def loss(params):
    logits, new = apply({'params': params, 'batch_stats': variables['batch_stats']}, images, train=True,
                        mutable=['batch_stats'])
    return logits.sum(), new['batch_stats']

  grads, new_stats = jax.grad(loss, has_aux=True)(variables['params'])
  for key in variables['batch_stats']:
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(variables['batch_stats'][key]),
                                                    jax.tree.leaves(new_stats[key])))
    assert same == (key in ('bn_init',) or key.startswith('stage1_')), key  # train mode only from the branch
  for key in grads:
    nonzero = any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads[key]))
    assert nonzero == (cut_lib.group_of(key) in ('stage2', 'stage3', 'head')), key


@pytest.mark.parametrize('branch', ['stage2', 'head'])
def test_shared_trunk_specialists_change_only_the_top_and_predict_like_their_dense_exports(
    tmp_path, tiny_workdir, branch):
  from supersub_jax import convert  # pylint: disable=g-import-not-at-top
  from supersub_jax import evaluation  # pylint: disable=g-import-not-at-top
  from supersub_jax import inference  # pylint: disable=g-import-not-at-top
  config, trained, _ = tiny_workdir
  workdir = str(tmp_path / 'w')
  for stage in ('vanilla', 'superclass'):  # the same generalist; only the specialists are new
    shutil.copytree(os.path.join(trained, stage), os.path.join(workdir, stage))
  config = make_tiny_config(config.data_dir)
  config.stages, config.specialists.branch = ('specialists',), branch
  recipe.run(config, workdir)

  hierarchy = setup_of.make_hierarchy(config)
  generalist = workdir_lib.load_network(config, workdir, 'superclass', setup_of.build(config))
  top_stats = set(cut_lib.Cut(branch).split(generalist.batch_stats)[1])
  gm = setup_of.make_model(config, hierarchy.num_superclasses)
  images = np.float32(np.random.RandomState(1).randn(12, 16, 16, 3))
  routes = np.argmax(gm.apply({'params': generalist.params, 'batch_stats': generalist.batch_stats}, images,
                              train=False), -1)
  want = np.zeros(len(images), np.int64)
  for k in range(hierarchy.num_superclasses):
    exported = workdir_lib.load_exported(config, workdir, k, generalist, hierarchy)
    groups = {cut_lib.group_of(keys[0]) for keys, _ in exported_lib.walk_records(exported['delta'])}
    assert groups == ({'stage2', 'stage3'} if branch == 'stage2' else set()), groups
    assert set(exported['batch_stats']) == top_stats
    dense = convert.dense_specialist(config, workdir, k)
    trunk = cut_lib.Cut(branch).split(generalist.params)[0]
    for a, b in zip(jax.tree.leaves(trunk), jax.tree.leaves(cut_lib.Cut(branch).split(dense['params'])[0])):
      np.testing.assert_array_equal(a, b)
    # The reference: the dense network, whole, on the images the generalist sends to k.
    local = np.argmax(setup_of.make_model(config, int(hierarchy.sizes[k])).apply(dense, images, train=False), -1)
    want[routes == k] = np.asarray(hierarchy.local_to_label)[k, local[routes == k]]

  state = workdir_lib.load_trained(config, workdir, setup_of.build(config)).state
  assert state.cut == cut_lib.Cut(branch)
  got = inference.predict(state, images, decide.Rule('hard'), generalist_model=gm,
                          specialist_model=setup_of.make_model(config, hierarchy.max_subclasses))
  np.testing.assert_array_equal(got['superclass'], routes)
  np.testing.assert_array_equal(got['label'], want)
  # The cut is the specialists' own word: one that says 'stem' over statistics from another cut is refused.
  exported = [workdir_lib.load_exported(config, workdir, k, generalist, hierarchy) for k in range(3)]
  assert {ex['spec']['cut'] for ex in exported} == {branch}
  mislabelled = [{**ex, 'spec': {**ex['spec'], 'cut': 'stem'}} for ex in exported]
  with pytest.raises(ValueError, match="branching at 'stem' \\(its spec\\)"):
    bank_lib.build_supersub({'params': generalist.params, 'batch_stats': generalist.batch_stats}, mislabelled,
                            hierarchy)
  with pytest.raises(ValueError, match='different layers'):
    bank_lib.build_supersub({'params': generalist.params, 'batch_stats': generalist.batch_stats},
                            mislabelled[:1] + exported[1:], hierarchy)


def test_vanilla_matched_trains_the_vanilla_recipe_for_the_whole_pipelines_steps(tiny_workdir):
  config, workdir, _ = tiny_workdir
  # tiny config: 6 vanilla + 4 generalist + 3 specialists x 6 steps, all at the same batch size.
  assert stages.pipeline_steps(config, setup_of.make_hierarchy(config)) == {'vanilla': 6, 'superclass': 4,
                                                                            'specialists': 18, 'total': 28}
  assert ckpt.make_manager(os.path.join(workdir, 'vanilla_matched'), create=False).latest_step() == 28
  net = workdir_lib.load_network(config, workdir, 'vanilla_matched', setup_of.build(config))
  assert net.params['head']['kernel'].shape[-1] == 7  # the flat network: every subclass
  # A changed vanilla recipe invalidates the matched network too: it is trained with config.vanilla's settings.
  changed = make_tiny_config(config.data_dir)
  changed.stages, changed.vanilla.learning_rate = config.stages, 0.5
  with pytest.raises(runner.SettingsMismatchError, match='vanilla.learning_rate'):
    workdir_lib.load_network(changed, workdir, 'vanilla_matched', setup_of.build(changed))


def test_head_only_stage_routes_the_generalists_own_features_through_a_head_per_superclass(tiny_workdir):
  from supersub_jax import evaluation  # pylint: disable=g-import-not-at-top
  from supersub_jax import inference  # pylint: disable=g-import-not-at-top
  config, workdir, results = tiny_workdir
  hierarchy = setup_of.make_hierarchy(config)
  assert results['head_only']['delta']['branch'] == 'head' and config.specialists.branch == 'stem'
  assert os.path.isdir(os.path.join(workdir, 'head_only', os.path.basename(workdir_lib.specialist_dir(
      workdir, hierarchy, 0))))
  generalist = workdir_lib.load_network(config, workdir, 'superclass', setup_of.build(config))
  gm = setup_of.make_model(config, hierarchy.num_superclasses)
  variables = {'params': generalist.params, 'batch_stats': generalist.batch_stats}
  images = np.float32(np.random.RandomState(2).randn(12, 16, 16, 3))
  routes = np.argmax(gm.apply(variables, images, train=False), -1)
  features = np.asarray(gm.apply(variables, images, train=False, stop='head'))  # [12, D] pooled
  want = np.zeros(len(images), np.int64)
  for k in range(hierarchy.num_superclasses):
    exported = workdir_lib.load_exported(config, workdir, k, generalist, hierarchy, stage='head_only')
    assert not list(exported_lib.walk_records(exported['delta']))  # no delta at all
    logits = features @ exported['head']['kernel'] + exported['head']['bias']  # [12, n_k], numpy reference
    want[routes == k] = np.asarray(hierarchy.local_to_label)[k, np.argmax(logits, -1)[routes == k]]
  state = workdir_lib.load_trained(config, workdir, setup_of.build(config)).head_only
  got = inference.predict(state, images, decide.Rule('hard'), generalist_model=gm,
                          specialist_model=setup_of.make_model(config, hierarchy.max_subclasses))
  np.testing.assert_array_equal(got['label'], want)
  # Trained with config.specialists' settings: a changed specialist recipe invalidates the head-only ones too.
  changed = make_tiny_config(config.data_dir)
  changed.stages, changed.specialists.learning_rate = config.stages, 0.5
  with pytest.raises(runner.SettingsMismatchError, match='specialists.learning_rate'):
    workdir_lib.load_exported(changed, workdir, 0, generalist, hierarchy, stage='head_only')


def test_dustbin_specialists_train_on_other_superclasses_and_export_their_corrected_column(tmp_path, tiny_workdir):
  from supersub_jax import evaluation  # pylint: disable=g-import-not-at-top
  from supersub_jax import inference  # pylint: disable=g-import-not-at-top
  config, trained, _ = tiny_workdir
  workdir = str(tmp_path / 'w')
  for stage in ('vanilla', 'superclass'):  # the same generalist; only the specialists are new
    shutil.copytree(os.path.join(trained, stage), os.path.join(workdir, stage))
  config = make_tiny_config(config.data_dir)
  config.stages = ('specialists',)
  config.specialists.update(dict(dustbin=True, dustbin_fraction=0.25, dustbin_others='confused'))
  recipe.run(config, workdir)
  hierarchy = setup_of.make_hierarchy(config)
  generalist = workdir_lib.load_network(config, workdir, 'superclass', setup_of.build(config))
  confusion = specialists.superclass_confusion(config, generalist, hierarchy)
  np.testing.assert_allclose(confusion.sum(1), 1.0, rtol=1e-5)  # rows: mean distributions over superclasses
  train_counts = np.bincount(stages.load_source(config, 'train', hierarchy).labels.superclass)
  for k in range(3):
    exported = workdir_lib.load_exported(config, workdir, k, generalist, hierarchy)
    n_k = int(hierarchy.sizes[k])
    assert exported['head']['kernel'].shape[1] == n_k + 1  # its real subclasses, then the dustbin
    prior = train_counts[k] / train_counts.sum()
    dustbin = exported['spec']['dustbin']
    assert dustbin['prior'] == pytest.approx(prior) and dustbin['others'] == 'confused'
    # A 25% dustbin share brought to even odds, by hand: log(0.75 / 0.25); the router carries the prior.
    assert dustbin['logit_correction'] == pytest.approx(np.log(3.0), rel=1e-6)
  loaded = workdir_lib.load_trained(config, workdir, setup_of.build(config))
  state = loaded.state
  assert state.bank.dustbin == 1 and state.num_outputs == hierarchy.max_subclasses + 1
  images = np.float32(np.random.RandomState(4).randn(6, 16, 16, 3))
  kw = dict(generalist_model=loaded.generalist.model, specialist_model=loaded.specialist_model)
  hard = inference.predict(state, images, decide.Rule('hard'), **kw)
  # The dustbin's mass is never the answer: a real subclass of the routed superclass.
  np.testing.assert_array_equal(hierarchy.label_to_superclass[np.asarray(hard['label'])], hard['routes'][:, 0])
  for spec in ('hinton:2', 'poe:2'):
    ruled = inference.predict(state, images, decide.Rule.parse(spec), **kw)
    assert ruled['label'].shape == (6,) and (np.asarray(ruled['label']) < hierarchy.num_subclasses).all()
