"""The host runtime: devices and data placement (pmap or shard_map), ``jax.distributed``, preemption, exit codes.
(Interrupts, which must be in place before jax is even imported, are ``supersub_jax.interrupts``.)

It compiles and places the per-device functions of ``supersub_jax.step`` but knows nothing of what a stage is;
``supersub_jax.runner`` drives it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from supersub_jax import interrupts
from supersub_jax.choices import PARALLELISMS
from supersub_jax.step import AXIS  # the device axis the step's collectives reduce over

PyTree = Any


# ----------------------------------------------------------------------------------------------------------------------
# Parallel compilation: pmap (default) or shard_map over a Mesh, with the same per-device function.


@dataclasses.dataclass(frozen=True)
class Parallel:
  """How per-device functions are compiled and how host data is placed.

  ``kind='pmap'``: state and frozen pytrees carry a leading axis of local devices; batches are
  [local_devices, per_device_batch, ...] as the input pipeline yields them.
  ``kind='shard_map'``: state and frozen pytrees are global arrays replicated over a 1-D mesh of all devices; batches
  are assembled into global arrays sharded along their batch axis.
  """
  kind: str = 'pmap'

  def __post_init__(self):
    if self.kind not in PARALLELISMS:
      raise ValueError(f'config.parallelism={self.kind!r}: use one of {PARALLELISMS}.')

  @functools.cached_property
  def mesh(self) -> Mesh:
    return Mesh(np.asarray(jax.devices()), (AXIS,))

  @functools.cached_property
  def _pmap_sharding(self):
    # pmap's own output layout (leading axis over the local devices), read off one identity pmap and reused for
    # leaves of any shape. Its axis name must be the compiled functions' own: pmap keys its cache on the inputs'
    # sharding, mesh axis names included, so state placed under another name would compile the step a second time
    # when its own output comes back as the next input.
    return jax.pmap(lambda y: y, axis_name=AXIS)(np.zeros(jax.local_device_count(), np.float32)).sharding

  def compile(self, fn: Callable, *, donate_state: bool = True) -> Callable:
    """Compiles ``fn(state, batch, frozen)`` written for one device."""
    if self.kind == 'pmap':
      return jax.pmap(fn, axis_name=AXIS, donate_argnums=(0,) if donate_state else ())
    # check_vma=False keeps pmap's semantics: the gradient of a replicated parameter computed inside the body is the
    # per-device gradient, which train_step then averages with pmean. (With check_vma=True JAX would insert the psum
    # itself when transposing the implicit broadcast, and the pmean would leave a sum over devices.)
    mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), P(AXIS), P()), out_specs=P(), check_vma=False)
    return jax.jit(mapped, donate_argnums=(0,) if donate_state else ())

  def replicate(self, tree: PyTree) -> PyTree:
    """Host pytree -> the layout ``compile``d functions take for state and frozen arguments."""
    if self.kind == 'pmap':
      n = jax.local_device_count()
      return jax.tree.map(
          lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), self._pmap_sharding), tree)
    sharding = NamedSharding(self.mesh, P())
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)

  def unreplicate(self, tree: PyTree) -> PyTree:
    """One host copy (numpy) of a replicated pytree."""
    if self.kind == 'pmap':  # each device's shard keeps a leading axis of size 1
      return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)).reshape(x.shape[1:]), tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)

  def shard_batch(self, batch: Mapping[str, np.ndarray]) -> Mapping[str, jax.Array]:
    """Host batch [local_devices, per_device_batch, ...] -> device arrays in the layout of the compiled step.

    The copy is dispatched here, asynchronously, not inside the step's call: a pmapped call given numpy arrays
    copies them synchronously on every call.
    """
    if self.kind == 'pmap':
      return {k: jax.device_put(v, self._pmap_sharding) for k, v in batch.items()}
    sharding = NamedSharding(self.mesh, P(AXIS))
    return {k: jax.make_array_from_process_local_data(sharding, v.reshape((-1,) + v.shape[2:]))
            for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------------------------------
# Distributed set-up


def initialize_distributed(cfg) -> None:
  """``jax.distributed.initialize`` from ``config.distributed`` (no-op unless enabled).

  With ``coordinator_address`` empty, JAX auto-detects the cluster (Cloud TPU, SLURM, ...). On CPU, gloo collectives
  are selected so that multi-process pmap works.
  """
  if cfg is None or not cfg.get('enabled', False):
    return
  if jax.distributed.is_initialized():
    return
  if cfg.get('cpu_collectives', ''):
    jax.config.update('jax_cpu_collectives_implementation', cfg.cpu_collectives)
  kwargs = {}
  if cfg.get('coordinator_address', ''):
    kwargs = dict(coordinator_address=cfg.coordinator_address, num_processes=int(cfg.num_processes),
                  process_id=int(cfg.process_id))
  if cfg.get('local_device_ids', None):
    kwargs['local_device_ids'] = list(cfg.local_device_ids)
  jax.distributed.initialize(**kwargs)


def initialize_runtime(config) -> None:
  """What every entry point does before any other JAX call: ``jax.distributed`` (``config.distributed``) and XLA's
  persistent compilation cache (``config.compilation_cache_dir``; rerunning a command then loads its compiled
  programs instead of compiling them again, e.g. about 10 s per ResNet initialisation on a 2-core CPU)."""
  initialize_distributed(config.distributed)
  cache = config.get('compilation_cache_dir', '')
  if cache and not jax.config.jax_compilation_cache_dir:  # JAX_COMPILATION_CACHE_DIR in the environment wins
    jax.config.update('jax_compilation_cache_dir', os.path.abspath(os.path.expanduser(cache)))



def device_memory() -> tuple[int, str]:
  """(bytes one device may use, what they are): the accelerator's own memory, or on CPU the host's RAM shared by
  its devices."""
  device = jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and stats.get('bytes_limit'):
    return int(stats['bytes_limit']), f'the {device.device_kind} memory'
  ram = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  return ram // jax.local_device_count(), f'the host RAM shared by {jax.local_device_count()} device(s)'


# ----------------------------------------------------------------------------------------------------------------------
# Preemption and exit codes


# Defined in interrupts (no jax: the command-line layer catches it without importing the runtime).
PREEMPTED_EXIT_CODE = interrupts.PREEMPTED_EXIT_CODE
Preempted = interrupts.Preempted


class Preemption:
  """SIGTERM -> save at the same step on every process, then stop.

  One process: a SIGTERM handler sets a flag. Several (``jax.distributed`` initialised): JAX's preemption service
  (which installs its own SIGTERM notifier, so no Python handler is set) propagates a notice received by any process
  to all, and ``reached_preemption_sync_point`` answers True at the same step everywhere. Its step ids must grow
  over the whole process, across stages and specialists, so ``reached`` counts steps itself. Use one object for a
  whole run (``with Preemption() as p``), so that a signal between two stages is not lost.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._count = 0
    self._multiprocess = jax.process_count() > 1

  def __enter__(self):
    if self._multiprocess:
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # not in the main thread: no handler, nothing to restore.
      self._previous = None
    return self

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self) -> bool:
    """Called once per step, after it: whether to save now and stop."""
    self._count += 1
    if self._multiprocess:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(self._count)
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False
