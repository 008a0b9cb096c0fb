"""What the stage runner refuses to mix (supersub_jax.runner): the settings a checkpoint depends on."""

import pytest

from supersub_jax import config as config_lib
from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax import runner


def _job(stage, config, hierarchy=None, fingerprints=None):
  hierarchy = hierarchy or hierarchy_lib.synthetic((3, 2, 2))
  meta = {'config': config.to_dict(), 'hierarchy': hierarchy.to_dict(), 'fingerprints': dict(fingerprints or {})}
  return runner.Job(stage, stage, '/w/' + stage, 10, meta)


def test_meaning_changes_are_listed_and_harmless_ones_allowed():
  trained = config_lib.default_config()
  now = config_lib.default_config()
  now.specialists.density = 0.5                  # the delta's meaning
  now.specialists.bits = 4
  now.log_every_steps, now.evaluate.batch_size = 7, 64     # harmless
  now.specialists.superclasses = (1,)            # which to train: harmless
  now.vanilla.num_train_steps = 99               # another stage's section: not this stage's business
  job = _job('specialists', now)
  stored = {**_job('specialists', trained).meta}
  assert runner.settings_differences(stored, now, job) == ['specialists.bits: 8 -> 4',
                                                           'specialists.density: 0.1 -> 0.5']
  assert runner.settings_differences(stored, now, _job('vanilla', now)) == ['vanilla.num_train_steps: 1000 -> 99']


def test_hierarchy_with_equal_counts_and_a_changed_generalist_are_caught():
  config = config_lib.default_config()
  stored = _job('specialists', config, hierarchy_lib.synthetic((3, 2, 2)), {'generalist': 'a' * 64}).meta
  other = hierarchy_lib.synthetic((2, 3, 2))  # same number of classes, other split
  job = _job('specialists', config, other, {'generalist': 'b' * 64})
  problems = runner.settings_differences(stored, config, job)
  assert problems[0].startswith("hierarchy: 'synthetic'") and len(problems) == 2
  assert 'generalist network: trained on aaaaaaaaaaaa..., now bbbbbbbbbbbb...' in problems[1]
  with pytest.raises(runner.SettingsMismatchError, match=r'(?s)/w/specialists \(step 3\).*2 differ.*fresh --workdir'):
    runner.check_settings(stored, 3, config=config, job=job)


def test_a_checkpoint_from_before_a_field_existed_compares_to_the_default():
  config = config_lib.default_config()
  stored = config.to_dict()
  del stored['nonfinite'], stored['specialists']['min_steps']
  assert runner.settings_differences({'config': stored}, config, _job('specialists', config)) == []
  config.specialists.min_steps = 5
  assert runner.settings_differences({'config': stored}, config, _job('specialists', config)) == [
      'specialists.min_steps: 20 -> 5']
