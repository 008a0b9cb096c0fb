"""The stage runner (supersub_jax.runner): what it refuses to mix (the settings a checkpoint depends on), and the
loop's metric, TensorBoard and profile output."""

import functools
import json
import struct

import jax
import pytest

from supersub_jax import config as config_lib
from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax import runner
from supersub_jax import runtime
from supersub_jax import step as step_lib
from tiny_nets import batches, opt_cfg, setup


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


def test_fit_writes_json_lines_tensorboard_events_and_a_profile_of_the_asked_steps(tmp_path):
  model, params, batch_stats = setup()
  tx = step_lib.make_optimizer(opt_cfg(), 6)
  parallel = runtime.Parallel('pmap')
  step = parallel.compile(functools.partial(step_lib.train_step, apply_fn=model.apply, tx=tx))
  state = parallel.replicate(step_lib.create_train_state(params, batch_stats, tx))
  with runner.MetricWriter(str(tmp_path), 'vanilla') as writer:
    runner.fit(state, step_fn=step, parallel=parallel, frozen={}, name='vanilla', num_steps=6, global_batch=4,
                  train_iter=batches(jax.local_device_count(), 4, 6), save_fn=lambda *a: None, writer=writer,
                  log_every=2, profile_steps=2, profile_dir=writer.profile_dir)
  logged = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert [r['step'] for r in logged] == [1, 2, 4, 6] and all(r['stage'] == 'vanilla' for r in logged)
  from tensorboardX.event_file_writer import event_pb2  # pylint: disable=g-import-not-at-top
  [events] = (tmp_path / 'tb' / 'vanilla').glob('events.out.tfevents.*')
  scalars = []
  for record in _tf_records(events.read_bytes()):
    event = event_pb2.Event.FromString(record)
    scalars += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
  loss = [(step, value) for tag, step, value in scalars if tag == 'train/loss']
  assert [s for s, _ in loss] == [1, 2, 4, 6]
  assert [v for _, v in loss] == pytest.approx([r['loss'] for r in logged])
  traces = list((tmp_path / 'profile' / 'vanilla').rglob('*.xplane.pb'))
  assert len(traces) == 1 and traces[0].stat().st_size > 0


def _tf_records(data: bytes):
  """The payloads of a TFRecord file (length, its CRC, payload, its CRC), read without TensorFlow."""
  pos = 0
  while pos < len(data):
    (length,) = struct.unpack('<Q', data[pos:pos + 8])
    yield data[pos + 12:pos + 12 + length]
    pos += 12 + length + 4


def test_resuming_drops_damaged_metric_lines_and_keeps_every_other_record(tmp_path, caplog):
  from supersub_jax import runner  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'metrics.jsonl'
  records = [{'stage': 'vanilla', 'step': 2, 'loss': 1.0}, {'stage': 'superclass', 'step': 9, 'loss': 2.0},
             {'stage': 'vanilla', 'step': 4, 'loss': 0.5}]
  lines = [json.dumps(r).encode() + b'\n' for r in records]
  # a non-UTF-8 byte, a line cut short by a kill, a JSON value that is no record
  path.write_bytes(lines[0] + b'{"stage": "vani\xff\xfella"}\n' + lines[1] + b'[1, 2]\n' + lines[2] + b'{"stage": "van')
  writer = runner.MetricWriter(str(tmp_path), 'vanilla')
  with writer, caplog.at_level('WARNING'):
    writer.resume_at(2)
  assert [json.loads(l) for l in path.read_text().splitlines()] == records[:2]
  assert f'{path}: dropped 3 line(s)' in caplog.text
