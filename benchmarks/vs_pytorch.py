"""The same training step in JAX (this project) and in PyTorch, on the same hardware, alternating.

  python -m benchmarks.vs_pytorch --devices=1 --threads=2        # needs torch + torchvision (optional extras)
  python -m benchmarks.vs_pytorch --devices=2 --threads=2        # JAX over 2 forced host devices (pmap)
  python -m benchmarks.vs_pytorch --model=resnet50 --stem=imagenet --image_size=224 --batch_size=256 \
      --half_precision --steps=10 --torch_compile    # H200: JAX, eager, compiled 5,886 / 4,504 / 6,090 img/s

Model: --model (ResNet-18 by default) with --stem ('small': the 3x3 stem, stride 1, no max-pool) at --image_size,
--num_classes classes; batch --batch_size; SGD with Nesterov momentum 0.9, cross-entropy; BatchNorm in training
mode. JAX: ``step.train_step`` compiled by ``runtime.Parallel('pmap')`` on --devices (forced host devices on CPU),
parameters in fp32 and compute in bf16 with --half_precision. PyTorch: torchvision's model of the same name (the
layouts ``weights`` converts between), channels_last, ``torch.set_num_threads(--threads)`` on CPU, on the GPU
when there is one; --half_precision is ``torch.autocast`` to bf16 (fp32 parameters); --torch_compile adds a third
runner, the same PyTorch model under ``torch.compile`` (default inductor backend). Each runner takes --warmup
steps, then the runners alternate in --rounds rounds of --steps steps on distinct random batches already on the
device; the mean step time over all timed steps of each gives images/s. Each step ends by reading its loss on the host, in both frameworks alike. torch is never a
dependency of the package or its tests.
"""

import json
import os

from absl import app
from absl import flags

_MODEL = flags.DEFINE_enum('model', 'resnet18', ['resnet18', 'resnet34', 'resnet50'], 'Model, in both frameworks.')
_STEM = flags.DEFINE_enum('stem', 'small', ['small', 'imagenet'], "'small': 3x3 stride-1 stem, no max-pool.")
_IMAGE = flags.DEFINE_integer('image_size', 32, 'Image side.')
_CLASSES = flags.DEFINE_integer('num_classes', 10, 'Classes of the head.')
_HALF = flags.DEFINE_bool('half_precision', False, 'bf16 compute, fp32 parameters, in both frameworks.')
_TORCH_COMPILE = flags.DEFINE_bool('torch_compile', False, 'Also time the PyTorch model under torch.compile.')
_DEVICES = flags.DEFINE_integer('devices', 1, 'JAX devices (forced host devices on CPU).')
_THREADS = flags.DEFINE_integer('threads', 2, 'PyTorch intra-op threads (CPU).')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Global batch.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per round.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Alternating rounds.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps first (compilation, autotuning, allocator warm-up).')


def _jax_runner(batches):
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from supersub_jax import models, runtime, step as step_lib  # pylint: disable=g-import-not-at-top
  n = jax.local_device_count()
  model = models.create_model(_MODEL.value, _CLASSES.value, stem=_STEM.value,
                              dtype=jnp.bfloat16 if _HALF.value else jnp.float32)
  variables = jax.device_get(models.init_variables(model, jax.random.key(0), batches[0][0].shape[1:]))
  cfg = ml_collections.ConfigDict(dict(learning_rate=0.01, warmup_steps=0, schedule='constant', optimizer='sgd',
                                       momentum=0.9, nesterov=True, weight_decay=0.0))
  tx = step_lib.make_optimizer(cfg, 1000)
  parallel = runtime.Parallel('pmap')
  step = parallel.compile(functools.partial(step_lib.train_step, apply_fn=model.apply, tx=tx))
  state = [parallel.replicate(step_lib.create_train_state(variables['params'], variables['batch_stats'], tx))]
  sharded = [parallel.shard_batch({'image': x.reshape((n, -1) + x.shape[1:]), 'label': y.reshape(n, -1)})
             for x, y in batches]

  def run(i):
    state[0], metrics = step(state[0], sharded[i % len(sharded)], {})
    float(metrics['loss'][0])

  return run


