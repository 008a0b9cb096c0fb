"""The same training step in JAX (this project) and in PyTorch, on the same CPU cores, alternating.

  python benchmarks/vs_pytorch.py --devices=1 --threads=2        # needs torch + torchvision (optional extras)
  python benchmarks/vs_pytorch.py --devices=2 --threads=2        # JAX over 2 forced host devices (pmap)

Model: ResNet-18 with the 3x3 stem (stride 1, no max-pool) at 32x32, 10 classes; batch --batch_size; SGD with
Nesterov momentum 0.9, cross-entropy; BatchNorm in training mode. JAX: ``train.train_step`` compiled by
``train.Parallel('pmap')`` on --devices (forced host devices on CPU), fp32. PyTorch: torchvision's resnet18 with
the same stem, channels_last, ``torch.set_num_threads(--threads)``, fp32. Each framework runs --warmup steps,
then the two alternate in --rounds rounds of --steps steps on distinct random batches; the mean step time over all
timed steps of each gives images/s. torch is never a dependency of the package or its tests.
"""

import json
import os
import time

from absl import app
from absl import flags

_DEVICES = flags.DEFINE_integer('devices', 1, 'JAX devices (forced host devices on CPU).')
_THREADS = flags.DEFINE_integer('threads', 2, 'PyTorch intra-op threads.')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Global batch.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per round.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Alternating rounds.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps first (compilation, allocator warm-up).')


def _jax_runner(batches):
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from supersub_jax import models, train as train_lib  # pylint: disable=g-import-not-at-top
  n = jax.local_device_count()
  model = models.create_model('resnet18', 10, stem='small')
  variables = jax.device_get(models.init_variables(model, jax.random.key(0), (32, 32, 3)))
  cfg = ml_collections.ConfigDict(dict(learning_rate=0.01, warmup_steps=0, schedule='constant', optimizer='sgd',
                                       momentum=0.9, nesterov=True, weight_decay=0.0))
  tx = train_lib.make_optimizer(cfg, 1000)
  parallel = train_lib.Parallel('pmap')
  step = parallel.compile(functools.partial(train_lib.train_step, apply_fn=model.apply, tx=tx))
  state = [parallel.replicate(train_lib.create_train_state(variables['params'], variables['batch_stats'], tx))]
  sharded = [parallel.shard_batch({'image': x.reshape((n, -1) + x.shape[1:]), 'label': y.reshape(n, -1)})
             for x, y in batches]

  def run(i):
    state[0], metrics = step(state[0], sharded[i % len(sharded)], {})
    jax.block_until_ready(metrics)

  return run


def _torch_runner(batches):
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(_THREADS.value)
  model = torchvision.models.resnet18(num_classes=10)
  model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
  model.maxpool = torch.nn.Identity()
  model = model.to(memory_format=torch.channels_last).train()
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
  loss_fn = torch.nn.CrossEntropyLoss()
  data = [(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(memory_format=torch.channels_last),
           torch.from_numpy(y.astype('int64'))) for x, y in batches]

  def run(i):
    x, y = data[i % len(data)]
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    float(loss)

  return run


def main(argv):
  del argv
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={_DEVICES.value}').strip()
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  batches = [(rng.normal(size=(_BATCH.value, 32, 32, 3)).astype(np.float32),
              rng.integers(0, 10, size=_BATCH.value).astype(np.int32)) for _ in range(4)]
  runners = {'jax': _jax_runner(batches), 'pytorch': _torch_runner(batches)}
  for run in runners.values():
    for i in range(_WARMUP.value):
      run(i)
  times = {name: [] for name in runners}
  for _ in range(_ROUNDS.value):
    for name, run in runners.items():
      for i in range(_STEPS.value):
        start = time.perf_counter()
        run(i)
        times[name].append(time.perf_counter() - start)
  ips = {name: _BATCH.value / float(np.mean(t)) for name, t in times.items()}
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  print(f'ResNet-18 (3x3 stem) 32x32, batch {_BATCH.value}, SGD Nesterov, fp32 training step, mean of '
        f'{_ROUNDS.value * _STEPS.value} steps each, alternating:')
  print(f'  JAX {jax.__version__} on {jax.local_device_count()} {jax.devices()[0].platform} device(s): '
        f'{ips["jax"]:.1f} img/s')
  print(f'  PyTorch {torch.__version__}, {_THREADS.value} threads, channels_last: {ips["pytorch"]:.1f} img/s')
  print(f'  JAX / PyTorch: {ips["jax"] / ips["pytorch"]:.2f}x')
  print(json.dumps({'jax_ips': ips['jax'], 'pytorch_ips': ips['pytorch'], 'ratio': ips['jax'] / ips['pytorch'],
                    'devices': _DEVICES.value, 'threads': _THREADS.value, 'batch_size': _BATCH.value}))


if __name__ == '__main__':
  app.run(main)
