"""Checkpoint conversion: a trained workdir to deployable files.

* ``bundle``: one msgpack file with everything two-stage inference needs -- the generalist's variables, every
  specialist's compressed delta, head and BatchNorm statistics, and the hierarchy -- and nothing it does not (no
  optimizer state, no dense specialist). ``load_bundle`` reads it back; ``inference.build_supersub`` takes it.
* ``dense``: one specialist materialized as an ordinary dense classifier (``{'params', 'batch_stats'}`` of the same
  ResNet with its ``n_k``-way head), for use without this package's inference code.

  python -m supersub_jax.convert --config=configs/synthetic.py --workdir=runs/demo --to=bundle --out=supersub.msgpack
  python -m supersub_jax.convert --config=configs/synthetic.py --workdir=runs/demo --to=dense --superclass=0 \
      --out=specialist0.msgpack
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from flax import serialization

from supersub_jax import delta as delta_lib
from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax import specialists
from supersub_jax import stages

BUNDLE_FORMAT = 'supersub_jax.bundle/1'
DENSE_FORMAT = 'supersub_jax.dense_specialist/1'


def _write(path: str, tree: Any) -> int:
  """Atomic write of a msgpack file; returns its size in bytes."""
  data = serialization.msgpack_serialize(tree)
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)
  return len(data)


def _read(path: str, expected_format: str, to: str) -> dict:
  with open(path, 'rb') as f:
    tree = serialization.msgpack_restore(f.read())
  found = tree.get('format') if isinstance(tree, dict) else None
  if found != expected_format:
    raise ValueError(f'{path} is not a {expected_format} file (format {found!r}); write it with '
                     f'`python -m supersub_jax.convert --to={to}`.')
  return tree


def make_bundle(config, workdir: str) -> dict:
  """The inference bundle of a trained workdir, as a pytree of numpy arrays and strings."""
  hierarchy = stages.make_hierarchy(config)
  generalist = stages.load_network(config, workdir, 'superclass', hierarchy)
  exported = [specialists.load_exported(config, workdir, k, hierarchy) for k in range(hierarchy.num_superclasses)]
  return {'format': BUNDLE_FORMAT, 'hierarchy': json.dumps(hierarchy.to_dict()),
          'model': {'name': config.model, 'stem': config.stem, 'width': config.width,
                    'image_size': config.image_size},
          'generalist': {'params': generalist.params, 'batch_stats': generalist.batch_stats},
          'specialists': {str(k): e for k, e in enumerate(exported)}}


def load_bundle(path: str) -> tuple[dict, list[dict], hierarchy_lib.Hierarchy, dict]:
  """-> (generalist variables, exported specialists in superclass order, hierarchy, model description)."""
  tree = _read(path, BUNDLE_FORMAT, 'bundle')
  hierarchy = hierarchy_lib.Hierarchy.from_dict(json.loads(tree['hierarchy']))
  exported = [tree['specialists'][str(k)] for k in range(hierarchy.num_superclasses)]
  return tree['generalist'], exported, hierarchy, tree['model']


def dense_specialist(config, workdir: str, k: int) -> dict:
  """Specialist ``k`` as dense ``{'params', 'batch_stats'}`` of the ResNet with an ``n_k``-way head."""
  hierarchy = stages.make_hierarchy(config)
  generalist = stages.load_network(config, workdir, 'superclass', hierarchy)
  exported = specialists.load_exported(config, workdir, k, hierarchy)
  base, _ = specialists.split_head(generalist.params)
  params = jax.tree.map(np.asarray, delta_lib.materialize_compressed(base, exported['delta']))
  params['head'] = exported['head']
  return {'params': params, 'batch_stats': exported['batch_stats']}


def main(argv=None) -> None:
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('workdir', None, 'A trained workdir.', required=True)
  flags.DEFINE_enum('to', 'bundle', ['bundle', 'dense'], 'What to write.')
  flags.DEFINE_integer('superclass', 0, "With --to=dense: which specialist.")
  flags.DEFINE_string('out', None, 'Output file.', required=True)
  config_flags.DEFINE_config_file('config', None, 'The config the workdir was trained with.')

  def run(_):
    from absl import logging  # pylint: disable=g-import-not-at-top
    f = flags.FLAGS
    if not f['verbosity'].present:  # orbax logs every restore at INFO
      logging.set_verbosity(logging.WARNING)
    if f.to == 'bundle':
      tree = make_bundle(f.config, f.workdir)
      size = _write(f.out, tree)
      print(f'wrote {f.out}: {size:,} bytes (generalist + {len(tree["specialists"])} compressed specialists)')
    else:
      tree = {'format': DENSE_FORMAT, **dense_specialist(f.config, f.workdir, f.superclass)}
      size = _write(f.out, tree)
      print(f'wrote {f.out}: {size:,} bytes (dense specialist {f.superclass})')

  app.run(run, argv=argv)


def load_dense(path: str) -> dict:
  tree = _read(path, DENSE_FORMAT, 'dense')
  return {'params': tree['params'], 'batch_stats': tree['batch_stats']}


if __name__ == '__main__':
  main()
