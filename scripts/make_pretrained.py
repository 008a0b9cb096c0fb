r"""Makes a pretrained flat network of the synthetic data: its flat recipe trained until more steps stop paying.

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python scripts/make_pretrained.py \
      --workdir=runs/pretrain --start_steps=2400 --output=supersub_jax/resources/pretrained/synthetic_resnet_small

Trains the vanilla stage of configs/synthetic_scratch.py (random start, the flat recipe) for --start_steps, then
twice as many, and so on, each budget in its own workdir ``<workdir>/T<steps>`` (a cosine schedule depends on its
budget), until doubling the steps gains less than --min_gain of held-out top-1. The last budget before that doubling
is the converged network: it is exported (``convert.export_network``) as ``<output>.safetensors`` in torchvision's
layout, and ``<output>.json`` records what it is: the command, the steps and seed, every budget's top-1, the
training split's fingerprint (``data.synthetic.fingerprint``), the file's SHA-256, the versions and the machine.
configs/synthetic.py starts from it (``config.init``); tests/test_pretrained.py checks the record against the file
and the data, and (``-m reproduce``) that this command makes the same network.

Rerunning reuses finished budgets. --steps=T trains exactly one budget T (no ladder) and writes it. The start of
`make demo` (configs/synthetic_m10.py) is the base network of the map's cell specificity 10, width 1.0, base 0
(studies/map.py: seed 1000 + base, 2,400 steps), which this command makes bit for bit:

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python scripts/make_pretrained.py \
      --workdir=runs/pretrain_m10 --steps=2400 --seed=1000 --config.synthetic.specificity=10 \
      --output=supersub_jax/resources/pretrained/synthetic_m10_resnet_small
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'Parent of the per-budget workdirs.', required=True)
_OUTPUT = flags.DEFINE_string('output', 'supersub_jax/resources/pretrained/synthetic_resnet_small',
                              'Output path without suffix: <output>.safetensors and <output>.json.')
_START = flags.DEFINE_integer('start_steps', 2400, 'The first budget of the ladder.')
_STEPS = flags.DEFINE_integer('steps', 0, 'Train this one budget only (no ladder).')
_MAX = flags.DEFINE_integer('max_steps', 20000, 'Stop the ladder here, converged or not (the record says which).')
_GAIN = flags.DEFINE_float('min_gain', 0.003, 'Doubling gains less than this top-1: converged.')
_SEED = flags.DEFINE_integer('seed', 0, 'config.seed.')
config_flags.DEFINE_config_file('config', 'configs/synthetic_scratch.py', 'The flat recipe: its vanilla stage.',
                                lock_config=False)


def flat_config(steps: int):
  """--config's vanilla stage alone, for ``steps`` steps."""
  config = flags.FLAGS.config.copy_and_resolve_references()
  config.stages = ('vanilla',)
  config.vanilla.num_train_steps = steps
  config.seed = _SEED.value
  return config


def train(steps: int) -> tuple[object, str, float]:
  """(config, workdir, held-out top-1) of the flat network trained for ``steps`` (reused when finished)."""
  from supersub_jax import recipe  # pylint: disable=g-import-not-at-top
  config = flat_config(steps)
  workdir = os.path.join(os.path.abspath(_WORKDIR.value), f'T{steps}')
  top1 = float(recipe.run(config, workdir)['vanilla']['accuracy'])
  print(f'T = {steps}: held-out top-1 {top1:.4f}', flush=True)
  return config, workdir, top1


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore at INFO
  from supersub_jax import convert, runtime  # pylint: disable=g-import-not-at-top
  from supersub_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  runtime.initialize_runtime(flat_config(1))
  ladder = []
  if _STEPS.value:
    chosen = train(_STEPS.value)
    ladder.append({'steps': _STEPS.value, 'top1': chosen[2]})
    converged = None
  else:
    steps, previous, converged = _START.value, None, False
    while True:
      current = train(steps)
      ladder.append({'steps': steps, 'top1': current[2]})
      if previous is not None and current[2] - previous[2] < _GAIN.value:
        chosen, converged = previous, True
        break
      if 2 * steps > _MAX.value:
        chosen = current
        break
      previous, steps = current, 2 * steps
  config, workdir, top1 = chosen
  output = os.path.abspath(_OUTPUT.value)
  os.makedirs(os.path.dirname(output), exist_ok=True)
  weights_file = output + '.safetensors'
  if os.path.exists(weights_file):
    os.remove(weights_file)  # the record below is rewritten with it
  print('wrote', weights_file + ':', convert.export_network(config, workdir, 'vanilla', 'safetensors', weights_file))
  from supersub_jax import setup_of  # pylint: disable=g-import-not-at-top
  # Every knob of the data it trained on (the cue specificity too), as the pipeline itself builds it.
  builder = synthetic.build_synthetic(os.path.abspath(config.data_dir), **setup_of.dataset_kwargs(config))
  import jax  # pylint: disable=g-import-not-at-top
  config_file = config_flags.get_config_filename(flags.FLAGS['config'])
  record = {
      'what': f'the flat network (one output per subclass) of the vanilla stage of {config_file}, trained from '
              f'random weights on the synthetic training split (cue specificity {config.synthetic.specificity}, '
              f'width {config.width:g}): the config.init of the configs that start from {os.path.basename(output)}',
      'command': ' '.join(['python', 'scripts/make_pretrained.py'] + sys.argv[1:]),
      'config': config_file, 'overrides': [a for a in sys.argv[1:] if a.startswith('--config.')],
      'steps': int(config.vanilla.num_train_steps), 'seed': int(config.seed),
      'batch_size': int(config.batch_size), 'devices': jax.device_count(), 'test_top1': top1,
      'ladder': ladder, 'converged': converged, 'min_gain': _GAIN.value,
      'dataset': {'builder': builder.name, 'version': str(builder.version), 'config': builder.builder_config.name,
                  'train_fingerprint': synthetic.fingerprint(builder, 'train')},
      'sha256': hashlib.sha256(open(weights_file, 'rb').read()).hexdigest(),
      'made': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
      'jax': jax.__version__, 'machine': f'{platform.machine()}, {os.cpu_count()} cores, {jax.devices()[0].platform}',
  }
  from supersub_jax import files  # pylint: disable=g-import-not-at-top
  files.write_text(output + '.json', json.dumps(record, indent=2) + '\n')
  print('wrote', output + '.json:', json.dumps({k: record[k] for k in ('steps', 'test_top1', 'ladder', 'converged')}))


if __name__ == '__main__':
  app.run(main)
