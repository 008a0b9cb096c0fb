r"""How hard is each cue kind? A network given the superclass, trained on that superclass's images alone.

  python -m studies.cue_probe --superclasses=0,1,2,3,4,5,6,7,8,9 --specificity=1,10 --out=docs/results/cue_probe

For each superclass s and specificity m, the synthetic images of superclass s alone (its ``sizes[s]`` subclasses,
rendered in memory as the dataset draws them: data/render.py) train a small ResNet from random weights for --steps
(batch --batch_size, SGD with momentum, cosine schedule, horizontal flips) and its held-out top-1 is measured on
--test_per_class fresh images a subclass. At m = 1 superclass s's subclass is a grating, at m = 10 it is cue kind s:
the two rows of one superclass differ only in the kind of cue (same shape, same number of subclasses), so their
accuracies say whether specificity also changes difficulty, which the map study must avoid (its control would then
differ from its test cell in two ways). --salience=key=value,... overrides data/cues.py's SALIENCE for a trial.

--learner=flat probes as the map study's learner meets the cues instead: one network trained on every superclass's
images at once (all sum(sizes) subclasses, as the flat network), measured per superclass given the true superclass
(the argmax over that superclass's subclasses alone, the map's "flat, superclass given"). A kind that a network given
one superclass learns may still drown among the other nine kinds every image carries (dataset 2.1.0: the glyph 0.85
alone, 0.59 in a wide flat network), so this is the learner the issue's calibration names:

  python -m studies.cue_probe --learner=flat --width=0.25 --steps=2400 --batch_size=128 --specificity=1,10 \
      --zero_init_residual=false --learning_rate=0.2 --weight_decay=5e-4 --out=docs/results/cue_probe_flat

(the flat recipe's optimiser, configs/synthetic_scratch.py, and the map's base budget; flips, not its crops).
"""

from __future__ import annotations

import functools
import time

from absl import app
from absl import flags
import numpy as np

from studies import common

_SUPERCLASSES = flags.DEFINE_list('superclasses', [str(s) for s in range(10)], 'Superclasses to probe.')
_SPECIFICITY = flags.DEFINE_list('specificity', ['1', '10'], 'Specificities to probe each superclass at.')
_SIZES = flags.DEFINE_list('sizes', ['12', '6', '4', '3', '3', '2', '2', '2', '2', '2'], 'Subclasses per superclass.')
_TRAIN = flags.DEFINE_integer('train_per_class', 300, 'Training images a subclass.')
_TEST = flags.DEFINE_integer('test_per_class', 100, 'Held-out images a subclass.')
_STEPS = flags.DEFINE_integer('steps', 300, 'Training steps.')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Batch size.')
_WIDTH = flags.DEFINE_float('width', 0.5, 'resnet_small width multiplier.')
_LR = flags.DEFINE_float('learning_rate', 0.1, 'Peak learning rate.')
_WARMUP = flags.DEFINE_integer('warmup_steps', 20, 'Linear warm-up steps.')
_WEIGHT_DECAY = flags.DEFINE_float('weight_decay', 0.0, 'Weight decay of the kernels (the recipe: 5e-4).')
_ZERO_INIT = flags.DEFINE_bool('zero_init_residual', True, "Each residual block's last BatchNorm scale starts at 0 "
                               '(the models\' default; the flat recipe, configs/synthetic_scratch.py, turns it off: '
                               'on, the network sat near chance for hundreds of steps, docs/results/plateau.md).')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'Seeds (data and initialisation).')
_SALIENCE = flags.DEFINE_list('salience', [], 'Overrides of the --base_salience, key=value.')
_BASE_SALIENCE = flags.DEFINE_enum('base_salience', 'current', ['current', '2.2.0', '2.1.0'],
                                   "The salience the overrides start from: the dataset's (data/cues.py SALIENCE) or "
                                   "an earlier version's (SALIENCE_2_2_0, SALIENCE_2_1_0).")
_LEARNER = flags.DEFINE_enum('learner', 'alone', ['alone', 'flat'], "alone: one network per superclass, on its "
                              "images alone; flat: one network on every superclass's images (module docstring).")
_OUT = flags.DEFINE_string('out', '', 'Output path prefix (.json, .md); empty: print only.')


