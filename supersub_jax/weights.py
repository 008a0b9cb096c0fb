"""Dense network weights in files: torchvision ResNet state dicts <-> flax variables, and the orbax form.

A network here is flax ``{'params', 'batch_stats'}`` of a ``models.ResNet``. Our ResNets are torchvision's
architecture (v1.5, symmetric padding, the same block order), so a torchvision state dict maps onto them one tensor
each, by name::

    conv1.weight                  [O, I, kh, kw]  <->  params/conv_init/kernel            [kh, kw, I, O]
    bn1.{weight,bias}             [C]             <->  params/bn_init/{scale,bias}
    bn1.running_{mean,var}        [C]             <->  batch_stats/bn_init/{mean,var}
    bn1.num_batches_tracked       int64 []             (read and ignored; written as 0)
    layer{i}.{j}.conv{n}          ...             <->  stage{i}_block{j+1}/Conv_{n-1}
    layer{i}.{j}.bn{n}            ...             <->  stage{i}_block{j+1}/BatchNorm_{n-1}
    layer{i}.{j}.downsample.0/.1  ...             <->  stage{i}_block{j+1}/conv_proj, norm_proj
    fc.weight                     [C, D]          <->  params/head/kernel                 [D, C]
    fc.bias                       [C]             <->  params/head/bias

The mapping is derived from the flax model's own tree, so it also covers our narrow and shallow variants
(``width``, ``resnet_small``) in torchvision's naming. Files:

* ``read_state_dict(path)``: ``.pth``/``.pt`` (``torch.load(..., weights_only=True)``: a weights file never runs
  code; needs torch), ``.safetensors`` (the ``safetensors`` package, numpy only) or ``.npz`` -> {name: ndarray}.
* ``write_state_dict(path, state_dict)``: ``.safetensors`` or ``.npz``.
* ``save_orbax(directory, variables, meta)`` / ``load_orbax(directory)``: an orbax checkpoint with items
  ``variables`` and ``meta`` (JSON: architecture, classes, provenance), written atomically. ``convert
  import-torchvision`` and ``convert export --format=orbax`` write it; ``config.init`` reads it.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import re
import shutil
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from supersub_jax import checkpoint as ckpt
from supersub_jax import files
from supersub_jax import models

PyTree = Any
StateDict = dict  # name -> numpy array, torchvision's names and layouts
STATE_DICT_SUFFIXES = ('.pth', '.pt', '.safetensors', '.npz')
ORBAX_FORMAT = 'supersub_jax.dense/1'
_BN_BUFFERS = {'mean': 'running_mean', 'var': 'running_var'}
_BN_PARAMS = {'scale': 'weight', 'bias': 'bias'}


class WeightsMismatchError(ValueError):
  """A state dict does not fit the model: lists every missing, unexpected and mis-shaped key."""


# ----------------------------------------------------------------------------------------------------------------------
# Names


def _module_name(flax_module: str) -> str:
  """'conv_init' -> 'conv1', 'stage2_block1' -> 'layer2.0', 'Conv_1' -> 'conv2', 'norm_proj' -> 'downsample.1'."""
  fixed = {'conv_init': 'conv1', 'bn_init': 'bn1', 'head': 'fc', 'conv_proj': 'downsample.0',
           'norm_proj': 'downsample.1'}
  if flax_module in fixed:
    return fixed[flax_module]
  if m := re.fullmatch(r'stage(\d+)_block(\d+)', flax_module):
    return f'layer{m[1]}.{int(m[2]) - 1}'
  if m := re.fullmatch(r'(Conv|BatchNorm)_(\d+)', flax_module):
    return f'{"conv" if m[1] == "Conv" else "bn"}{int(m[2]) + 1}'
  raise ValueError(f'flax module {flax_module!r} has no torchvision name; is this a supersub_jax ResNet?')


def torchvision_name(collection: str, path: tuple[str, ...]) -> str:
  """The torchvision state-dict key of the flax leaf ``collection/path`` (e.g. ('conv_init', 'kernel'))."""
  *modules, leaf = path
  prefix = '.'.join(_module_name(m) for m in modules)
  if collection == 'batch_stats':
    return f'{prefix}.{_BN_BUFFERS[leaf]}'
  if leaf == 'kernel':
    return f'{prefix}.weight'
  if modules[-1] == 'head':
    return f'{prefix}.{leaf}'
  return f'{prefix}.{_BN_PARAMS[leaf]}'


def _torch_axes(leaf: str, ndim: int) -> tuple[int, ...] | None:
  """The transpose from a flax leaf to torch's layout: conv HWIO -> OIHW, Dense [in, out] -> Linear [out, in]."""
  if leaf != 'kernel':
    return None
  return {4: (3, 2, 0, 1), 2: (1, 0)}.get(ndim)


