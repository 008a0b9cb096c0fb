"""One ResNet convolution's forward pass and both gradients: XLA's own against ``cpu_conv.conv_general_dilated``.

  python -m benchmarks.conv                                   # ResNet-18's 3x3 64->64 at 32x32, batch 128
  python -m benchmarks.conv --torch                           # and PyTorch's (optional extra), same shapes
  python -m benchmarks.conv --channels=256 --size=8 --stride=2

Times, alternating in one process, the mean of --repeats calls after one warm-up call, each under its own jit:
``fwd`` the convolution; ``dx`` the input gradient; ``dk`` the kernel gradient, by ``jax.lax``'s transpose (``xla``)
and by ``cpu_conv.conv_general_dilated`` (``ours``: one matmul per kernel tap on CPU; on other platforms the same
transpose as ``xla``). Operands are random, NHWC/HWIO, float32. With --torch, PyTorch's ``conv2d`` forward and
forward + backward (both gradients) in channels_last with --threads threads. Prints a table and JSON.
"""

import json

from absl import app
from absl import flags

_BATCH = flags.DEFINE_integer('batch_size', 128, 'Batch.')
_SIZE = flags.DEFINE_integer('size', 32, 'Input height and width.')
_CHANNELS = flags.DEFINE_integer('channels', 64, 'Input and output channels.')
_KERNEL = flags.DEFINE_integer('kernel', 3, 'Kernel height and width.')
_STRIDE = flags.DEFINE_integer('stride', 1, 'Stride.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls of each.')
_TORCH = flags.DEFINE_bool('torch', False, 'Also time PyTorch (needs torch).')
_THREADS = flags.DEFINE_integer('threads', 2, 'PyTorch intra-op threads.')


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from supersub_jax import cpu_conv, measure  # pylint: disable=g-import-not-at-top

  b, s, c, k, stride = _BATCH.value, _SIZE.value, _CHANNELS.value, _KERNEL.value, _STRIDE.value
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(b, s, s, c)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, c, c)) * 0.05, jnp.float32)
  padding = ((k // 2, k // 2),) * 2
  dn = ('NHWC', 'HWIO', 'NHWC')

  def loss(conv, x_, k_, g_):
    return (conv(x_, k_, (stride, stride), padding, dimension_numbers=dn) * g_).sum()

  g = jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=dn)
  flops = 2 * g.size * c * k * k
  calls = {
      'fwd': jax.jit(lambda x_, k_, g_: jax.lax.conv_general_dilated(x_, k_, (stride, stride), padding,
                                                                      dimension_numbers=dn)),
      'dx': jax.jit(jax.grad(lambda *a: loss(jax.lax.conv_general_dilated, *a), 0)),
      'dk xla': jax.jit(jax.grad(lambda *a: loss(jax.lax.conv_general_dilated, *a), 1)),
      'dk ours': jax.jit(jax.grad(lambda *a: loss(cpu_conv.conv_general_dilated, *a), 1)),
  }
  timing = measure.time_calls({name: (lambda i, f=f: f(x, kernel, g)) for name, f in calls.items()}, _REPEATS.value)
  rows = {name: t.mean for name, t in timing.items()}
  if _TORCH.value:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(_THREADS.value)
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).contiguous(
        memory_format=torch.channels_last).requires_grad_(True)
    kt = torch.from_numpy(np.asarray(kernel).transpose(3, 2, 0, 1).copy()).requires_grad_(True)
    gt = torch.from_numpy(np.asarray(g).transpose(0, 3, 1, 2).copy()).contiguous(memory_format=torch.channels_last)
    conv = lambda: torch.nn.functional.conv2d(xt, kt, stride=stride, padding=k // 2)

    def fwd():
      with torch.no_grad():
        conv()

    def fwd_bwd():
      xt.grad = kt.grad = None
      (conv() * gt).sum().backward()

    timing = measure.time_calls({'torch fwd': lambda i: fwd(), 'torch fwd+dx+dk': lambda i: fwd_bwd()}, _REPEATS.value)
    rows.update({name: t.mean for name, t in timing.items()})
  print(f'{k}x{k} conv {c}->{c}, stride {stride}, input [{b}, {s}, {s}, {c}], float32, on '
        f'{jax.devices()[0].device_kind} ({flops / 1e9:.2f} GFLOP per pass)')
  print('| call | ms | GFLOP/s |\n|---|---|---|')
  for name, seconds in rows.items():
    passes = 3 if name == 'torch fwd+dx+dk' else 1
    print(f'| {name} | {1e3 * seconds:,.1f} | {passes * flops / seconds / 1e9:,.1f} |')
  print(json.dumps({'shape': [b, s, s, c], 'kernel': k, 'stride': stride, 'gflop': flops / 1e9,
                    'device': jax.devices()[0].device_kind, 'seconds': rows}))


if __name__ == '__main__':
  app.run(main)
