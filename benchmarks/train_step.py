"""Train-step throughput: plain training vs specialist delta training, over 1..n devices.

  python benchmarks/train_step.py --model=resnet_small --image_size=32 --stem=small --batch_size=128 --devices=1,2
  python benchmarks/train_step.py --model=resnet50 --image_size=224 --batch_size=16 --devices=1,2 --steps=3
  python benchmarks/train_step.py --model=resnet50 --image_size=224 --batch_size=256 --half_precision  # GPU

For each device count, one subprocess with that many devices (on CPU via --xla_force_host_platform_device_count)
builds each kind:
  plain: the vanilla/superclass step (all params trainable; also what dense fine-tuning costs);
  delta: the specialists step (frozen base + sparse, fake-quantized delta materialized inside the step, new head,
         mask schedule updated and re-applied inside the step).
Prints compile time, the mean step time over whole mask-update periods (the delta step updates its masks on one
step in ``mask_update_every`` = 10: a median would hide it), that update step alone, the median, images/s from the
mean, and model FLOP utilisation when the peak is known (--peak_tflops, or the H100/H200/A100 bf16 dense peak
picked from the device kind). Batches are 4 distinct random batches in turn, put on the devices before timing.
The kinds take turns by whole mask-update periods in the one process, so a machine whose speed drifts (a shared
CPU: +-30% over minutes here) slows them alike and their ratio holds.
"""

import functools
import json
import os
import subprocess
import sys

from absl import app
from absl import flags

_MODEL = flags.DEFINE_string('model', 'resnet_small', 'supersub_jax.models name.')
_STEM = flags.DEFINE_string('stem', 'small', "'small' or 'imagenet'.")
_IMAGE = flags.DEFINE_integer('image_size', 32, 'Image side.')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Global batch.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps: rounded up to whole mask-update periods (10 steps).')
_DEVICES = flags.DEFINE_list('devices', ['1', '2'], 'Device counts (CPU: forced host devices).')
_KINDS = flags.DEFINE_list('kinds', ['plain', 'delta'], 'Step kinds.')
_HALF = flags.DEFINE_bool('half_precision', False, 'bf16 compute.')
_PEAK = flags.DEFINE_float('peak_tflops', 0.0, 'Peak TFLOP/s per device for MFU (0: from the device kind).')
_CLASSES = flags.DEFINE_integer('num_classes', 10, 'Classes of the head.')
_WORKER = flags.DEFINE_string('worker', '', 'Internal: run one measurement, print JSON.')

PEAK_BF16_TFLOPS = {'H100': 989.0, 'H200': 989.0, 'A100': 312.0}