def _to_torch_layout(array: np.ndarray, leaf: str) -> np.ndarray:
  axes = _torch_axes(leaf, array.ndim)
  return array if axes is None else np.ascontiguousarray(np.transpose(array, axes))


def _from_torch_layout(array: np.ndarray, leaf: str) -> np.ndarray:
  axes = _torch_axes(leaf, array.ndim)
  return array if axes is None else np.ascontiguousarray(np.transpose(array, np.argsort(axes)))


def _torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
  axes = _torch_axes(leaf, len(shape))
  return shape if axes is None else tuple(shape[a] for a in axes)


def _leaves(tree: PyTree) -> list[tuple[str, tuple[str, ...], Any]]:
  """(collection, path within it, leaf) of a flax variables tree."""
  out = []
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = tuple(str(k.key) for k in key_path)
    out.append((keys[0], keys[1:], leaf))
  return out


def _set(tree: dict, keys: tuple[str, ...], value) -> None:
  for k in keys[:-1]:
    tree = tree.setdefault(k, {})
  tree[keys[-1]] = value


def abstract_variables(model: models.ResNet) -> PyTree:
  """``{'params', 'batch_stats'}`` of ``model`` as ShapeDtypeStructs (no compute: parameter shapes do not depend on
  the image size)."""
  return jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), (64, 64, 3)))


# ----------------------------------------------------------------------------------------------------------------------
# Mapping


def from_torchvision(state_dict: Mapping[str, np.ndarray], model: models.ResNet, *, head: bool = True) -> PyTree:
  """A torchvision state dict -> float32 ``{'params', 'batch_stats'}`` of ``model``.

  Args:
    state_dict: torchvision names -> arrays (torch layouts), e.g. from ``read_state_dict``.
    model: the flax ResNet to fill; its ``num_classes`` must equal ``fc.weight``'s rows when ``head``.
    head: False maps the backbone only: ``fc.*`` keys are accepted and ignored, and the result has no 'head'.
  Raises:
    WeightsMismatchError listing every missing, unexpected and mis-shaped key, all at once.
  """
  expected = abstract_variables(model)
  out: dict = {}
  used, missing, misshaped = set(), [], []
  for collection, path, leaf in _leaves(expected):
    if not head and path[0] == 'head':
      continue
    name = torchvision_name(collection, path)
    if name not in state_dict:
      missing.append(f'{name} (for {collection}/{"/".join(path)}, {tuple(leaf.shape)})')
      continue
    used.add(name)
    array = np.asarray(state_dict[name])
    if array.shape != _torch_shape(tuple(leaf.shape), path[-1]):
      misshaped.append(f'{name}: file {array.shape}, model needs {_torch_shape(tuple(leaf.shape), path[-1])}')
      continue
    array = _from_torch_layout(array, path[-1])
    _set(out, (collection,) + path, array.astype(np.float32))
  bn_modules = {name.rsplit('.', 1)[0] for name in used if name.endswith('.running_mean')}
  ignorable = {f'{m}.num_batches_tracked' for m in bn_modules}
  if not head:
    ignorable |= {'fc.weight', 'fc.bias'}
  unexpected = sorted(set(state_dict) - used - ignorable)
  if missing or unexpected or misshaped:
    lines = ([f'  missing: {m}' for m in missing] + [f'  unexpected: {u}' for u in unexpected]
             + [f'  wrong shape: {s}' for s in misshaped])
    hint = ''
    if any(s.startswith('conv1.weight') for s in misshaped):
      hint += ' A 7x7 conv1 needs stem="imagenet"; check the architecture, width and stem.'
    if any(s.startswith('fc.') for s in misshaped):
      hint += ' The head has another number of classes.'
    raise WeightsMismatchError(
        f'The state dict does not fit {_describe(model)} ({len(missing)} missing, {len(unexpected)} unexpected, '
        f'{len(misshaped)} wrong shape):\n' + '\n'.join(lines[:60]) + ('\n  ...' if len(lines) > 60 else '')
        + f'\nIs it a torchvision {_describe(model)} checkpoint?{hint}')
  return out


