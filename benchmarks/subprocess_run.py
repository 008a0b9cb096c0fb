"""A measurement in a fresh Python process: what must be set before jax is imported (the number of XLA host
devices, the visible GPUs) needs a process of its own. ``in_subprocess('benchmarks.x.f', kwargs, devices=2)`` runs
``benchmarks.x.f(**kwargs)`` in a child (this module run as a program) and returns its JSON result."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Mapping


def in_subprocess(function: str, kwargs: Mapping[str, Any] | None = None, *, devices: int | None = None,
                  env: Mapping[str, str] | None = None, timeout: float | None = None) -> Any:
  """``module.function(**kwargs)`` in a fresh Python process; returns its JSON result.

  What a measurement must set before jax is imported -- the number of XLA host devices, the visible GPUs -- needs a
  process of its own. Arguments and the result travel as JSON files, not through the child's output, which stays
  the child's own (its progress lines are shown as they come).

  Args:
    function: 'package.module.function', importable from the current directory (run from the repository root,
      e.g. ``python -m benchmarks.scaling``).
    kwargs: JSON-serialisable keyword arguments.
    devices: on a CPU host, the number of XLA host devices of the child (GPU hosts: the visible GPUs).
    env: extra environment variables of the child.
  Raises RuntimeError naming the function and its exit status when the child fails.
  """
  child_env = dict(os.environ, **(env or {}))
  if devices is not None:
    if 'cuda' in child_env.get('JAX_PLATFORMS', '') or os.path.exists('/dev/nvidia0'):
      child_env['CUDA_VISIBLE_DEVICES'] = ','.join(str(i) for i in range(devices))
    else:
      child_env['XLA_FLAGS'] = (f"{child_env.get('XLA_FLAGS', '')} "
                                f'--xla_force_host_platform_device_count={devices}').strip()
  with tempfile.TemporaryDirectory() as tmp:
    args, out = os.path.join(tmp, 'args.json'), os.path.join(tmp, 'result.json')
    with open(args, 'w') as f:
      json.dump(dict(kwargs or {}), f)
    proc = subprocess.run([sys.executable, '-m', 'benchmarks.subprocess_run', function, args, out], env=child_env,
                          timeout=timeout, check=False)
    if proc.returncode or not os.path.exists(out):
      raise RuntimeError(f'{function} failed in its subprocess (exit status {proc.returncode}); its output is above.')
    with open(out) as f:
      return json.load(f)


def _child_main(function: str, args_path: str, out_path: str) -> None:
  module, name = function.rsplit('.', 1)
  with open(args_path) as f:
    kwargs = json.load(f)
  result = getattr(importlib.import_module(module), name)(**kwargs)
  with open(out_path, 'w') as f:
    json.dump(result, f)


if __name__ == '__main__':
  _child_main(*sys.argv[1:])