def images(superclass: int | None, sizes, m: int, per_class: int, seed: int, salience: dict):
  """(uint8 [n * per_class, 32, 32, 3], labels int32 [n * per_class]) of superclass ``superclass`` alone (local
  labels, n = sizes[superclass]), or of every superclass (None: global labels, n = sum(sizes))."""
  from supersub_jax.data import render  # pylint: disable=g-import-not-at-top
  if superclass is None:
    labels = np.repeat(np.arange(int(np.sum(sizes))), per_class)
    return render.render(labels, sizes, 32, np.random.default_rng(seed), m, salience), labels.astype(np.int32)
  offset = int(np.sum(sizes[:superclass]))
  local = np.repeat(np.arange(sizes[superclass]), per_class)
  return render.render(offset + local, sizes, 32, np.random.default_rng(seed), m, salience), local.astype(np.int32)


def probe(superclass: int | None, m: int, seed: int, sizes, salience: dict) -> tuple[np.ndarray, np.ndarray]:
  """Held-out logits (float32 [N, n]) and labels (int32 [N]) of a network trained at specificity ``m`` on superclass
  ``superclass``'s images (None: every superclass's, ``images``)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from supersub_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from supersub_jax import models  # pylint: disable=g-import-not-at-top
  from supersub_jax import step as step_lib  # pylint: disable=g-import-not-at-top
  from supersub_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  n = int(np.sum(sizes)) if superclass is None else sizes[superclass]
  train_x, train_y = images(superclass, sizes, m, _TRAIN.value, 2 * seed, salience)
  test_x, test_y = images(superclass, sizes, m, _TEST.value, 2 * seed + 1, salience)
  stats = pipeline.DATASET_STATS['synthetic']
  mean, std = np.asarray(stats.mean, np.float32), np.asarray(stats.std, np.float32)
  model = models.create_model('resnet_small', n, stem='small', width=_WIDTH.value,
                               zero_init_residual=_ZERO_INIT.value)
  variables = models.init_variables(model, jax.random.key(seed), (32, 32, 3))
  # The recipe's optimiser (SGD, Nesterov momentum 0.9, warm-up then cosine, kernels decayed), its knobs from the flags.
  tx = step_lib.make_optimizer(config_lib.optimizer_config(
      learning_rate=_LR.value, warmup_steps=_WARMUP.value, weight_decay=_WEIGHT_DECAY.value), _STEPS.value)
  params, batch_stats = variables['params'], variables['batch_stats']
  opt = tx.init(params)

  @jax.jit
  def step(params, batch_stats, opt, x, y):
    def loss_fn(p):
      logits, updates = model.apply({'params': p, 'batch_stats': batch_stats}, x, train=True,
                                    mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates['batch_stats']
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), new_stats, opt, loss

  @functools.partial(jax.jit)
  def predict(params, batch_stats, x):
    return model.apply({'params': params, 'batch_stats': batch_stats}, x, train=False).astype(jnp.float32)

  rng = np.random.default_rng(seed)
  for _ in range(_STEPS.value):
    idx = rng.integers(0, len(train_x), _BATCH.value)
    x = train_x[idx].astype(np.float32) / 255.0
    flip = rng.random(len(idx)) < 0.5
    x[flip] = x[flip, :, ::-1]
    params, batch_stats, opt, _ = step(params, batch_stats, opt, (x - mean) / std, train_y[idx])
  logits = [np.asarray(predict(params, batch_stats, (test_x[i:i + 256].astype(np.float32) / 255.0 - mean) / std))
            for i in range(0, len(test_x), 256)]
  return np.concatenate(logits), test_y


def probe_alone(superclass: int, m: int, seed: int, sizes, salience: dict) -> float:
  """Held-out top-1 of a network trained on superclass ``superclass``'s images alone."""
  logits, labels = probe(superclass, m, seed, sizes, salience)
  return float(np.mean(np.argmax(logits, -1) == labels))


