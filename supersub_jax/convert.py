r"""Checkpoint conversion: pretrained weights in, trained networks out.

  python -m supersub_jax.convert VERB [flags]      (VERB --help shows that verb's flags and an example)

import-torchvision: a torchvision ResNet state dict (.pth, .safetensors or .npz) -> an orbax checkpoint that
  config.init can start from (config.init.format='orbax'), or that other flax code restores.
    python -m supersub_jax.convert import-torchvision --arch=resnet50 --input=resnet50-0676ba61.pth \
        --output=$PWD/resnet50_orbax

export: specialist K of a trained workdir as one dense network (the generalist's backbone plus K's delta, its own
  BatchNorm statistics and its n_K-way head). --format=orbax writes a checkpoint like import-torchvision's;
  safetensors and npz use torchvision's names and layouts, so that for the torchvision architectures
  `torchvision.models.resnet50(num_classes=n_K).load_state_dict(...)` takes it.
    python -m supersub_jax.convert export --workdir=runs/demo --superclass=0 --format=safetensors
  (writes runs/demo/specialist0.safetensors; --output=PATH writes elsewhere)

network: a trained network stage of a workdir (vanilla, superclass or vanilla_matched) as one dense network, in the
  formats of export; e.g. a flat network for config.init (with init.keep_head to continue it).
    python -m supersub_jax.convert network --workdir=runs/demo --stage=vanilla --format=safetensors
  (writes runs/demo/vanilla.safetensors; --output=PATH writes elsewhere)

bundle: everything two-stage inference needs, in one msgpack file: the generalist's variables, every specialist's
  compressed delta, head and BatchNorm statistics, and the hierarchy; no optimizer state, no dense specialist.
  `load_bundle` reads it back and `bank.build_supersub` takes it.
    python -m supersub_jax.convert bundle --workdir=runs/demo
  (writes runs/demo/supersub.msgpack; --output=PATH writes elsewhere)

export, network and bundle write into the workdir unless --output names another path, and read the config stored
in the workdir by train.py; --config=FILE and --config.x=y override it
(with a warning listing what differs from training). Nothing is written unless the whole conversion succeeds, and
one conversion at a time writes an --output (a lock beside it). SIGINT and SIGTERM stop a conversion in one line
(exit status 130 and 143), leaving no partial file.
"""

from __future__ import annotations

if __name__ == '__main__':  # run as a program: before the heavy imports, so that a signal during them stops it too
  from supersub_jax import interrupts  # pylint: disable=g-import-not-at-top
  interrupts.install()

import functools
import json
import os
import sys


import jax
import numpy as np
from flax import serialization

from supersub_jax import choices
from supersub_jax import exported as exported_lib
from supersub_jax import files
from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax import locks
from supersub_jax import models
from supersub_jax import runtime
from supersub_jax import setup_of
from supersub_jax import weights
from supersub_jax import workdir as workdir_lib

BUNDLE_FORMAT = 'supersub_jax.bundle/1'
EXPORT_FORMATS = ('orbax', 'safetensors', 'npz')
TORCHVISION_ARCHS = ('resnet18', 'resnet34', 'resnet50')


# ----------------------------------------------------------------------------------------------------------------------
# Library


def make_bundle(config, workdir: str) -> dict:
  """The inference bundle of a trained workdir, as a pytree of numpy arrays and strings."""
  setup = setup_of.build(config)
  hierarchy = setup.hierarchy
  generalist = workdir_lib.load_network(config, workdir, 'superclass', setup)
  exported = [workdir_lib.load_exported(config, workdir, k, generalist, hierarchy)
              for k in range(hierarchy.num_superclasses)]
  return {'format': BUNDLE_FORMAT, 'hierarchy': json.dumps(hierarchy.to_dict()),
          'model': {'name': config.model, 'stem': config.stem, 'width': config.width,
                    'image_size': config.image_size},
          'generalist': {'params': generalist.params, 'batch_stats': generalist.batch_stats},
          'specialists': {str(k): e for k, e in enumerate(exported)}}


def write_bundle(path: str, bundle: dict) -> int:
  return files.write_bytes(path, serialization.msgpack_serialize(bundle))


