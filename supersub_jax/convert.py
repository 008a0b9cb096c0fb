"""Checkpoint conversion, the library of `python -m tools.convert` (whose docstring describes each verb): pretrained
torchvision weights in (`import_torchvision`), trained networks out (`export_specialist`, `export_network` as
orbax, safetensors or npz), and the inference bundle of a finished workdir (`make_bundle`; the format, its writing
and its reading are `bundle.py`'s). Every function reads finished checkpoints and writes one output.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from supersub_jax import bundle as bundle_lib
from supersub_jax import cut as cut_lib
from supersub_jax import choices
from supersub_jax import decide
from supersub_jax import exported as exported_lib
from supersub_jax import files
from supersub_jax import locks
from supersub_jax import models
from supersub_jax import runtime
from supersub_jax import setup_of
from supersub_jax import weights
from supersub_jax import workdir as workdir_lib
from supersub_jax.choices import EXPORT_FORMATS, TORCHVISION_ARCHS  # pylint: disable=g-importing-member


def make_bundle(config, workdir: str) -> dict:
  """The inference bundle of a trained workdir, as a pytree of numpy arrays and strings: the rule it is made for
  (``config.evaluate.verdict_rule``, the report's) and, when that rule routes by a flat network, the pipeline's
  flat router (``workdir.flat_router_of``: config.init's network or the vanilla network it started from)."""
  setup = setup_of.build(config)
  hierarchy = setup.hierarchy
  generalist = workdir_lib.load_network(config, workdir, 'superclass', setup)
  exported = [workdir_lib.load_exported(config, workdir, k, generalist, hierarchy)
              for k in range(hierarchy.num_superclasses)]
  rule = decide.Rule.parse(config.evaluate.verdict_rule)
  bundle = {'format': bundle_lib.BUNDLE_FORMAT, 'hierarchy': json.dumps(hierarchy.to_dict()),
            'model': {'name': config.model, 'stem': config.stem, 'width': config.width,
                      'image_size': config.image_size},
            'rule': rule.key,
            'generalist': {'params': generalist.params, 'batch_stats': generalist.batch_stats},
            'specialists': {str(k): e for k, e in enumerate(exported)}}
  if rule.needs_flat:
    vanilla = (workdir_lib.load_network(config, workdir, 'vanilla', setup) if config.superclass.init_from_vanilla
               else None)  # flat_router_of reads it only then
    flat = workdir_lib.flat_router_of(config, vanilla, setup)
    if flat is None:
      raise ValueError(f'evaluate.verdict_rule={rule.key!r} routes by a flat network, and this pipeline has none (its '
                       'generalist starts from config.init, which is not a flat network of these subclasses): '
                       "bundle it with --config.evaluate.verdict_rule=hard.")
    bundle['flat'] = {'params': flat.params, 'batch_stats': flat.batch_stats}
  return bundle


def dense_specialist(config, workdir: str, k: int) -> dict:
  """Specialist ``k`` as dense ``{'params', 'batch_stats'}`` of the ResNet with an ``n_k``-way head, or n_k + 1
  with a dustbin: its last output, "not my superclass", with the inference-time logit correction in its bias."""
  setup = setup_of.build(config)
  hierarchy = setup.hierarchy
  if not 0 <= k < hierarchy.num_superclasses:
    raise ValueError(f'--superclass={k} is outside [0, {hierarchy.num_superclasses}) of hierarchy '
                     f'{hierarchy.name!r}; `python -m tools.hierarchy {config.hierarchy}` lists them.')
  generalist = workdir_lib.load_network(config, workdir, 'superclass', setup)
  exported = workdir_lib.load_exported(config, workdir, k, generalist, hierarchy)
  base, _ = cut_lib.split_head(generalist.params)
  params = jax.tree.map(np.asarray, exported_lib.materialize_compressed(base, exported['delta']))
  params['head'] = dict(exported['head'])
  dustbin = exported_lib.dustbin_of(exported)
  if dustbin:
    bias = np.array(params['head']['bias'], np.float32)
    bias[-1] += np.float32(exported_lib.dustbin_logit_correction(dustbin))
    params['head']['bias'] = bias
  # A shared trunk keeps the generalist's statistics; the specialist's own cover the layers from its branch on.
  return {'params': params, 'batch_stats': {**generalist.batch_stats, **exported['batch_stats']}}


def export_specialist(config, workdir: str, k: int, fmt: str, output: str) -> str:
  """Writes specialist ``k`` as a dense network (``fmt`` in EXPORT_FORMATS); returns a one-line description."""
  _check_output(fmt, output)
  variables = dense_specialist(config, workdir, k)
  hierarchy = setup_of.make_hierarchy(config)
  superclass = hierarchy.superclasses[k]
  outputs = int(np.shape(variables['params']['head']['bias'])[-1])  # n_k, or n_k + 1 with a dustbin
  model = setup_of.make_model(config, outputs)
  if fmt == 'orbax':
    meta = {**weights.model_meta(model, config.model, config.width), 'superclass': k, 'name': superclass.name,
            'subclasses': [s.name for s in superclass.subclasses] + ['(not this superclass)'] * (
                outputs - len(superclass.subclasses)), 'workdir': os.path.abspath(workdir)}
    weights.save_orbax(output, variables, meta)
  else:
    weights.write_state_dict(output, weights.to_torchvision(variables))
  note = ''
  if fmt != 'orbax' and (config.model not in TORCHVISION_ARCHS or config.stem != 'imagenet' or config.width != 1):
    note = (f' (torchvision names and layouts; {config.model} stem={config.stem!r} width={config.width} is not one '
            'of torchvision.models\' architectures)')
  return f'specialist {k} ({superclass.name}, {len(superclass.subclasses)} classes) as {fmt}{note}'


_SUFFIXES = {'safetensors': '.safetensors', 'npz': '.npz', 'orbax': '_orbax'}  # orbax: a directory


def default_output(verb: str, workdir: str, *, fmt: str = 'orbax', superclass: int | None = None,
                   stage: str | None = None) -> str:
  """Where export, network and bundle write without --output: into the workdir they convert, named for what they
  write ('specialist<K>.<format>', '<stage>.<format>' with '_orbax' for a directory, 'supersub.msgpack')."""
  if verb == 'bundle':
    return os.path.join(workdir, 'supersub.msgpack')
  name = f'specialist{superclass}' if verb == 'export' else str(stage)
  return os.path.join(workdir, name + _SUFFIXES.get(fmt, ''))


def _check_output(fmt: str, output: str) -> None:
  if fmt not in EXPORT_FORMATS:
    raise ValueError(f'--format={fmt!r}: use one of {EXPORT_FORMATS}.')
  suffix = {'safetensors': '.safetensors', 'npz': '.npz'}.get(fmt)
  if suffix and not output.endswith(suffix):
    raise ValueError(f'--output={output!r}: a {fmt} file must end with {suffix}.')
  if os.path.exists(output):
    raise FileExistsError(f'{output} already exists; choose a new --output or delete it first.')


# What train.py and evaluate.py write at a workdir's top level (besides its stage folders, which exist when trained).
WORKDIR_FILES = ('config.json', 'metrics.jsonl', 'report.json', 'report.md', locks.LOCK_FILE)


def check_output_outside(output: str, workdir: str) -> None:
  """Raises ValueError when ``output`` is one of ``workdir``'s own files: the workdir itself, anything inside one
  of its folders (checkpoints, TensorBoard logs), a file it holds, or one that train.py or evaluate.py write there.
  A new name at the workdir's top level (``<workdir>/supersub.msgpack``) is allowed."""
  output, workdir = os.path.realpath(os.path.expanduser(output)), os.path.realpath(os.path.expanduser(workdir))
  relative = os.path.relpath(output, workdir)
  if relative == os.pardir or relative.startswith(os.pardir + os.sep):
    return
  top = relative.split(os.sep)[0]
  if (relative == os.curdir or os.sep in relative or os.path.lexists(output) or top in WORKDIR_FILES
      or top.endswith('.png')):
    raise ValueError(f'--output={output} is inside the workdir {workdir}, among the files train.py and evaluate.py '
                     'own there: choose a path outside it (or a new file name at its top level).')


def export_network(config, workdir: str, stage: str, fmt: str, output: str) -> str:
  """Writes the finished network of ``stage`` (``choices.NETWORK_STAGES``) as a dense network (``fmt`` in
  EXPORT_FORMATS); returns a one-line description."""
  if stage not in choices.NETWORK_STAGES:
    raise ValueError(f'--stage={stage!r}: use one of {choices.NETWORK_STAGES} (specialists: the export verb).')
  _check_output(fmt, output)
  net = workdir_lib.load_network(config, workdir, stage, setup_of.build(config))
  variables = {'params': net.params, 'batch_stats': net.batch_stats}
  if fmt == 'orbax':
    meta = {**weights.model_meta(net.model, config.model, config.width), 'stage': stage, 'steps': net.steps,
            'workdir': os.path.abspath(workdir), 'test': net.meta.get('test')}
    weights.save_orbax(output, variables, meta)
  else:
    weights.write_state_dict(output, weights.to_torchvision(variables))
  return f'the {stage} network ({net.model.num_classes} classes, {net.steps:,} steps) as {fmt}'


def import_torchvision(arch: str, input_path: str, output: str, *, stem: str = 'imagenet',
                       width: float = 1.0) -> str:
  """A torchvision state dict file -> an orbax checkpoint of our ResNet (``weights.save_orbax``)."""
  if os.path.exists(output):
    raise FileExistsError(f'{output} already exists; choose a new --output or delete it first.')
  state_dict = weights.read_state_dict(input_path)
  fc = state_dict.get('fc.weight')
  if fc is None:
    raise weights.WeightsMismatchError(f'{input_path} has no fc.weight: is it a torchvision ResNet state dict? '
                                       f'(first keys: {sorted(state_dict)[:5]})')
  model = models.create_model(arch, int(np.shape(fc)[0]), stem=stem, width=width)
  variables = weights.from_torchvision(state_dict, model)
  meta = {**weights.model_meta(model, arch, width), 'source': os.path.abspath(input_path),
          'source_sha256': weights.file_sha256(input_path)}
  weights.save_orbax(output, variables, meta)
  return f'{arch} ({models.param_count(variables["params"]):,} parameters, {model.num_classes} classes)'
