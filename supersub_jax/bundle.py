"""The inference bundle: one msgpack file with everything two-stage inference needs, readable without training code.

A bundle holds the generalist's variables, every specialist's compressed delta (`exported.py`'s records), head and
BatchNorm statistics, its spec, the hierarchy (as `Hierarchy.to_dict` JSON), a model description and the decision
rule it is made for (the report's verdict rule), with the flat network that rule routes by when it routes by one
(`load_router`); no optimizer state, no dense specialist. `python -m tools.convert bundle` writes one from a
trained workdir (`convert.make_bundle`);
`load_bundle` reads it back, checking every part before anything is built from it, and `bank.build_supersub` takes
what it returns. This module imports no training code (stages, specialists, the recipe, the runner, the step).
"""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
from flax import serialization

from supersub_jax import exported as exported_lib
from supersub_jax import files
from supersub_jax import cut as cut_lib
from supersub_jax import decide
from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax import models
from supersub_jax import weights

BUNDLE_FORMAT = 'supersub_jax.bundle/1'


def write_bundle(path: str, bundle: dict) -> int:
  """Writes ``bundle`` (``convert.make_bundle``'s pytree) to ``path`` in one atomic write; returns its bytes."""
  return files.write_bytes(path, serialization.msgpack_serialize(bundle))


def load_bundle(path: str) -> tuple[dict, list[dict], hierarchy_lib.Hierarchy, dict]:
  """-> (generalist variables, exported specialists in superclass order, each with its ``'spec'``, which
  ``bank.build_supersub`` takes; hierarchy; model description: 'name', 'stem', 'width', 'image_size').

  Bundles written before specialists described themselves (no ``'spec'``) get the one their time implies: the
  cut their model description names ('branch'), 'stem' before shared trunks existed.
  """
  tree = _restore(path)
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
      cut_lib.Cut(spec['cut'])  # an unknown layer group is damage, reported below
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
                     '`python -m tools.convert bundle`.') from e
  return generalist, exported, hierarchy, model


def _restore(path: str) -> dict:
  """The bundle's pytree, after its format is checked (ValueError naming the problem and the fix otherwise)."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    # Every array in msgpack is its own bytes (flax checks each buffer against its shape): nothing here allocates
    # more than the file holds. The sizes the bundle only states (the hierarchy's, the model's) are checked by the
    # readers.
    tree = serialization.msgpack_restore(data)
  except Exception as e:  # pylint: disable=broad-except  (msgpack raises several unrelated types)
    raise ValueError(f'{path} is not a readable msgpack file ({type(e).__name__}: {e}); write it with '
                     '`python -m tools.convert bundle`.') from e
  found = tree.get('format') if isinstance(tree, dict) else None
  if found != BUNDLE_FORMAT:
    raise ValueError(f'{path} is not a {BUNDLE_FORMAT} file (format {found!r}); write it with '
                     '`python -m tools.convert bundle`.')
  return tree


def load_router(path: str) -> tuple[str, dict | None]:
  """-> (the decision rule the bundle was made for, as ``decide.Rule.parse`` reads it: the report's verdict rule,
  'hard' for bundles from before bundles named one; the flat network's ``{'params', 'batch_stats'}`` that the rule
  routes by, None when it routes by the generalist). Run it with ``models.create_model`` over the hierarchy's
  subclasses (``flat_model=`` of ``inference.predict``)."""
  tree = _restore(path)
  part = 'rule'
  try:
    rule = decide.Rule.parse(str(tree.get('rule', 'hard')))
    if not rule.needs_flat:
      return rule.key, None
    part = 'flat network'
    if 'flat' not in tree:
      raise KeyError(f'rule {rule.key!r} routes by a flat network, and the bundle holds none')
    hierarchy = hierarchy_lib.Hierarchy.from_dict(json.loads(tree['hierarchy']))
    model = {k: v for k, v in dict(tree['model']).items() if k != 'branch'}
    flat = {'params': dict(tree['flat']['params']), 'batch_stats': dict(tree['flat']['batch_stats'])}
    _check_model(model, flat, hierarchy.num_subclasses)
    _check_finite(flat)
  except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:
    raise ValueError(f'{path}: damaged bundle, in its {part} ({type(e).__name__}: {e}); write it again with '
                     '`python -m tools.convert bundle`.') from e
  return rule.key, flat


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