def load_bundle(path: str) -> tuple[dict, list[dict], hierarchy_lib.Hierarchy, dict]:
  """-> (generalist variables, exported specialists in superclass order, each with its ``'spec'``, which
  ``bank.build_supersub`` takes; hierarchy; model description: 'name', 'stem', 'width', 'image_size').

  Bundles written before specialists described themselves (no ``'spec'``) get the one their time implies: the
  cut their model description names ('branch'), 'stem' before shared trunks existed.
  """
  with open(path, 'rb') as f:
    data = f.read()
  try:
    # Every array in msgpack is its own bytes (flax checks each buffer against its shape): nothing here allocates
    # more than the file holds. The sizes the bundle only states (the hierarchy's, the model's) are checked below.
    tree = serialization.msgpack_restore(data)
  except Exception as e:  # pylint: disable=broad-except  (msgpack raises several unrelated types)
    raise ValueError(f'{path} is not a readable msgpack file ({type(e).__name__}: {e}); write it with '
                     '`python -m supersub_jax.convert bundle`.') from e
  found = tree.get('format') if isinstance(tree, dict) else None
  if found != BUNDLE_FORMAT:
    raise ValueError(f'{path} is not a {BUNDLE_FORMAT} file (format {found!r}); write it with '
                     '`python -m supersub_jax.convert bundle`.')
  part = 'hierarchy'
  try:  # a damaged file must give one clear error, whatever part of it is damaged
    # Hierarchy checks its stated sizes (source classes, label grid) against sane limits before allocating.
    hierarchy = hierarchy_lib.Hierarchy.from_dict(json.loads(tree['hierarchy']))
    part = 'model'
    model = {k: v for k, v in dict(tree['model']).items() if k != 'branch'}  # the cut is the specialists' own
    part = 'generalist'
    generalist = {'params': dict(tree['generalist']['params']),
                  'batch_stats': dict(tree['generalist']['batch_stats'])}
    _check_model(model, generalist, hierarchy.num_superclasses)
    _check_finite(generalist)
    base_shapes = {'/'.join(str(k.key) for k in p): tuple(np.shape(x))
                   for p, x in jax.tree_util.tree_flatten_with_path(generalist['params'])[0]}
    base_stats = {'/'.join(str(k.key) for k in p): tuple(np.shape(x))
                  for p, x in jax.tree_util.tree_flatten_with_path(generalist['batch_stats'])[0]}
    exported = []
    for k in range(hierarchy.num_superclasses):
      part = f'specialist {k}'
      ex = tree['specialists'][str(k)]
      for keys, rec in exported_lib.walk_records(ex['delta']):
        leaf = '/'.join(keys)
        if leaf not in base_shapes:
          raise ValueError(f'delta leaf {leaf!r} is not a parameter of the generalist')
        exported_lib.decode_record(rec, f'specialist {k}, delta leaf {leaf!r}', expected_shape=base_shapes[leaf])
      kernel, bias = np.asarray(ex['head']['kernel']), np.asarray(ex['head']['bias'])
      if kernel.ndim != 2 or bias.shape != kernel.shape[1:]:
        raise ValueError(f'head kernel {kernel.shape} and bias {bias.shape} do not fit')
      spec = ex.get('spec') or {'version': 1, 'cut': str(tree['model'].get('branch', 'stem')),
                                'num_subclasses': int(kernel.shape[1]), 'delta': {}}
      models.Cut(spec['cut'])  # an unknown layer group is damage, reported below
      if dict(spec).get('superclass', k) != k:  # bundles written before specialists recorded it have none
        raise ValueError(f'it serves superclass {spec["superclass"]}, not {k}, whose place it is in')
      features = np.shape(generalist['params']['head']['kernel'])[0]
      columns = len(hierarchy.superclasses[k].subclasses) + (1 if dict(spec).get('dustbin') else 0)
      if kernel.shape != (features, columns):
        raise ValueError(f'head kernel {kernel.shape}, expected ({features}, {columns}): the generalist\'s '
                         'features by the superclass\'s subclasses (and its dustbin)')
      batch_stats = dict(ex['batch_stats'])
      for keys, x in jax.tree_util.tree_flatten_with_path(batch_stats)[0]:
        leaf = '/'.join(str(p.key) for p in keys)
        if base_stats.get(leaf, ()) != np.shape(x):
          raise ValueError(f'batch statistic {leaf!r} has shape {np.shape(x)}, the generalist\'s '
                           f'{base_stats.get(leaf, "(no such statistic)")}')
      _check_finite({'head': {'kernel': kernel, 'bias': bias}, 'batch_stats': batch_stats})
      exported.append({'delta': ex['delta'], 'head': {'kernel': kernel, 'bias': bias},
                       'batch_stats': batch_stats, 'spec': dict(spec)})
  # RecursionError: a hierarchy or a delta nested deeper than any bundle is (json and the record walk recurse).
  except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:
    raise ValueError(f'{path}: damaged bundle, in its {part} ({type(e).__name__}: {e}); write it again with '
                     '`python -m supersub_jax.convert bundle`.') from e
  return generalist, exported, hierarchy, model


