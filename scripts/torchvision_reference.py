"""torchvision references for the weight import and export (needs torch and torchvision; never run by CI).

  python scripts/torchvision_reference.py make   # writes tests/fixtures/torchvision_{basic,bottleneck}.*
  python scripts/torchvision_reference.py check  # full-size ResNet-18/34/50: import and export against torchvision

``make`` (torch, torchvision, safetensors, numpy) builds two torchvision ResNets narrowed to 8 base channels (full
ResNets are too big to commit): the ResNet-18 layout (BasicBlock, [2, 2, 2, 2]) and the ResNet-50 layout
(Bottleneck, [3, 4, 6, 3]), both with torchvision's own modules and forward. Weights are random, BatchNorm
weights, biases and running statistics included (torchvision initialises those to 1/0/0/1, which would hide a
mapping error). For each it commits the state dict (``.safetensors``, torchvision's names and layouts) and the input
(NCHW) and eval-mode logits (``.npz``). ``tests/test_weights.py`` maps the state dict into our flax ResNet and
compares logits.

``check`` also needs this package (jax): for torchvision's resnet18/34/50 with random weights it writes the state
dict as .pth, .safetensors and .npz, imports each with ``python -m tools.convert import-torchvision``, and
prints the logits error (max |flax - torch| / max |torch|) on random 224x224 input; then exports the flax variables
back (``weights.to_torchvision``), loads them into torchvision with ``load_state_dict(strict=True)`` and prints that
error too. Numbers are recorded in docs/benchmarks.md.
"""

import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models import resnet as tv_resnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')
NARROW = {'basic': (tv_resnet.BasicBlock, [2, 2, 2, 2]), 'bottleneck': (tv_resnet.Bottleneck, [3, 4, 6, 3])}


class NarrowResNet(tv_resnet.ResNet):
  """torchvision's ResNet with every width divided by ``divisor`` (its modules and forward are torchvision's)."""

  def __init__(self, block, layers, num_classes, divisor):
    self._divisor = divisor
    self._first = True
    super().__init__(block, layers, num_classes=num_classes)
    width = 64 // divisor
    self.conv1 = torch.nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = torch.nn.BatchNorm2d(width)
    self.fc = torch.nn.Linear(512 // divisor * block.expansion, num_classes)

  def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
    if self._first:  # torchvision set inplanes = 64 for the stem
      self.inplanes, self._first = 64 // self._divisor, False
    return super()._make_layer(block, planes // self._divisor, blocks, stride, dilate)


def randomize(model, seed):
  """Random weights everywhere, BatchNorm affine parameters and running statistics included."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=g))
        module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
        module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=g))
        module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=g))
      elif isinstance(module, torch.nn.Linear):
        module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
  return model.eval()


def make():
  os.makedirs(FIXTURES, exist_ok=True)
  torch.manual_seed(0)
  for name, (block, layers) in NARROW.items():
    model = randomize(NarrowResNet(block, layers, num_classes=10, divisor=8), seed=1)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
      logits = model(images)
    stem = os.path.join(FIXTURES, f'torchvision_{name}')
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, stem + '.safetensors')
    np.savez(stem + '.npz', input_nchw=images.numpy(), logits=logits.numpy())
    print(f'{stem}.safetensors: {os.path.getsize(stem + ".safetensors"):,} bytes, '
          f'{sum(p.numel() for p in model.parameters()):,} parameters; logits {tuple(logits.shape)}')
  print(f'torch {torch.__version__}, torchvision {torchvision.__version__}')


def check():
  import jax  # pylint: disable=g-import-not-at-top
  from supersub_jax import models, weights  # pylint: disable=g-import-not-at-top
  print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, jax {jax.__version__} '
        f'({jax.devices()[0].device_kind})')
  print('| arch | file | import: max abs diff / max abs logit | export -> torchvision load_state_dict: same |')
  print('|---|---|---|---|')
  for arch in ('resnet18', 'resnet34', 'resnet50'):
    model = randomize(getattr(torchvision.models, arch)(), seed=3)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
      reference = model(images).numpy()
    state = model.state_dict()
    flax_model = models.create_model(arch, 1000, stem='imagenet')
    nhwc = images.numpy().transpose(0, 2, 3, 1)
    with tempfile.TemporaryDirectory() as tmp:
      files = {'.pth': os.path.join(tmp, f'{arch}.pth'), '.safetensors': os.path.join(tmp, f'{arch}.safetensors'),
               '.npz': os.path.join(tmp, f'{arch}.npz')}
      torch.save(state, files['.pth'])
      save_file({k: v.contiguous() for k, v in state.items()}, files['.safetensors'])
      np.savez(files['.npz'], **{k: v.numpy() for k, v in state.items()})
      for suffix, path in files.items():
        out = os.path.join(tmp, f'{arch}{suffix}.orbax')
        subprocess.run([sys.executable, '-m', 'tools.convert', 'import-torchvision', f'--arch={arch}',
                        f'--input={path}', f'--output={out}'], check=True, capture_output=True)
        variables, _ = weights.load_orbax(out)
        logits = np.asarray(flax_model.apply(variables, nhwc, train=False))
        error = np.abs(logits - reference).max() / np.abs(reference).max()
        back = getattr(torchvision.models, arch)().eval()
        back.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in
                              weights.to_torchvision(variables).items()}, strict=True)
        with torch.no_grad():
          again = back(images).numpy()
        print(f'| {arch} | {suffix} | {error:.2e} | {bool(np.array_equal(again, reference))} |', flush=True)


if __name__ == '__main__':
  {'make': make, 'check': check}[sys.argv[1] if len(sys.argv) > 1 else 'make']()
