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

Integrity. ``save`` refuses non-finite arrays and records a SHA-256 of every array item in the step's metadata
(``meta['checksums']``); ``restore`` recomputes them and rejects non-finite arrays, so a step that was truncated,
overwritten or garbled raises ``CheckpointCorruptError`` naming its directory. ``restore_latest`` then falls back
to the newest intact step, with a warning saying what was lost, and (for a run that resumes) renames the corrupt
step to ``<step>.corrupt-<n>`` so that it is kept for inspection and the step can be written again.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import shutil
from typing import Any, Callable, Mapping

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any
JSON_ITEMS = ('data', 'meta')


class CheckpointCorruptError(ValueError):
  """A step cannot be read back intact (missing or truncated item, garbled metadata, checksum, non-finite values)."""


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


def tree_sha256(tree: PyTree) -> str:
  """SHA-256 over a pytree's leaf paths, dtypes, shapes and bytes (numpy or jax arrays)."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    leaf = np.ascontiguousarray(leaf)
    digest.update(f'{jax.tree_util.keystr(path)}|{leaf.dtype.str}|{leaf.shape}|'.encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


def nonfinite_leaves(tree: PyTree) -> list[str]:
  """Paths of the floating-point leaves that hold a NaN or an infinity."""
  return [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
          if np.issubdtype(np.asarray(leaf).dtype, np.floating) and not np.isfinite(leaf).all()]


def save(manager, step: int, *, state: PyTree, data: Mapping | None = None, meta: Mapping | None = None,
         extra: Mapping[str, PyTree] | None = None, force: bool = True) -> bool:
  """Saves ``state`` (any pytree, stored as a state dict), the data-iterator state and metadata as JSON, and
  ``extra`` pytrees (e.g. the compressed delta) as their own items. Returns whether a checkpoint was written.

  Raises FloatingPointError, writing nothing, if any array holds a NaN or an infinity.
  """
  arrays = {'state': _to_host(flax.serialization.to_state_dict(state)),
            **{name: _to_host(tree) for name, tree in (extra or {}).items()}}
  bad = [f'{name}{p}' for name, tree in arrays.items() for p in nonfinite_leaves(tree)]
  if bad:
    raise FloatingPointError(f'refusing to save step {step} to {manager.directory}: non-finite values in '
                             f'{bad[:5]}{" ..." if len(bad) > 5 else ""}.')
  _check_free_space(manager, step, sum(leaf.nbytes for leaf in jax.tree.leaves(arrays)))
  items = {name: ocp.args.StandardSave(tree) for name, tree in arrays.items()}
  if data is not None:
    items['data'] = ocp.args.JsonSave(dict(data))
  items['meta'] = ocp.args.JsonSave({**dict(meta or {}),
                                     'checksums': {name: tree_sha256(tree) for name, tree in arrays.items()}})
  try:
    saved = manager.save(int(step), args=ocp.args.Composite(**items), force=force)
    manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except  (orbax reports a full disk as ValueError)
    if 'No space left on device' in str(e):
      raise OSError(errno.ENOSPC, _no_space(manager, step, 'the disk filled up while writing it')) from e
    raise
  return saved


def _no_space(manager, step: int, why: str) -> str:
  kept = manager.latest_step()
  return (f'No space left on device: step {step} was not saved to {manager.directory} ({why}). Free space (or lower '
          f'config.max_to_keep) and rerun the same command; '
          + (f'the last good checkpoint, step {kept}, is kept.' if kept is not None else 'no step was saved yet.'))


def _check_free_space(manager, step: int, array_bytes: int) -> None:
  """Refuses a save that cannot fit before orbax starts it (a half-written save only leaves noise behind)."""
  directory = str(manager.directory)
  while not os.path.exists(directory):
    directory = os.path.dirname(directory)
  free = shutil.disk_usage(directory).free
  needed = array_bytes + (64 << 10)  # the arrays uncompressed, plus metadata
  if free < needed:
    raise OSError(errno.ENOSPC, _no_space(manager, step, f'it needs about {needed / 2**20:.1f} MiB, '
                                                         f'{free / 2**20:.1f} MiB are free'))


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


@dataclasses.dataclass
class Restored:
  """What ``restore`` read: the step, the state (None when not asked for), the data-iterator state, the metadata and
  the extra items."""
  step: int
  state: PyTree
  data: dict | None
  meta: dict
  extra: dict[str, PyTree]


def restore(manager, *, target: PyTree | None, step: int | None = None,
            extra: Mapping[str, PyTree | None] | None = None, with_data: bool = True,
            check_meta: Callable[[dict, int], None] | None = None) -> Restored:
  """Restores ``step`` (default: latest).

  ``target`` is a pytree of the expected state (arrays or ShapeDtypeStructs), or None not to read the state; the
  stored tree is checked against it (``CheckpointMismatchError``, see ``check_tree``). ``extra`` maps item names to
  their expected trees, or to None to read them as stored (self-describing items). ``check_meta(meta, step)`` runs
  on the metadata before any array is read (e.g. a settings check; its errors pass through). A step that cannot be
  read back intact raises ``CheckpointCorruptError``.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {manager.directory}: train this stage first.')
  where = f'{manager.directory}/{step}'
  try:
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    metadata = manager.item_metadata(step)
    stored = {name: metadata[name].tree for name in ['state'] * (target is not None) + list(extra or {})}
  except Exception as e:  # pylint: disable=broad-except  (orbax raises many types for a damaged step)
    raise CheckpointCorruptError(f'{where}: unreadable ({type(e).__name__}: {str(e).splitlines()[0][:300]}).') from e
  if not isinstance(meta, dict):
    raise CheckpointCorruptError(f'{where}: the meta item is missing or not a JSON object.')
  if check_meta is not None:
    check_meta(meta, int(step))
  expected = dict(extra or {})
  if target is not None:
    expected['state'] = flax.serialization.to_state_dict(target)
  items = {}
  if with_data:
    items['data'] = ocp.args.JsonRestore()
  for name, tree in expected.items():
    if tree is None:
      items[name] = ocp.args.StandardRestore()
      continue
    check_tree(tree, stored[name], what=f'checkpoint {where}/{name}')
    items[name] = ocp.args.StandardRestore(jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree))
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items)) if items else {}
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointCorruptError(f'{where}: unreadable ({type(e).__name__}: {str(e).splitlines()[0][:300]}).') from e
  arrays = {name: _to_host(restored[name]) for name in expected}
  for name, tree in arrays.items():
    checksum = (meta.get('checksums') or {}).get(name)
    if checksum is not None and tree_sha256(tree) != checksum:
      raise CheckpointCorruptError(f'{where}/{name}: checksum mismatch (the files changed after they were written).')
    bad = nonfinite_leaves(tree)
    if bad:
      raise CheckpointCorruptError(f'{where}/{name}: non-finite values in {bad[:5]}.')
  state = flax.serialization.from_state_dict(target, arrays.pop('state')) if target is not None else None
  return Restored(int(step), state, restored.get('data') if with_data else None, meta, arrays)


