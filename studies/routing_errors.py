r"""Where Super-Sub loses to the compute-matched flat network: on the images the generalist routes right, or wrong.

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m studies.routing_errors \
      --workdirs=runs/seeds/seed0,runs/seeds/seed1,runs/seeds/seed2 --out=docs/results/routing_errors

Needs finished workdirs with the `vanilla_matched` stage (e.g. `studies/seeds.py`'s). For each, the test split
is cut by the generalist's route; on each part, Super-Sub's and the flat network's top-1. Their gap splits exactly
into (share routed right) x (gap there) + (share misrouted) x (gap there): the first is what the specialists add,
the second what routing errors cost. Also: how often each network's prediction lies in the true superclass, and the
share of routing errors that go to the one superclass each true superclass is most often mistaken for. Writes
<out>.json and <out>.md.
"""

import os

from absl import app
from absl import flags

from studies import common
import numpy as np


_WORKDIRS = flags.DEFINE_list('workdirs', None, 'Finished workdirs with a vanilla_matched stage.', required=True)
_OUT = flags.DEFINE_string('out', '', 'Output path prefix (.json, .md); empty: print only.')

COLUMNS = (('routing', 'generalist superclass top-1'),
           ('flat_superclass', "flat network: its prediction's superclass right"),
           ('top_confusion', 'routing errors into the most-confused superclass'),
           ('supersub_routed_right', 'Super-Sub top-1, routed right'), ('flat_routed_right', 'flat top-1, same images'),
           ('supersub_misrouted', 'Super-Sub top-1, misrouted'), ('flat_misrouted', 'flat top-1, same images'),
           ('gain_routed_right', 'gain from the specialists (points)'),
           ('loss_misrouted', 'cost of routing errors (points)'), ('supersub_minus_flat', 'Super-Sub - flat (points)'))


def decompose(subclass, superclass, route, supersub, flat, label_to_superclass) -> dict:
  """The split of Super-Sub minus the flat network by route, from int arrays [M] of labels and predictions."""
  from supersub_jax.report import accuracy, confusion_matrix  # pylint: disable=g-import-not-at-top
  right = route == superclass
  share = float(right.mean())

  def top1(pred, sel):
    return accuracy(pred[sel], subclass[sel])

  confusion = confusion_matrix(route[~right], superclass[~right], len(np.unique(label_to_superclass)))
  out = {'images': int(subclass.size), 'misrouted': int((~right).sum()), 'routing': share,
         'flat_superclass': accuracy(label_to_superclass[flat], superclass),
         'top_confusion': float(confusion.max(1).sum() / max(confusion.sum(), 1)),
         'supersub_routed_right': top1(supersub, right), 'flat_routed_right': top1(flat, right),
         'supersub_misrouted': top1(supersub, ~right), 'flat_misrouted': top1(flat, ~right)}
  # nan (no misrouted image) contributes nothing: that share is 0.
  out['gain_routed_right'] = share * (out['supersub_routed_right'] - out['flat_routed_right'])
  out['loss_misrouted'] = float(np.nan_to_num((1 - share) * (out['supersub_misrouted'] - out['flat_misrouted'])))
  out['supersub_minus_flat'] = accuracy(supersub, subclass) - accuracy(flat, subclass)
  return out


def markdown(rows: dict[str, dict]) -> str:
  names = list(rows)
  lines = ['| | ' + ' | '.join(os.path.basename(n) for n in names) + (' | mean |' if len(names) > 1 else ' |'),
           '|---|' + '---|' * (len(names) + (len(names) > 1))]
  for key, label in COLUMNS:
    values = [rows[n][key] for n in names] + ([np.mean([rows[n][key] for n in names])] if len(names) > 1 else [])
    lines.append(f'| {label} | ' + ' | '.join(f'{100 * v:+.2f}' if 'points' in label else f'{100 * v:.2f}%'
                                               for v in values) + ' |')
  lines.append('| misrouted images | ' + ' | '.join(f"{rows[n]['misrouted']} of {rows[n]['images']}" for n in names)
               + (' | |' if len(names) > 1 else ' |'))
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  from supersub_jax import checkpoint as ckpt  # pylint: disable=g-import-not-at-top
  from supersub_jax import config as config_lib, evaluation, inference, setup_of  # pylint: disable=g-import-not-at-top
  from supersub_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  rows = {}
  for workdir in (ckpt.abs_path(w) for w in _WORKDIRS.value):
    config = config_lib.read(workdir)
    if 'vanilla_matched' not in config.stages:
      raise ValueError(f'{workdir} has no vanilla_matched stage: train it first (studies/seeds.py does, or add '
                       "'vanilla_matched' to --config.stages of train.py).")
    t = workdir_lib.load_trained(config, workdir, setup_of.build(config))
    p = evaluation.collect_predictions(
        config, workdir, t.hierarchy, t.vanilla, t.state, t.generalist.model, t.specialist_model,
        threshold=float(config.evaluate.top2_threshold), paths=inference.path_settings(config.evaluate),
        vanilla_matched=t.vanilla_matched)
    rows[workdir] = decompose(p['subclass'], p['superclass'], p['generalist'], p['supersub'], p['vanilla_matched'],
                              np.asarray(t.hierarchy.label_to_superclass))
    print(f"{workdir}: Super-Sub - flat {100 * rows[workdir]['supersub_minus_flat']:+.2f} points", flush=True)
  text = markdown(rows)
  if _OUT.value:
    common.write_results(_OUT.value, rows, text)
  print(text)


if __name__ == '__main__':
  app.run(main)