def _check_finite(tree) -> None:
  """Raises ValueError naming the first array of ``tree`` that holds a NaN or an infinity: one inf in a head's bias
  makes every probability NaN, and NaN batch statistics silently predict class 0."""
  for keys, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.inexact) and not np.isfinite(x).all():
      leaf = '/'.join(str(getattr(p, 'key', p)) for p in keys)
      raise ValueError(f'{leaf} holds {int(np.size(x) - np.isfinite(x).sum())} non-finite values (NaN or inf) of '
                       f'{np.size(x)}')


MAX_IMAGE_SIZE = 8192  # a bundle's image side; ImageNet networks see 224


@functools.lru_cache(maxsize=16)
def _generalist_shapes(name: str, stem: str, width: float, num_classes: int) -> dict:
  """{'/'-joined path: shape} of the generalist that a bundle's model description names (shapes only, traced)."""
  variables = weights.abstract_variables(models.create_model(name, num_classes, stem=stem, width=width))
  return {'/'.join(str(k.key) for k in p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(variables)[0]}


def _check_model(model: dict, generalist: dict, num_superclasses: int) -> None:
  """Raises ValueError unless a bundle's model description is one this package builds (a known name and stem, a
  sane width and image size) and describes the generalist stored beside it, leaf for leaf."""
  name, stem, width, size = model.get('name'), model.get('stem'), model.get('width'), model.get('image_size')
  if name not in models.MODELS or stem not in models.STEMS:
    raise ValueError(f'name {name!r} and stem {stem!r}: use one of {sorted(models.MODELS)} and {models.STEMS}')
  if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 64:
    raise ValueError(f'width {width!r} is not a multiplier in (0, 64]')
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= MAX_IMAGE_SIZE:
    raise ValueError(f'image_size {size!r} is not a side in [1, {MAX_IMAGE_SIZE}]')
  expected = _generalist_shapes(name, stem, float(width), num_superclasses)
  stored = {'/'.join(str(k.key) for k in p): tuple(np.shape(x))
            for p, x in jax.tree_util.tree_flatten_with_path(generalist)[0]}
  if stored != expected:
    wrong = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
    raise ValueError(f'the generalist does not fit {name} (stem {stem!r}, width {width}): {len(wrong)} leaves '
                     f'differ, e.g. {wrong[0]}: stored {stored.get(wrong[0])}, expected {expected.get(wrong[0])}')


def dense_specialist(config, workdir: str, k: int) -> dict:
  """Specialist ``k`` as dense ``{'params', 'batch_stats'}`` of the ResNet with an ``n_k``-way head, or n_k + 1
  with a dustbin: its last output, "not my superclass", with the inference-time logit correction in its bias."""
  setup = setup_of.build(config)
  hierarchy = setup.hierarchy
  if not 0 <= k < hierarchy.num_superclasses:
    raise ValueError(f'--superclass={k} is outside [0, {hierarchy.num_superclasses}) of hierarchy '
                     f'{hierarchy.name!r}; `python -m supersub_jax.hierarchy {config.hierarchy}` lists them.')
  generalist = workdir_lib.load_network(config, workdir, 'superclass', setup)
  exported = workdir_lib.load_exported(config, workdir, k, generalist, hierarchy)
  base, _ = models.split_head(generalist.params)
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


# ----------------------------------------------------------------------------------------------------------------------
# Command line


VERBS = {
    'import-torchvision': ('arch', 'input', 'output', 'stem', 'width'),
    'export': ('workdir', 'superclass', 'format', 'output', 'config'),
    'network': ('workdir', 'stage', 'format', 'output', 'config'),
    'bundle': ('workdir', 'output', 'config'),
}


def _verb_help(verb: str) -> str:
  """The module docstring's paragraph on ``verb`` plus its flags."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  paragraphs = __doc__.split('\n\n')
  text = next(p for p in paragraphs if p.startswith(f'{verb}:'))
  lines = [f'usage: python -m supersub_jax.convert {verb} [flags]', '', text, '', 'flags:']
  for name in VERBS[verb]:
    flag = flags.FLAGS[name]
    default = '' if flag.default in (None, '') else f' (default: {flag.default})'
    lines.append(f'  --{name}: {flag.help}{default}')
  lines.append('  --debug: on an error, show the full traceback instead of one line')
  return '\n'.join(lines)


def main() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from supersub_jax import cli  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('workdir', None, 'A workdir trained by train.py.')
  flags.DEFINE_string('output', None, 'Where to write (a file; a new directory for orbax). Default: into --workdir '
                      '(export: specialist<K>.<format>, network: <stage>.<format>, bundle: supersub.msgpack).')
  flags.DEFINE_integer('superclass', None, 'Which specialist (superclass index, as in report.md).')
  flags.DEFINE_enum('format', 'orbax', EXPORT_FORMATS, 'Export file format.')
  flags.DEFINE_enum('stage', None, list(choices.NETWORK_STAGES), 'Which network stage (the network verb).')
  flags.DEFINE_enum('arch', None, sorted(models.MODELS), 'Architecture of the torchvision state dict '
                    f'(torchvision has {", ".join(TORCHVISION_ARCHS)}).')
  flags.DEFINE_string('input', None, 'A torchvision state dict: .pth (needs torch), .safetensors or .npz.')
  flags.DEFINE_enum('stem', 'imagenet', list(models.STEMS), 'Stem of the architecture (torchvision: imagenet).')
  flags.DEFINE_float('width', 1.0, 'Width multiplier of the architecture (torchvision: 1.0).')
  cli.define_config_flag(stored_in_workdir=True)
  cli.define_debug_flag()

  def parse(argv):
    verb = next((a for a in argv[1:] if not a.startswith('-')), None)
    if verb in VERBS and any(a in ('--help', '-h', '--helpshort', '-?') for a in argv[1:]):
      print(_verb_help(verb))
      sys.exit(0)
    return flags.FLAGS(argv)  # cli.run reports a flag error in one line

  def run(argv):
    f = flags.FLAGS
    verbs = argv[1:]
    if len(verbs) != 1 or verbs[0] not in VERBS:
      raise ValueError(f'give one verb of {sorted(VERBS)}, got {verbs}; '
                       '`python -m supersub_jax.convert VERB --help` shows its flags and an example.')
    verb = verbs[0]
    optional = ('config', 'format', 'stem', 'width') + (('output',) if verb != 'import-torchvision' else ())
    required = [n for n in VERBS[verb] if n not in optional and f[n].value is None]
    if required:
      raise ValueError(f'{verb} needs --{", --".join(required)} (see `python -m supersub_jax.convert {verb} '
                       '--help`).')
    for name, example in (('workdir', 'runs/demo'), ('input', 'resnet50.pth'), ('output', 'supersub.msgpack')):
      # An unset --output defaults into the workdir (default_output); an empty one is a mistake (an unset variable).
      if name in VERBS[verb] and (name not in optional or f[name].value is not None):
        cli.required_path(name, f[name].value, example)
    if verb == 'import-torchvision':
      with locks.hold_output(f.output, program='convert import-torchvision'):
        what = import_torchvision(f.arch, f.input, f.output, stem=f.stem, width=f.width)
      print(f'wrote {f.output}: {what}')
      return
    if f.output is not None:
      check_output_outside(f.output, f.workdir)
    config = cli.config_for_workdir(f.config, f.workdir)
    runtime.initialize_runtime(config)
    output = f.output or default_output(verb, f.workdir, fmt=f.format, superclass=f.superclass, stage=f.stage)
    # The workdir is only read (finished checkpoints); the output is what two conversions could both write.
    with locks.hold_output(output, program=f'convert {verb}'):
      if verb == 'export':
        what = export_specialist(config, f.workdir, f.superclass, f.format, output)
        print(f'wrote {output}: {what}')
      elif verb == 'network':
        what = export_network(config, f.workdir, f.stage, f.format, output)
        print(f'wrote {output}: {what}')
      else:
        size = write_bundle(output, make_bundle(config, f.workdir))
        print(f'wrote {output}: {size:,} bytes (generalist + {setup_of.make_hierarchy(config).num_superclasses} '
              'compressed specialists)')

  cli.run(run, flags_parser=parse)


if __name__ == '__main__':
  main()