def main(argv):
  del argv
  from supersub_jax.data import cues  # pylint: disable=g-import-not-at-top
  sizes = tuple(int(n) for n in _SIZES.value)
  salience = {k: float(v) for k, v in (kv.split('=') for kv in _SALIENCE.value)}
  unknown = set(salience) - set(cues.SALIENCE)
  if unknown:
    raise SystemExit(f'--salience: unknown keys {sorted(unknown)}; known: {sorted(cues.SALIENCE)}')
  salience = {**{'current': cues.SALIENCE, '2.2.0': cues.SALIENCE_2_2_0, '2.1.0': cues.SALIENCE_2_1_0}[
      _BASE_SALIENCE.value], **salience}
  superclasses = [int(x) for x in _SUPERCLASSES.value]
  accuracy = {}  # (superclass, m) -> per-seed top-1
  level = {}  # (m, seed) -> superclass_level, the flat learner's
  for m in (int(x) for x in _SPECIFICITY.value):
    if _LEARNER.value == 'flat':
      start = time.perf_counter()
      per_seed = []
      for seed in _SEEDS.value:
        logits, labels = probe(None, m, int(seed), sizes, salience)
        per_seed.append(common.given_superclass(logits, labels, sizes))
        level[m, seed] = common.superclass_level(logits, labels, sizes)
        print(f"m={m}, seed {seed}: superclass top-1 {level[m, seed]['top1']:.3f} (per superclass "
              f"{' '.join(f'{a:.2f}' for a in level[m, seed]['per_superclass'])}), "
              f"{level[m, seed]['partner_share']:.0%} of its errors the morph partner", flush=True)
      for s in superclasses:
        accuracy[s, m] = [seed_accs[s] for seed_accs in per_seed]
      print(f'm={m}: a flat network on every superclass in {time.perf_counter() - start:.0f} s', flush=True)
    else:
      for s in superclasses:
        start = time.perf_counter()
        accuracy[s, m] = [probe_alone(s, m, int(seed), sizes, salience) for seed in _SEEDS.value]
        print(f'superclass {s}, m={m}: alone in {time.perf_counter() - start:.0f} s', flush=True)
  rows = []
  for s in superclasses:
    for m in (int(x) for x in _SPECIFICITY.value):
      accs = accuracy[s, m]
      kind = cues.CUE_KINDS[s % m] if m else 'grating'
      rows.append({'superclass': s, 'subclasses': sizes[s], 'specificity': m, 'kind': kind,
                   'top1': float(np.mean(accs)), 'per_seed': accs, 'chance': 1 / sizes[s]})
      print(f'superclass {s} ({sizes[s]} subclasses), m={m} ({kind}): top-1 {np.mean(accs):.3f} '
            f'(chance {1 / sizes[s]:.3f})', flush=True)
  learner = ("trained on one superclass's images alone" if _LEARNER.value == 'alone' else
             'trained on every superclass\'s images (the flat network), given the true superclass')
  lines = [f'Held-out top-1 of resnet_small (width {_WIDTH.value:g}, zero_init_residual={_ZERO_INIT.value}) '
           f'{learner}, {_STEPS.value} steps at batch {_BATCH.value} (peak learning rate {_LR.value:g}, weight decay '
           f'{_WEIGHT_DECAY.value:g}), {_TRAIN.value} training images a subclass, seeds '
           f'{",".join(_SEEDS.value)}; salience {salience}:', '',
           '| superclass | subclasses | chance | ' + ' | '.join(f'm={m}' for m in _SPECIFICITY.value) + ' |',
           '|---' * (3 + len(_SPECIFICITY.value)) + '|']
  for s in sorted({r['superclass'] for r in rows}):
    mine = {r['specificity']: r for r in rows if r['superclass'] == s}
    lines.append(f'| {s} | {sizes[s]} | {1 / sizes[s]:.3f} | ' + ' | '.join(
        f"{mine[int(m)]['kind']} {mine[int(m)]['top1']:.3f}" for m in _SPECIFICITY.value) + ' |')
  for (m, seed), v in level.items():
    lines += ['', f"The flat network's superclass (the most summed subclass probability), m={m}, seed {seed}: top-1 "
              f"{v['top1']:.3f}, per superclass {' '.join(f'{a:.2f}' for a in v['per_superclass'])}; "
              f"{v['partner_share']:.0%} of its errors name the morph partner."]
  print('\n'.join(lines))
  if _OUT.value:
    common.write_results(_OUT.value, {'rows': rows, 'salience': salience,
                                      'steps': _STEPS.value, 'width': _WIDTH.value,
                                      'learner': _LEARNER.value, 'learning_rate': _LR.value,
                                      'weight_decay': _WEIGHT_DECAY.value,
                                      'zero_init_residual': _ZERO_INIT.value,
                                      'superclass_level': [dict(specificity=m, seed=seed, **v)
                                                           for (m, seed), v in level.items()]},
                         '\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
