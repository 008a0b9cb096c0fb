"""Train-step throughput: plain training vs specialist delta training, over 1..n devices.

  python -m benchmarks.train_step --model=resnet_small --image_size=32 --stem=small --batch_size=128 --devices=1,2
  python -m benchmarks.train_step --model=resnet50 --image_size=224 --batch_size=16 --devices=1,2 --steps=3
  python -m benchmarks.train_step --model=resnet50 --image_size=224 --batch_size=256 --half_precision  # GPU

For each device count, one subprocess with that many devices (``subprocess_run.in_subprocess``; on CPU forced host
devices) builds each kind:
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
import sys

from absl import app
from absl import flags

from benchmarks import subprocess_run

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

PEAK_BF16_TFLOPS = {'H100': 989.0, 'H200': 989.0, 'A100': 312.0}


def measure_steps(*, kinds: list[str], model: str, image_size: int, stem: str, batch_size: int, steps: int,
                  half_precision: bool, num_classes: int, peak_tflops: float = 0.0) -> list[dict]:
  """Times the step kinds on this process's devices (see the module docstring); one row per kind."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from supersub_jax import config as config_lib, cut as cut_lib, measure, models, runtime, setup_of, specialists, step as step_lib  # pylint: disable=g-import-not-at-top

  n = jax.local_device_count()
  if batch_size % n:
    raise ValueError(f'--batch_size={batch_size} is not divisible by {n} devices.')
  net = models.create_model(model, num_classes, stem=stem,
                            dtype=jnp.bfloat16 if half_precision else jnp.float32)
  shape = (image_size, image_size, 3)
  variables = jax.device_get(models.init_variables(net, jax.random.key(0), shape))
  every = 10
  steps = -(-steps // every) * every
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
      fn = functools.partial(step_lib.train_step, apply_fn=net.apply, tx=tx)
    elif kind == 'delta':
      dcfg = setup_of.delta_config(cfg)
      base, head = cut_lib.split_head(variables['params'])
      state = specialists.initial_state(base, head, variables['batch_stats'], dcfg, tx, cut_lib.Cut(cfg.branch))
      frozen = base
      # The gradual schedule outlasts the timed steps (its end, a multiple of the period, is never reached), so
      # masks are updated on exactly one step per period.
      fn = functools.partial(step_lib.train_step, apply_fn=net.apply, tx=tx,
                             params_fn=specialists.make_params_fn(dcfg),
                             post_update=specialists.make_post_update(cfg, steps + 2 * every))
    else:
      raise ValueError(f'unknown kind {kind!r}')
    return parallel.compile(fn), [parallel.replicate(state)], parallel.replicate(frozen)

  rng = np.random.default_rng(0)
  batches = [jax.device_put({'image': rng.normal(size=(n, batch_size // n) + shape).astype(np.float32),
                             'label': rng.integers(0, num_classes, size=(n, batch_size // n)).astype(np.int32)})
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
    flops = 3 * models.flops_per_example(net, variables, shape)  # forward + backward ~ 3x forward
  except RuntimeError as e:  # the timings stand without it
    print(f'no MFU: {e}', file=sys.stderr)
    flops = 0.0
  device = jax.devices()[0]
  peak = peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device.device_kind), 0.0)
  due = np.asarray(due)
  rows = []
  for kind in kinds:
    t = timing[kind].seconds
    step_s = float(t.mean())
    achieved = flops * batch_size / step_s / 1e12
    rows.append({'kind': kind, 'devices': n, 'device': f'{device.platform}:{device.device_kind}',
                 'model': model, 'image_size': image_size, 'batch_size': batch_size, 'bf16': half_precision,
                 'compile_s': timing[kind].first_s, 'step_s': step_s, 'median_step_s': float(np.median(t)),
                 'update_step_s': float(t[due].mean()), 'other_step_s': float(t[~due].mean()),
                 'timed_steps': steps, 'images_per_s': batch_size / step_s,
                 'train_tflops': achieved, 'mfu': achieved / (peak * n) if peak and flops else None})
  return rows


def main(argv):
  del argv
  rows = []
  for devices in _DEVICES.value:
    kwargs = dict(kinds=_KINDS.value, model=_MODEL.value, image_size=_IMAGE.value, stem=_STEM.value,
                  batch_size=_BATCH.value, steps=_STEPS.value, half_precision=_HALF.value,
                  num_classes=_CLASSES.value, peak_tflops=_PEAK.value)
    for r in subprocess_run.in_subprocess('benchmarks.train_step.measure_steps', kwargs, devices=int(devices)):
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