def _torch_runner(batches, compiled):
  import contextlib  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  torch.set_num_threads(_THREADS.value)
  torch.backends.cudnn.benchmark = True
  model = getattr(torchvision.models, _MODEL.value)(num_classes=_CLASSES.value)
  if _STEM.value == 'small':
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
  model = model.to(device, memory_format=torch.channels_last).train()
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
  loss_fn = torch.nn.CrossEntropyLoss()
  forward = torch.compile(model) if compiled else model
  data = [(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device, memory_format=torch.channels_last),
           torch.from_numpy(y.astype('int64')).to(device)) for x, y in batches]

  def run(i):
    x, y = data[i % len(data)]
    opt.zero_grad(set_to_none=True)
    with (torch.autocast(device.type, dtype=torch.bfloat16) if _HALF.value else contextlib.nullcontext()):
      loss = loss_fn(forward(x), y)
    loss.backward()
    opt.step()
    loss.detach().item()

  return run, device


def main(argv):
  del argv
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={_DEVICES.value}').strip()
  # Both frameworks share one GPU: JAX's default preallocation (75% of its memory) would starve PyTorch.
  os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.45')
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  shape = (_BATCH.value, _IMAGE.value, _IMAGE.value, 3)
  batches = [(rng.normal(size=shape).astype(np.float32),
              rng.integers(0, _CLASSES.value, size=_BATCH.value).astype(np.int32)) for _ in range(4)]
  jax_run = _jax_runner(batches)  # first: each framework's CUDA libraries as it would load them alone
  torch_run, torch_device = _torch_runner(batches, compiled=False)
  runners = {'jax': jax_run, 'pytorch': torch_run}
  if _TORCH_COMPILE.value:
    runners['pytorch_compile'], _ = _torch_runner(batches, compiled=True)
  from supersub_jax import measure  # pylint: disable=g-import-not-at-top  (after both frameworks loaded theirs)
  timing = measure.time_calls(runners, _ROUNDS.value * _STEPS.value, turn=_STEPS.value, warmup=_WARMUP.value)
  times = {name: t.seconds for name, t in timing.items()}
  ips = {name: _BATCH.value / float(np.mean(t)) for name, t in times.items()}
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  precision = 'bf16' if _HALF.value else 'fp32'
  where = (torch.cuda.get_device_name(torch_device) if torch_device.type == 'cuda'
           else f'{_THREADS.value} CPU threads')
  print(f'{_MODEL.value} ({_STEM.value} stem) {_IMAGE.value}x{_IMAGE.value}, batch {_BATCH.value}, SGD Nesterov, '
        f'{precision} training step, mean of {_ROUNDS.value * _STEPS.value} steps each, alternating:')
  print(f'  JAX {jax.__version__} on {jax.local_device_count()} {jax.devices()[0].device_kind} device(s): '
        f'{ips["jax"]:.1f} img/s')
  for name in ips:
    if name != 'jax':
      label = 'channels_last, torch.compile' if name == 'pytorch_compile' else 'channels_last, eager'
      print(f'  PyTorch {torch.__version__} on {where}, {label}: {ips[name]:.1f} img/s '
            f'(JAX / this: {ips["jax"] / ips[name]:.2f}x)')
  print(json.dumps({**{f'{name}_ips': v for name, v in ips.items()}, 'ratio': ips['jax'] / ips['pytorch'],
                    'model': _MODEL.value, 'stem': _STEM.value, 'image_size': _IMAGE.value, 'precision': precision,
                    'jax_device': jax.devices()[0].device_kind,
                    'torch_device': where, 'devices': _DEVICES.value, 'batch_size': _BATCH.value}))

if __name__ == '__main__':
  app.run(main)