def restore_latest(manager, *, target: PyTree | None, extra: Mapping[str, PyTree | None] | None = None,
                   with_data: bool = True, check_meta: Callable[[dict, int], None] | None = None,
                   quarantine: bool = False) -> Restored | None:
  """``restore`` of the newest step that reads back intact, or None when there is no step at all.

  Corrupt newer steps are skipped with a warning naming them and the step restored instead; with ``quarantine``
  (a run that will save again) each is renamed to ``<step>.corrupt-<n>``. Raises ``CheckpointCorruptError`` when
  no step is intact.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None
  problems = []
  for step in steps:
    try:
      restored = restore(manager, target=target, step=step, extra=extra, with_data=with_data,
                         check_meta=check_meta)
    except CheckpointCorruptError as e:
      problems.append(str(e))
      continue
    if problems:
      action = 'moved aside' if quarantine else 'skipped'
      logging.warning('%d corrupt checkpoint step(s) %s; restored step %d instead (the training after it is lost):'
                      '\n  %s', len(problems), action, step, '\n  '.join(problems))
      if quarantine:
        for bad in steps[:steps.index(step)]:
          _quarantine(manager, bad)
    return restored
  raise CheckpointCorruptError(f'no intact checkpoint in {manager.directory}:\n  ' + '\n  '.join(problems) +
                               f'\nDelete {manager.directory} to start this stage again.')


def _quarantine(manager, step: int) -> None:
  if jax.process_index() == 0:  # one process renames (shared file system); the others wait for it
    src = os.path.join(str(manager.directory), str(step))
    n = 0
    while os.path.exists(f'{src}.corrupt-{n}'):
      n += 1
    os.rename(src, f'{src}.corrupt-{n}')
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f'supersub_jax quarantine {manager.directory} {step}')
  manager.reload()


def read_meta(directory: str, step: int | None = None) -> dict:
  """The JSON metadata of a stage's checkpoint (config, hierarchy, metrics) without reading any array."""
  if not os.path.isdir(abs_path(directory)):
    raise FileNotFoundError(f'No checkpoint in {abs_path(directory)}.')
  manager = make_manager(directory, create=False)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {abs_path(directory)}.')
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
