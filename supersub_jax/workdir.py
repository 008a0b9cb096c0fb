"""What a finished run left in its workdir, read back: the trained networks, the exported specialists, and the
identities of their checkpoints. Used by evaluation (and convert); it imports no training code.

  setup = setup_of.build(config)
  trained = workdir.load_trained(config, path, setup)   # vanilla, generalist, specialists, the SuperSub state

The layout, which the stages write and this module reads: ``<workdir>/<stage>`` for each network stage (``stage_dir``)
and ``<workdir>/<stage>/<k:03d>_<superclass name>`` for each specialist (``specialist_dir``). Every loader checks
the checkpoint's recorded settings against the current config (``runner.load_finished``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import jax

from supersub_jax import cut as cut_lib
from supersub_jax import bank as bank_lib
from supersub_jax import checkpoint as ckpt
from supersub_jax import config as config_lib
from supersub_jax import exported as exported_lib
from supersub_jax import models
from supersub_jax import runner
from supersub_jax import setup_of
from supersub_jax import step as step_lib
from supersub_jax import weights

SPECIALIST_ITEMS = ('state', 'compressed', 'data', 'meta')  # a specialist checkpoint's items ('compressed': exported)


def stage_dir(workdir: str, stage: str) -> str:
  return os.path.join(ckpt.abs_path(workdir), stage)


def specialist_dir(workdir: str, hierarchy, k: int, stage: str = 'specialists') -> str:
  name = hierarchy.superclasses[k].name.replace('/', '_').replace(' ', '_')
  return os.path.join(stage_dir(workdir, stage), f'{k:03d}_{name}')


@dataclasses.dataclass
class Network:
  """A trained network of one of ``NETWORK_STAGES``, as host numpy pytrees; ``steps``: the optimizer steps it was
  trained for (its checkpoint's, which a linked or reused stage may not share with the current config)."""
  stage: str
  model: Any
  params: Any
  batch_stats: Any
  meta: dict
  steps: int


def _network_target(config, model, stage: str, image_shape):
  """The TrainState a network stage saved, as ShapeDtypeStructs (the target of its restore; the optimizer state's
  shapes do not depend on the step budget)."""
  cfg = config[config_lib.section(stage)]
  tx = step_lib.make_optimizer(cfg, int(cfg.num_train_steps))

  def build():
    variables = models.init_variables(model, jax.random.key(0), image_shape)
    return step_lib.create_train_state(variables['params'], variables['batch_stats'], tx)

  return jax.eval_shape(build)


def load_network(config, workdir: str, stage: str, setup: setup_of.Setup) -> Network:
  """The finished network of ``stage`` (``NETWORK_STAGES``; params and BatchNorm statistics, numpy), checked
  against the current settings (``runner.load_finished``)."""
  job = runner.Job(stage, stage, stage_dir(workdir, stage), 0, {'hierarchy': setup.hierarchy.to_dict()})
  model = setup.model(stage)
  restored = runner.load_finished(config, job, target=_network_target(config, model, stage, setup.image_shape))
  return Network(stage, model, restored.state.params, restored.state.batch_stats, restored.meta, int(restored.step))


def load_init_network(config, setup: setup_of.Setup) -> Network | None:
  """config.init's network as a flat classifier over the hierarchy's subclasses (its head must have M outputs), or
  None without config.init. What Super-Sub starts from when the generalist starts from config.init: its flat
  router (``decide`` 'flat' and 'mean'), paid for by no stage."""
  if not config.init.path:
    return None
  variables = weights.load_network(ckpt.abs_path(config.init.path), config.init.format, setup.flat)
  return Network('init', setup.flat, variables['params'], variables['batch_stats'], {'init': config.init.path}, 0)


def load_exported(config, workdir: str, k: int, generalist: Network, hierarchy,
                  stage: str = 'specialists') -> dict:
  """The deployable form of finished specialist ``k`` of ``stage`` (``exported.export``, with its ``'spec'``), read
  from its own checkpoint directory only, after checking that it was trained with the current settings on this
  ``generalist``."""
  if not 0 <= k < hierarchy.num_superclasses:
    raise ValueError(f'superclass {k} is outside [0, {hierarchy.num_superclasses}) of hierarchy {hierarchy.name!r}; '
                     f'`python -m tools.hierarchy {config.hierarchy}` lists them.')
  label = 'specialist' if stage == 'specialists' else stage
  meta = {'hierarchy': hierarchy.to_dict(),
          'fingerprints': {'generalist': runner.fingerprint(generalist.params, generalist.batch_stats)}}
  job = runner.Job(f'{label} {k} {hierarchy.superclasses[k].name}', stage, specialist_dir(workdir, hierarchy, k, stage),
                   0, meta, SPECIALIST_ITEMS)
  # The compressed form is self-describing (each record carries its shape): read as stored.
  restored = runner.load_finished(config, job, target=None, extra={'compressed': None})
  # Two specialists of one run with the same shapes pass every other check when their directories are swapped.
  served, name = restored.meta.get('superclass', k), restored.meta.get('name', hierarchy.superclasses[k].name)
  if served != k or name != hierarchy.superclasses[k].name:
    home = (specialist_dir(workdir, hierarchy, served, stage)
            if isinstance(served, int) and 0 <= served < hierarchy.num_superclasses else 'its own directory')
    raise ValueError(f'{job.directory} holds the specialist of superclass {served} ({name!r}), not of superclass {k} '
                     f'({hierarchy.superclasses[k].name!r}), whose place it is: move it back to {home}, or retrain '
                     'it (delete the directory and rerun train.py).')
  spec = dict(restored.meta.get('specialist') or _legacy_spec(restored.meta))
  spec['superclass'] = k
  # Specialists of before 2026-12-06 did not record it; the settings check above has matched it to the config.
  spec.setdefault('model', setup_of.model_description(config))
  return {**restored.extra['compressed'], 'spec': spec}


def _legacy_spec(meta: dict) -> dict:
  """The spec of a specialist checkpointed before specialists described themselves (spec version 1), from what its
  own metadata recorded: the config it was trained with and its stage (``head_only`` trained at the head)."""
  cfg = config_lib.default_config().specialists
  cfg.update(meta['config']['specialists'])
  if meta.get('stage') == 'head_only':
    cfg.branch = 'head'
  return exported_lib.describe(cut_lib.Cut(cfg.branch), setup_of.delta_config(cfg),
                               num_subclasses=meta['num_subclasses'],
                               density=float(meta.get('summary', {}).get('density', cfg.density)))


@dataclasses.dataclass
class Trained:
  """A finished workdir, loaded for inference: the networks, the exported specialists and the SuperSub state
  (``vanilla_matched``: the compute-matched baseline, and ``head_only``: the SuperSub state of the head-only
  specialists, when ``config.stages`` trains them). ``flat_router``: the flat network Super-Sub's pipeline started
  from (``flat_router_of``), which the 'flat' and 'mean' decision rules route by; None when there is none."""
  hierarchy: Any
  vanilla: Network
  generalist: Network
  exported: list
  state: bank_lib.SuperSub
  specialist_model: Any
  vanilla_matched: Network | None = None
  head_only: bank_lib.SuperSub | None = None
  flat_router: Network | None = None


def flat_router_of(config, vanilla: Network, setup: setup_of.Setup) -> Network | None:
  """The flat network Super-Sub's own pipeline paid for or started from: the vanilla network when the generalist
  starts from it, else config.init's network when it is a flat network of these subclasses (``init.keep_head``;
  pretrained: paid for by neither Super-Sub nor the flat network it is compared with), else None (e.g. ImageNet
  weights of 1000 other classes). Routing by any other flat network would spend compute Super-Sub is not charged
  for."""
  if config.superclass.init_from_vanilla:
    return vanilla
  return load_init_network(config, setup) if config.init.keep_head else None


def load_trained(config, workdir: str, setup: setup_of.Setup) -> Trained:
  """Loads the vanilla network, the generalist and every specialist of ``workdir`` (checked against ``config``)."""
  hierarchy = setup.hierarchy
  vanilla = load_network(config, workdir, 'vanilla', setup)
  generalist = load_network(config, workdir, 'superclass', setup)
  exported = [load_exported(config, workdir, k, generalist, hierarchy) for k in range(hierarchy.num_superclasses)]
  state = bank_lib.build_supersub({'params': generalist.params, 'batch_stats': generalist.batch_stats}, exported,
                                  hierarchy)
  matched = head_only = None
  if 'vanilla_matched' in config.stages:
    matched = load_network(config, workdir, 'vanilla_matched', setup)
  if 'head_only' in config.stages:
    head_only = bank_lib.build_supersub(
        {'params': generalist.params, 'batch_stats': generalist.batch_stats},
        [load_exported(config, workdir, k, generalist, hierarchy, stage='head_only')
         for k in range(hierarchy.num_superclasses)], hierarchy)
  # The settings check matched specialists.dustbin: the exported outputs are the setup's specialist model's.
  return Trained(hierarchy, vanilla, generalist, exported, state, setup.specialist, matched, head_only,
                 flat_router_of(config, vanilla, setup))


def checkpoint_identity(directory: str) -> dict | None:
  """The newest step of a checkpoint directory and the SHA-256 of its metadata file, which holds the SHA-256 of
  every array of the step (``checkpoint.save``) and the config it was trained with; read from the files alone (no
  array), so in milliseconds. None when the directory holds no step."""
  steps = sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []
  for step in reversed(steps):
    meta = os.path.join(directory, str(step), 'meta', 'metadata')
    if os.path.isfile(meta):
      with open(meta, 'rb') as f:
        return {'step': step, 'meta_sha256': hashlib.sha256(f.read()).hexdigest()}
  return None


def file_identity(path: str) -> list:
  """(path, bytes, mtime in ns) of a file, or of every file under a folder."""
  path = ckpt.abs_path(path)
  found = [path] if os.path.isfile(path) else sorted(
      os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
  return [(os.path.relpath(f, path), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in found]


def stored_report(workdir: str) -> dict | None:
  """``<workdir>/report.json``, or None when absent or unreadable."""
  try:
    with open(os.path.join(ckpt.abs_path(workdir), 'report.json')) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None