def _measure(kinds: list[str]) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from supersub_jax import config as config_lib, delta as delta_lib, measure, models, runtime, specialists, step as step_lib  # pylint: disable=g-import-not-at-top

  n = jax.local_device_count()
  if _BATCH.value % n:
    raise ValueError(f'--batch_size={_BATCH.value} is not divisible by {n} devices.')
  model = models.create_model(_MODEL.value, _CLASSES.value, stem=_STEM.value,
                              dtype=jnp.bfloat16 if _HALF.value else jnp.float32)
  shape = (_IMAGE.value, _IMAGE.value, 3)
  variables = jax.device_get(models.init_variables(model, jax.random.key(0), shape))
  every = 10
  steps = -(-_STEPS.value // every) * every
  # The specialists' own defaults (density 0.1, int8, per-channel kernels, gradual schedule, a delta from the stem),
  # with a schedule that spans the timed steps.
  cfg = config_lib.default_config().specialists
  cfg.update(dict(learning_rate=0.01, warmup_steps=0, prune_begin_fraction=0.0, prune_end_fraction=1.0,
                  mask_update_every=every))
  tx = step_lib.make_optimizer(cfg, 1000)
  parallel = runtime.Parallel('pmap')

  def build(kind):
    if kind == 'plain':
      state = step_lib.create_train_state(variables['params'], variables['batch_stats'], tx)
      frozen = {}
      fn = functools.partial(step_lib.train_step, apply_fn=model.apply, tx=tx)
    elif kind == 'delta':
      dcfg = specialists.delta_config(cfg)
      base, head = models.split_head(variables['params'])
      delta = delta_lib.init_delta(base, dcfg.pattern, dcfg.exclude)
      masks = jax.tree.map(lambda d: np.ones(d.shape, bool), delta)
      state = step_lib.create_train_state({'delta': delta, 'head': head}, variables['batch_stats'], tx, masks=masks)
      frozen = base
      # The gradual schedule outlasts the timed steps (its end, a multiple of the period, is never reached), so
      # masks are updated on exactly one step per period.
      fn = functools.partial(step_lib.train_step, apply_fn=model.apply, tx=tx,
                             params_fn=specialists.make_params_fn(dcfg),
                             post_update=specialists.make_post_update(cfg, steps + 2 * every))
    else:
      raise ValueError(f'unknown kind {kind!r}')
    return parallel.compile(fn), [parallel.replicate(state)], parallel.replicate(frozen)

  rng = np.random.default_rng(0)
  batches = [jax.device_put({'image': rng.normal(size=(n, _BATCH.value // n) + shape).astype(np.float32),
                             'label': rng.integers(0, _CLASSES.value, size=(n, _BATCH.value // n)).astype(np.int32)})
             for _ in range(4)]
  built = {kind: build(kind) for kind in kinds}

  def run(kind, i):
    step, state, frozen = built[kind]
    state[0], metrics = step(state[0], batches[i % 4], frozen)
    return metrics

  # Steps done after the compiling call: 1, so timed call i ends at step i + 1 + warmup. Start the timing on a
  # period's first step, so that each kind's turns hold whole periods with exactly one update each.
  warmup = 1 + (-2) % every
  timing = measure.time_calls({kind: functools.partial(run, kind) for kind in kinds}, steps, turn=every,
                              warmup=warmup)
  due = [(i + warmup + 1) % every == 0 for i in range(steps)]
  try:
    flops = 3 * models.flops_per_example(model, variables, shape)  # forward + backward ~ 3x forward
  except RuntimeError as e:  # the timings stand without it
    print(f'no MFU: {e}', file=sys.stderr)
    flops = 0.0
  device = jax.devices()[0]
  peak = _PEAK.value or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device.device_kind), 0.0)
  due = np.asarray(due)
  rows = []
  for kind in kinds:
    t = timing[kind].seconds
    step_s = float(t.mean())
    achieved = flops * _BATCH.value / step_s / 1e12
    rows.append({'kind': kind, 'devices': n, 'device': f'{device.platform}:{device.device_kind}',
                 'model': _MODEL.value, 'image_size': _IMAGE.value, 'batch_size': _BATCH.value, 'bf16': _HALF.value,
                 'compile_s': timing[kind].first_s, 'step_s': step_s, 'median_step_s': float(np.median(t)),
                 'update_step_s': float(t[due].mean()), 'other_step_s': float(t[~due].mean()),
                 'timed_steps': steps, 'images_per_s': _BATCH.value / step_s,
                 'train_tflops': achieved, 'mfu': achieved / (peak * n) if peak and flops else None})
  return rows


def main(argv):
  del argv
  if _WORKER.value:
    print('RESULT ' + json.dumps(_measure(_WORKER.value.split(','))), flush=True)
    return
  rows = []
  for devices in _DEVICES.value:
    env = dict(os.environ)
    if 'cuda' not in env.get('JAX_PLATFORMS', '') and not os.path.exists('/dev/nvidia0'):
      env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + f' --xla_force_host_platform_device_count={devices}').strip()
    else:
      env['CUDA_VISIBLE_DEVICES'] = ','.join(str(i) for i in range(int(devices)))
    args = ([sys.executable, __file__, f'--worker={",".join(_KINDS.value)}'] +
            [a for a in sys.argv[1:] if not a.startswith('--worker')])
    out = subprocess.run(args, env=env, capture_output=True, text=True)
    line = next((l for l in out.stdout.splitlines() if l.startswith('RESULT ')), None)
    if line is None:
      raise RuntimeError(f'benchmark worker failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}')
    for r in json.loads(line[len('RESULT '):]):
      rows.append(r)
      print(f"{r['model']:>12} {r['image_size']:>4}px batch {r['batch_size']:>4} {r['kind']:>6} "
            f"{r['devices']} dev ({r['device']}): mean step {r['step_s'] * 1e3:8.1f} ms (update step "
            f"{r['update_step_s'] * 1e3:.1f}, median {r['median_step_s'] * 1e3:.1f}), {r['images_per_s']:9.1f} img/s, "
            f"compile {r['compile_s']:.1f} s" + (f", MFU {r['mfu']:.1%}" if r['mfu'] else ''), flush=True)
  by = {(r['devices'], r['kind']): r for r in rows}
  for devices in _DEVICES.value:
    d = int(devices)
    if (d, 'plain') in by and (d, 'delta') in by:
      ratio = by[d, 'delta']['step_s'] / by[d, 'plain']['step_s']
      update = by[d, 'delta']['update_step_s'] / by[d, 'plain']['step_s']
      print(f'delta / plain step time on {d} device(s), mean over whole update periods: {ratio:.3f}x '
            f'(the mask-update step alone: {update:.3f}x)')
  print(json.dumps(rows))


if __name__ == '__main__':
  app.run(main)
