"""Orbax checkpoints: atomic saves, restores checked against the expected tree, and one directory per stage.

Layout under a workdir (each ``<dir>`` is an orbax ``CheckpointManager`` root with ``<step>/`` sub-directories)::

  <workdir>/vanilla/<step>/{state,data,meta}           the baseline network
  <workdir>/superclass/<step>/{state,data,meta}        the generalist: also the specialists' frozen base
  <workdir>/specialists/<k>_<name>/<step>/{state,compressed,data,meta}
                                                       one directory per specialist: its delta training state and
                                                       its compressed delta, never the base

Items are saved as plain nested dicts (``flax.serialization.to_state_dict``), so a checkpoint can be read without
this package's classes. Orbax writes a step into a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous step as the latest restorable one.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any
JSON_ITEMS = ('data', 'meta')


class CheckpointMismatchError(ValueError):
  """The tree stored in a checkpoint does not have the shapes/dtypes the current config expects."""


def abs_path(path: str) -> str:
  """Orbax requires absolute paths; expands ``~`` and makes relative paths absolute."""
  return os.path.abspath(os.path.expanduser(path))


def make_manager(directory: str, *, max_to_keep: int | None = 2, item_names=('state', 'data', 'meta'),
                 create: bool = True):
  """A CheckpointManager rooted at ``directory`` (created if missing and ``create``; readers pass False so that
  loading leaves nothing behind). Saves are synchronous (simplest to reason about on preemption); the loop decides
  when to save."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create, enable_async_checkpointing=False)
  # Handlers are named up front so that a fresh process can read metadata before any save or restore.
  handlers = {name: ocp.JsonCheckpointHandler() if name in JSON_ITEMS else ocp.StandardCheckpointHandler()
              for name in item_names}
  return ocp.CheckpointManager(abs_path(directory), options=options, item_handlers=handlers)


def _to_host(tree: PyTree) -> PyTree:
  return jax.tree.map(np.asarray, tree)


def save(manager, step: int, *, state: PyTree, data: Mapping | None = None, meta: Mapping | None = None,
         extra: Mapping[str, PyTree] | None = None, force: bool = True) -> bool:
  """Saves ``state`` (any pytree, stored as a state dict), the data-iterator state and metadata as JSON, and
  ``extra`` pytrees (e.g. the compressed delta) as their own items. Returns whether a checkpoint was written."""
  items = {'state': ocp.args.StandardSave(_to_host(flax.serialization.to_state_dict(state)))}
  if data is not None:
    items['data'] = ocp.args.JsonSave(dict(data))
  if meta is not None:
    items['meta'] = ocp.args.JsonSave(dict(meta))
  for name, tree in (extra or {}).items():
    items[name] = ocp.args.StandardSave(_to_host(tree))
  saved = manager.save(int(step), args=ocp.args.Composite(**items), force=force)
  manager.wait_until_finished()
  return saved


def _leaf_table(tree: PyTree) -> dict[str, tuple[tuple[int, ...], str]]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
  table = {}
  for path, leaf in leaves:
    if leaf is None:
      continue
    key = '/'.join(str(getattr(p, 'key', getattr(p, 'name', getattr(p, 'idx', p)))) for p in path)
    table[key] = (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
  return table


def check_tree(expected: PyTree, stored: PyTree, *, what: str = 'checkpoint') -> None:
  """Raises CheckpointMismatchError listing every leaf whose path, shape or dtype differs.

  ``expected`` holds arrays or ShapeDtypeStructs; ``stored`` is orbax's metadata tree (leaves with .shape/.dtype).
  Orbax may otherwise restore a mismatched tree silently (e.g. a 10-class head into a 12-class model).
  """
  want, have = _leaf_table(expected), _leaf_table(stored)
  problems = []
  for key in sorted(set(want) | set(have)):
    if key not in have:
      problems.append(f'  {key}: expected {want[key][0]} {want[key][1]}, missing from the {what}')
    elif key not in want:
      problems.append(f'  {key}: stored {have[key][0]} {have[key][1]}, not expected by the current config')
    elif want[key] != have[key]:
      problems.append(f'  {key}: expected {want[key][0]} {want[key][1]}, stored {have[key][0]} {have[key][1]}')
  if problems:
    raise CheckpointMismatchError(
        f'The {what} does not match the model/config being restored ({len(problems)} leaves differ):\n'
        + '\n'.join(problems[:50]) + ('\n  ...' if len(problems) > 50 else '')
        + '\nUse the config the checkpoint was trained with, or a fresh --workdir.')


def restore(manager, *, target: PyTree, step: int | None = None, extra: Mapping[str, PyTree] | None = None,
            with_data: bool = True) -> tuple[PyTree, dict | None, dict | None, dict[str, PyTree]]:
  """Restores (state, data, meta, extra) at ``step`` (default: latest).

  ``target`` is a pytree of the expected structure (arrays or ShapeDtypeStructs); the stored tree is checked against
  it first (see ``check_tree``). ``extra`` maps item names to their expected trees.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {manager.directory}: train this stage first.')
  target_dict = flax.serialization.to_state_dict(target)
  metadata = manager.item_metadata(step)
  check_tree(target_dict, metadata['state'].tree, what=f'checkpoint {manager.directory}/{step}/state')
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), target_dict)
  items = {'state': ocp.args.StandardRestore(abstract), 'meta': ocp.args.JsonRestore()}
  if with_data:
    items['data'] = ocp.args.JsonRestore()
  for name, tree in (extra or {}).items():
    check_tree(tree, metadata[name].tree, what=f'checkpoint {manager.directory}/{step}/{name}')
    items[name] = ocp.args.StandardRestore(jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree))
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  state = flax.serialization.from_state_dict(target, _to_host(restored['state']))
  extras = {name: _to_host(restored[name]) for name in (extra or {})}
  return state, restored.get('data') if with_data else None, restored.get('meta'), extras


def read_meta(directory: str, step: int | None = None) -> dict:
  """The JSON metadata of a stage's checkpoint (config, hierarchy, metrics) without reading any array."""
  if not os.path.isdir(abs_path(directory)):
    raise FileNotFoundError(f'No checkpoint in {abs_path(directory)}.')
  manager = make_manager(directory, create=False)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {abs_path(directory)}.')
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