def to_torchvision(variables: PyTree) -> StateDict:
  """Flax ``{'params', 'batch_stats'}`` of a ResNet -> torchvision state dict (numpy, torch layouts).

  Every BatchNorm also gets ``num_batches_tracked`` (int64 0), so ``load_state_dict(strict=True)`` accepts it.
  """
  out = {}
  for collection, path, leaf in _leaves(variables):
    name = torchvision_name(collection, path)
    out[name] = _to_torch_layout(np.asarray(leaf, np.float32), path[-1])
    if collection == 'batch_stats' and path[-1] == 'mean':
      out[name.rsplit('.', 1)[0] + '.num_batches_tracked'] = np.zeros((), np.int64)
  return dict(sorted(out.items()))


def _describe(model: models.ResNet) -> str:
  block = 'bottleneck' if model.block_cls is models.BottleneckResNetBlock else 'basic'
  return (f'ResNet(stages={tuple(model.stage_sizes)}, {block} blocks, {model.num_filters} filters, '
          f'stem={model.stem!r}, {model.num_classes} classes)')


# ----------------------------------------------------------------------------------------------------------------------
# Files


def _unwrap(obj: Any, path: str) -> dict:
  """A training checkpoint often nests the state dict ('state_dict', 'model') and prefixes 'module.' (DDP)."""
  for key in ('state_dict', 'model'):
    if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
      obj = obj[key]
  if not isinstance(obj, Mapping):
    raise ValueError(f'{path} holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors).')
  if obj and all(k.startswith('module.') for k in obj):
    obj = {k[len('module.'):]: v for k, v in obj.items()}
  return dict(obj)


# The most a state dict file may unpack to: torchvision's largest ResNet (resnet152, 60M parameters) is 0.24 GB in
# float32; a file that claims more is damaged or hostile, not refused after gigabytes were allocated.
MAX_STATE_DICT_BYTES = 2**30


