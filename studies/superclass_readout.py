r"""How well does the flat base network already read the superclass? Its subclass head, pooled three ways.

  python -m studies.superclass_readout --workdir=runs/map --specificity=1,10 --widths=0.25,1.0 \
      --out=docs/results/superclass_readout

(after ``python -m studies.map --workdir=runs/map ...`` has trained the cells' base networks). In the converged
regime Super-Sub's generalist starts from the base network's backbone with a new head of one output per superclass,
and gets a quarter of Super-Sub's extra steps; the base network, which both arms start from, already scores every
subclass. Pooled per superclass, its logits give a router before any step: ``logsumexp`` (the log of the summed
subclass probabilities: the flat network's own superclass), ``max`` (its best subclass) and ``mean + log n`` (the
mean logit plus the log of the superclass's subclass count: the closest a linear head of one output per superclass
can start to the logsumexp, equal to it where a superclass's subclasses score alike). Each is measured on
--per_class fresh images a subclass (rendered in memory as the dataset draws them, seed --seed: none of them in the
base's training split), overall and on the superclasses of the fewest subclasses, the ones a generalist trained on
imbalanced superclass labels routes worst.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from studies import common

_WORKDIR = flags.DEFINE_string('workdir', None, 'The map study\'s --workdir (its base networks).', required=True)
_SPECIFICITY = flags.DEFINE_list('specificity', ['1', '10'], 'synthetic.specificity of the cells.')
_WIDTHS = flags.DEFINE_list('widths', ['0.25', '1.0'], 'config.width of the cells.')
_BASES = flags.DEFINE_list('bases', ['0'], 'Base networks per cell.')
_PER_CLASS = flags.DEFINE_integer('per_class', 100, 'Fresh held-out images a subclass.')
_SEED = flags.DEFINE_integer('seed', 12345, 'Seed of the fresh images.')
_OUT = flags.DEFINE_string('out', '', 'Output path prefix (.json, .md); empty: print only.')
_BASE_CONFIG = config_flags.DEFINE_config_file('base_config', 'configs/synthetic_scratch.py', "The base networks' "
                                               'recipe (their architecture), as studies/map.py\'s.', lock_config=False)

SIZES = (12, 6, 4, 3, 3, 2, 2, 2, 2, 2)


def base_logits(m: int, width: float, base: int) -> tuple[np.ndarray, np.ndarray]:
  """The cell's base network's logits (float32 [N, sum(SIZES)]) on fresh images, and their labels (int [N])."""
  import jax  # pylint: disable=g-import-not-at-top
  from supersub_jax import setup_of, weights  # pylint: disable=g-import-not-at-top
  from supersub_jax.data import pipeline, render, synthetic  # pylint: disable=g-import-not-at-top
  # studies/map.py's cell_dir and cell_config (importing it would define its flags, which share these names).
  path = os.path.join(os.path.abspath(_WORKDIR.value), f'v{synthetic.VERSION}', f'm{m}_w{width:g}', f'base{base}',
                      'base.safetensors')
  if not os.path.exists(path):
    raise SystemExit(f'{path} does not exist: train the cell\'s base network first (python -m studies.map '
                     f'--workdir={_WORKDIR.value} --specificity={m} --widths={width:g} --bases={base}).')
  config = _BASE_CONFIG.value.copy_and_resolve_references()
  config.synthetic.specificity, config.width = m, width
  model = setup_of.make_model(config, sum(SIZES))
  variables = weights.load_network(path, 'torchvision', model)
  labels = np.repeat(np.arange(sum(SIZES)), _PER_CLASS.value)
  images = render.render(labels, SIZES, 32, np.random.default_rng(_SEED.value), m)
  stats = pipeline.DATASET_STATS['synthetic']
  mean, std = np.asarray(stats.mean, np.float32), np.asarray(stats.std, np.float32)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  logits = [np.asarray(apply(variables, (images[i:i + 256].astype(np.float32) / 255.0 - mean) / std), np.float32)
            for i in range(0, len(images), 256)]
  return np.concatenate(logits), labels


def main(argv):
  del argv
  label_to_superclass = np.repeat(np.arange(len(SIZES)), SIZES)
  fewest = [s for s, n in enumerate(SIZES) if n == min(SIZES)]
  rows = []
  for m in (int(x) for x in _SPECIFICITY.value):
    for width in (float(w) for w in _WIDTHS.value):
      for base in (int(b) for b in _BASES.value):
        logits, labels = base_logits(m, width, base)
        true = label_to_superclass[labels]
        small = np.isin(true, fewest)
        for name, scores in common.superclass_readouts(logits, SIZES).items():
          pred = scores.argmax(-1)
          rows.append({'specificity': m, 'width': width, 'base': base, 'readout': name,
                       'top1': float(np.mean(pred == true)), 'fewest_top1': float(np.mean(pred[small] == true[small]))})
          print(f"m={m} w={width:g} base {base}, {name}: superclass top-1 {rows[-1]['top1']:.3f}, on the "
                f"{min(SIZES)}-subclass superclasses {rows[-1]['fewest_top1']:.3f}", flush=True)
  lines = [f'The base network\'s subclass head read as a superclass router, {_PER_CLASS.value} fresh images a '
           f'subclass (seed {_SEED.value}): superclass top-1, and on the {len(fewest)} superclasses of '
           f'{min(SIZES)} subclasses:', '',
           '| specificity m | width | base | readout | superclass top-1 | on the smallest superclasses |',
           '|---|---|---|---|---|---|']
  lines += [f"| {r['specificity']} | {r['width']:g} | {r['base']} | {r['readout']} | {r['top1']:.3f} | "
            f"{r['fewest_top1']:.3f} |" for r in rows]
  print('\n'.join(lines))
  if _OUT.value:
    common.write_results(_OUT.value, {'rows': rows, 'per_class': _PER_CLASS.value, 'seed': _SEED.value},
                         '\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