def read_state_dict(path: str) -> StateDict:
  """Reads a state dict from ``.pth``/``.pt``, ``.safetensors`` or ``.npz`` -> {name: numpy array}."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist (or is not a file).')
  suffix = os.path.splitext(path)[1].lower()
  if suffix in ('.pth', '.pt'):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ValueError(f'{path}: reading a .pth needs torch (pip install torch), or convert it once where torch is '
                       'installed: python -c "import torch, safetensors.torch as s; '
                       f's.save_file(torch.load(\'{os.path.basename(path)}\', weights_only=True), '
                       '\'weights.safetensors\')"') from None
    try:
      obj = torch.load(path, map_location='cpu', weights_only=True)  # never unpickles code
    except Exception as e:  # pylint: disable=broad-except  (torch raises UnpicklingError, RuntimeError, ...)
      raise ValueError(f'{path} is not a readable weights-only torch file: {str(e).splitlines()[0]}') from e
    return {k: v.detach().cpu().numpy() if hasattr(v, 'detach') else np.asarray(v)
            for k, v in _unwrap(obj, path).items()}
  if suffix == '.safetensors':
    from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      return _unwrap(load_file(path), path)
    except (SafetensorError, OSError) as e:
      raise ValueError(f'{path} is not a readable safetensors file: {e}') from e
  if suffix == '.npz':
    # Every array's size checked against the file, and all of them against the cap, before anything is read.
    return _unwrap(files.load_npz(path, max_bytes=MAX_STATE_DICT_BYTES), path)
  raise ValueError(f'{path}: unknown weights file type {suffix!r}; use one of {STATE_DICT_SUFFIXES}.')


def write_state_dict(path: str, state_dict: StateDict) -> None:
  """Writes ``.safetensors`` or ``.npz`` atomically (a temporary file, then a rename)."""
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in ('.safetensors', '.npz'):
    raise ValueError(f'{path}: write weights as .safetensors or .npz.')
  with files.atomic_write(path, 'wb') as f:
    if suffix == '.safetensors':
      from safetensors.numpy import save  # pylint: disable=g-import-not-at-top
      f.write(save({k: np.ascontiguousarray(v) for k, v in state_dict.items()}))
    else:
      np.savez(f, **state_dict)


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def model_meta(model: models.ResNet, name: str, width: float) -> dict:
  """What ``load_orbax`` needs to rebuild the model: ``models.create_model(arch, num_classes, stem, width)``."""
  return {'format': ORBAX_FORMAT, 'arch': name, 'num_classes': int(model.num_classes), 'stem': model.stem,
          'width': float(width)}


def save_orbax(directory: str, variables: PyTree, meta: Mapping[str, Any]) -> None:
  """Writes ``{'params', 'batch_stats'}`` and JSON ``meta`` as one orbax checkpoint, atomically (orbax writes a
  temporary directory and renames it). ``directory`` must not exist yet."""
  directory = ckpt.abs_path(directory)
  if os.path.exists(directory):
    raise FileExistsError(f'{directory} already exists; choose a new --output or delete it first.')
  host = jax.tree.map(np.asarray, dict(variables))
  # Refused before orbax starts: a full disk mid-save prints orbax's tracebacks from its threads.
  files.require_space(directory, sum(x.nbytes for x in jax.tree.leaves(host)) + (256 << 10))
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  try:
    checkpointer.save(directory, args=ocp.args.Composite(variables=ocp.args.StandardSave(host),
                                                         meta=ocp.args.JsonSave(dict(meta))))
  except BaseException as e:
    for partial in glob.glob(glob.escape(directory) + '.orbax-checkpoint-tmp*'):  # orbax leaves its temporary
      shutil.rmtree(partial, ignore_errors=True)
    if isinstance(e, Exception) and 'No space left on device' in str(e):  # orbax reports it as ValueError
      raise files.write_error(directory, OSError(errno.ENOSPC, 'No space left on device')) from e
    raise


def load_orbax(directory: str) -> tuple[PyTree, dict]:
  """-> (``{'params', 'batch_stats'}`` as numpy, meta) of a ``save_orbax`` directory."""
  directory = ckpt.abs_path(directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'{directory} is not a directory written by `python -m tools.convert`.')
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  try:
    restored = checkpointer.restore(directory, args=ocp.args.Composite(variables=ocp.args.StandardRestore(),
                                                                       meta=ocp.args.JsonRestore()))
  except (FileNotFoundError, KeyError, ValueError) as e:
    raise ValueError(f'{directory} is not a readable {ORBAX_FORMAT} checkpoint: {e}') from e
  meta = dict(restored['meta'] or {})
  if meta.get('format') != ORBAX_FORMAT:
    raise ValueError(f'{directory} holds format {meta.get("format")!r}, not {ORBAX_FORMAT}.')
  return jax.tree.map(np.asarray, dict(restored['variables'])), meta


def load_network(path: str, fmt: str, model: models.ResNet, *, head: bool = True) -> PyTree:
  """``{'params', 'batch_stats'}`` of ``model`` from a torchvision file or a ``save_orbax`` directory (``fmt``
  'torchvision' or 'orbax'), checked leaf by leaf against ``model`` (a head of another number of classes is refused
  with both counts named); without the head with ``head=False`` (a backbone to put a new head on)."""
  if fmt == 'torchvision':
    return from_torchvision(read_state_dict(path), model, head=head)
  if fmt != 'orbax':
    raise ValueError(f"config.init.format={fmt!r}: use 'torchvision' (a .pth/.safetensors/.npz file) or 'orbax' "
                     '(a directory written by `python -m tools.convert`).')
  variables, _ = load_orbax(path)
  keep = (lambda tree: tree) if head else (
      lambda tree: {c: {k: v for k, v in sub.items() if k != 'head'} for c, sub in tree.items()})
  ckpt.check_tree(keep(abstract_variables(model)), keep(variables), what=f'orbax checkpoint {ckpt.abs_path(path)}')
  return keep(variables)


def load_backbone(path: str, fmt: str, model: models.ResNet) -> PyTree:
  """``load_network`` without the head."""
  return load_network(path, fmt, model, head=False)
