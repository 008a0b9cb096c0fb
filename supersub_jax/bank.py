"""The specialist bank: N exported specialists stacked for the compiled predictors (host side, numpy, run once).

``make_bank`` decodes each exported specialist (``exported.decode_record``, the one validated reader) and stacks the
N of them on a leading axis, so that a compiled function picks specialist ``k`` with a *traced* index. The bank keeps
the exported encodings on device where they allow random access: packed int8/int4/int2 codes stay packed and kept
positions are a bitmask or small unsigned indices, whichever is smaller (``inference`` unpacks them inside the
compiled function, for one specialist at a time). Elias-Fano positions, the densest code on disk, are decoded here
into one of those two, which the compiled gather reads directly. Heads are stored side by side, without padding to
the widest one. So the bank's device bytes stay close to the exported bytes (``nbytes`` against
``exported.exported_nbytes``); what it adds is padding to the largest specialist per leaf and, for Elias-Fano
positions, the difference to a bitmask or indices, which grows as density and bits fall (at density 0.05 with int4
codes, positions are most of a specialist's bytes).

``build_supersub`` assembles everything two-stage inference reads into one ``SuperSub`` pytree: the generalist, the
bank and the hierarchy's label maps. Nothing here is jitted; ``supersub_jax.inference`` holds the compiled side.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from supersub_jax import cut as cut_lib
from supersub_jax import delta as delta_lib
from supersub_jax import exported as exported_lib
from supersub_jax import positions as positions_lib
from supersub_jax import quant

PyTree = Any


@struct.dataclass
class SpecialistBank:
  """N specialists stacked on a leading axis (see ``make_bank``). All leaves are arrays.

  Attributes:
    deltas: '/'-joined backbone param path -> record, for every leaf (of L entries, C channels in its last axis)
      that any specialist changes. A record holds:
        ``'count'`` int32[N]: kept entries of each specialist (0: no delta on this leaf);
        positions, one of ``'bitmask'`` uint8[N, ceil(L/8)] (``np.packbits`` of the flat C-order mask: bit 7 of
        byte 0 is entry 0) or ``'indices'`` uint8/16/32[N, K] (ascending flat positions; entries past ``count``
        are 0 and ignored), whichever is smaller for this leaf over all N;
        values, either ``'codes'`` uint8[N, P] (``quant.pack_int`` bytes of the kept int codes, in position
        order) with ``'bits'`` int32[N] (8, 4 or 2) and ``'scale'`` float32[N, C'] (C' = C when some specialist
        has per-channel scales, else 1; entry at flat position i uses ``scale[i % C']``), or ``'values'``
        float32[N, K] when some specialist stored this leaf unquantized.
      K is the largest count (at least 1) and P the largest packed length.
    head: ``'kernel'`` float32[D, T], ``'bias'`` float32[T]: the N heads' columns side by side, each its n_k real
      columns then, with dustbins, its dustbin column (T = sum of n_k + d); ``'offset'`` int32[N]: specialist k's
      first column.
    batch_stats: the generalist's batch_stats tree with every leaf stacked to [N, ...].
    num_subclasses: int32[N], n_k of each specialist.
    dustbin_correction: float32[N], what inference adds to each specialist's dustbin logit
      (``exported.dustbin_logit_correction``), or None when the specialists have no dustbin (d = 0).
  """
  deltas: dict
  head: dict
  batch_stats: PyTree
  num_subclasses: jax.Array
  dustbin_correction: jax.Array | None = None

  @property
  def dustbin(self) -> int:
    """d: 1 when every specialist has a dustbin column, else 0."""
    return int(self.dustbin_correction is not None)


@struct.dataclass
class HierarchyArrays:
  """The parts of a ``hierarchy.Hierarchy`` that inference needs, as arrays.

  Attributes:
    local_to_label: int32[N, S], global subclass label of (superclass, local index); -1 on padding.
    local_valid: bool[N, S], True where the local index is a real subclass (S = max_subclasses).
    label_to_superclass: int32[M], the superclass of each global subclass label.
  """
  local_to_label: jax.Array
  local_valid: jax.Array
  label_to_superclass: jax.Array

  @classmethod
  def from_hierarchy(cls, hierarchy) -> 'HierarchyArrays':
    return cls(local_to_label=jnp.asarray(hierarchy.local_to_label, jnp.int32),
               local_valid=jnp.asarray(hierarchy.local_valid, bool),
               label_to_superclass=jnp.asarray(hierarchy.label_to_superclass, jnp.int32))

  @property
  def max_subclasses(self) -> int:
    return int(self.local_valid.shape[1])


@struct.dataclass
class SuperSub:
  """Everything two-stage inference reads: a pytree, passed as a traced argument to the jitted predictors.

  Attributes:
    generalist: ``{'params', 'batch_stats'}`` of the generalist (head of N outputs).
    bank: the N specialists (``SpecialistBank``).
    hierarchy: ``HierarchyArrays`` of the N superclasses.
    cut: where the specialists branch (``cut.Cut``, from their specs; static): the layers before it are the
      generalist's, shared by every specialist.
  The specialists' base (``base``) is the generalist's backbone from the cut on: derived, not stored, so it is
  held once.
  """
  generalist: dict
  bank: SpecialistBank
  hierarchy: HierarchyArrays
  cut: cut_lib.Cut = struct.field(pytree_node=False, default=cut_lib.Cut())

  @property
  def base(self) -> dict:
    return self.cut.split(cut_lib.split_head(self.generalist['params'])[0])[1]

  @property
  def num_outputs(self) -> int:
    """The specialist model's outputs: S = max_subclasses, plus the dustbin column when the specialists have one."""
    return self.hierarchy.max_subclasses + self.bank.dustbin


def _flat_leaves(tree: PyTree) -> dict[str, Any]:
  return {delta_lib.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _stack_positions(decoded, size: int) -> dict[str, np.ndarray]:
  """The smaller of a stacked bitmask and stacked (padded) indices for one leaf."""
  n = len(decoded)
  k_max = max([1] + [d.indices.size for d in decoded if d is not None])
  index_dtype = positions_lib.index_dtype(size)
  bitmask_bytes = n * ((size + 7) // 8)
  if n * k_max * index_dtype.itemsize < bitmask_bytes:
    indices = np.zeros((n, k_max), index_dtype)
    for i, d in enumerate(decoded):
      if d is not None:
        indices[i, :d.indices.size] = d.indices
    return {'indices': indices}
  bitmask = np.zeros((n, (size + 7) // 8), np.uint8)
  for i, d in enumerate(decoded):
    if d is not None:
      mask = np.zeros(size, bool)
      mask[d.indices] = True
      bitmask[i] = np.packbits(mask)
  return {'bitmask': bitmask}


def _stack_values(decoded, leaf_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
  n = len(decoded)
  present = [d for d in decoded if d is not None]
  k_max = max([1] + [d.indices.size for d in present])
  channels = leaf_shape[-1]
  if any(d.values is not None for d in present):
    # Some specialist stored this leaf unquantized: hold float values for all of them. codes * scale is an exact
    # float32 product (grid scales, see quant), so dequantizing here gives the bits materialize_compressed gives.
    values = np.zeros((n, k_max), np.float32)
    for i, d in enumerate(decoded):
      if d is None:
        continue
      if d.values is not None:
        v = d.values
      else:
        ch = d.indices % channels if d.scale.size > 1 else np.zeros_like(d.indices)
        v = d.codes.astype(np.float32) * d.scale[ch]
      values[i, :v.size] = v
    return {'values': values}
  c = channels if any(d.scale.size > 1 for d in present) else 1
  packed = [None if d is None else quant.pack_int(d.codes, d.bits) for d in decoded]
  codes = np.zeros((n, max([1] + [p.size for p in packed if p is not None])), np.uint8)
  bits = np.full(n, 8, np.int32)
  scale = np.ones((n, c), np.float32)  # 1.0 for specialists without this leaf: they keep nothing
  for i, d in enumerate(decoded):
    if d is not None:
      codes[i, :packed[i].size] = packed[i]
      bits[i] = d.bits
      scale[i] = np.broadcast_to(d.scale, (c,)) if d.scale.size == 1 else d.scale
  return {'codes': codes, 'bits': bits, 'scale': scale}


def _stack_record(decoded: list, leaf_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
  """Per-specialist decoded records of one leaf (None = no delta) -> one bank record (``SpecialistBank``)."""
  size = int(np.prod(leaf_shape, dtype=np.int64))
  count = np.asarray([0 if d is None else d.indices.size for d in decoded], np.int32)
  return {'count': count, **_stack_positions(decoded, size), **_stack_values(decoded, leaf_shape)}


def make_bank(exported: Sequence[Mapping[str, Any]], base: PyTree) -> SpecialistBank:
  """Stacks N exported specialists into a ``SpecialistBank`` on the default device (host-side, once at load time).

  Args:
    exported: specialist k's ``exported.export`` dict: ``'delta'`` (``CompressedDelta`` over ``base``),
      ``'head'`` (``'kernel'`` float32[D, n_k + d], ``'bias'`` float32[n_k + d]; d = 1 when its spec has a dustbin),
      ``'batch_stats'`` (one layout for all). Specialists may differ in bits (8/4/2/unquantized), scale
      granularity, kept entries and delta leaves, not in having a dustbin.
    base: the generalist's backbone params (no ``'head'``) that the deltas may change (``SuperSub.base``: from the
      specialists' cut on); only its structure and shapes are read here.
  Raises:
    ValueError naming the specialist and leaf for anything that does not fit ``base`` or the other specialists.
  """
  if not exported:
    raise ValueError('make_bank needs at least one exported specialist.')
  if 'head' in base:
    raise ValueError("base has a 'head' entry; pass the generalist's backbone (cut.split_head(params)[0]).")
  base_leaves = {p: tuple(np.shape(x)) for p, x in _flat_leaves(base).items()}
  n = len(exported)
  decoded: dict[str, list] = {}
  heads, stats = [], []
  stats_struct = None
  dustbins = [exported_lib.dustbin_of(ex) for ex in exported]
  if any(dustbins) and not all(dustbins):
    raise ValueError(f'specialists {[k for k, d in enumerate(dustbins) if not d]} have no dustbin and '
                     f'{[k for k, d in enumerate(dustbins) if d]} have one; one bank needs all or none.')
  d = int(bool(dustbins[0]))
  for k, ex in enumerate(exported):
    missing = {'delta', 'head', 'batch_stats'} - set(ex)
    if missing:
      raise ValueError(f'exported specialist {k} lacks {sorted(missing)}; build it with exported.export.')
    for keys, rec in exported_lib.walk_records(ex['delta']):
      path = '/'.join(keys)
      where = f'specialist {k}, delta leaf {path!r}'
      if path not in base_leaves:
        raise ValueError(f'{where} is not a base param (base has e.g. {sorted(base_leaves)[:4]}); export the '
                         'delta against the same backbone as the generalist.')
      decoded.setdefault(path, [None] * n)[k] = exported_lib.decode_record(rec, where,
                                                                          expected_shape=base_leaves[path])
    kernel = np.asarray(ex['head']['kernel'], np.float32)
    bias = np.asarray(ex['head']['bias'], np.float32)
    if kernel.ndim != 2 or bias.shape != (kernel.shape[1],) or kernel.shape[1] < 1 + d:
      raise ValueError(f'specialist {k} head has kernel {kernel.shape} and bias {bias.shape}; expected [D, n_k + {d}] '
                       f'and [n_k + {d}] with n_k >= 1 ({"with" if d else "without"} a dustbin column).')
    if heads and kernel.shape[0] != heads[0][0].shape[0]:
      raise ValueError(f'specialist {k} head has {kernel.shape[0]} input features, specialist 0 has '
                       f'{heads[0][0].shape[0]}; all specialists share the backbone.')
    heads.append((kernel, bias))
    struct_k = jax.tree.structure(ex['batch_stats'])
    if stats_struct is None:
      stats_struct = struct_k
    elif struct_k != stats_struct:
      raise ValueError(f'specialist {k} batch_stats tree differs from specialist 0\'s; every specialist keeps '
                       'the generalist\'s BatchNorm layout.')
    stats.append(ex['batch_stats'])

  columns = np.asarray([kernel.shape[1] for kernel, _ in heads], np.int32)
  sizes = columns - d
  head = {'kernel': np.concatenate([kernel for kernel, _ in heads], axis=1),
          'bias': np.concatenate([bias for _, bias in heads]),
          'offset': (np.cumsum(columns) - columns).astype(np.int32)}
  correction = np.asarray([exported_lib.dustbin_logit_correction(x) for x in dustbins], np.float32) if d else None
  try:
    batch_stats = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *stats)
  except ValueError as e:
    raise ValueError(f'specialists\' batch_stats leaves differ in shape: {e}') from e
  deltas = {p: _stack_record(decoded[p], base_leaves[p]) for p in sorted(decoded)}
  return jax.device_put(SpecialistBank(deltas=deltas, head=head, batch_stats=batch_stats, num_subclasses=sizes,
                                       dustbin_correction=correction))


def nbytes(bank: SpecialistBank) -> int:
  """Bytes the bank holds on device (compact deltas, heads, BatchNorm statistics, counts)."""
  return delta_lib.tree_nbytes(bank)


def build_supersub(generalist_variables: Mapping[str, Any], exported: Sequence[Mapping[str, Any]],
                   hierarchy) -> SuperSub:
  """The inference state: generalist variables, the bank of ``exported`` (one per superclass, in order), and
  the hierarchy's label maps, all on the default device.

  The specialists say where they branch (their specs' cut, ``exported.cut_of``): their deltas and BatchNorm
  statistics cover the generalist's layers from that group on. Raises ValueError if the counts of superclasses,
  generalist outputs and specialists or the specialists' subclass counts disagree with ``hierarchy``, if the
  specialists do not share one cut, or if their statistics do not fit it.
  """
  params = generalist_variables['params']
  n = int(hierarchy.num_superclasses)
  if 'head' not in params:
    raise ValueError("generalist params have no 'head'; pass the generalist's {'params', 'batch_stats'}.")
  outputs = int(np.shape(params['head']['bias'])[-1])
  if outputs != n:
    raise ValueError(f'the generalist has {outputs} outputs but the hierarchy has {n} superclasses.')
  if len(exported) != n:
    raise ValueError(f'{len(exported)} exported specialists for {n} superclasses; export one per superclass, '
                     'in superclass order.')
  cut = exported_lib.cut_of(exported)
  # Every layer group has BatchNorm, so statistics that do not fit the cut show here, before any delta is read.
  top_stats = set(cut.split(generalist_variables.get('batch_stats', {}))[1])
  for k, ex in enumerate(exported):
    if set(ex.get('batch_stats', {})) != top_stats:
      raise ValueError(f'specialist {k} has BatchNorm statistics for {sorted(ex.get("batch_stats", {}))[:4]}..., '
                       f'but specialists branching at {cut.name!r} (its spec) have them for {sorted(top_stats)[:4]}'
                       '...; the specialist does not fit this generalist: export it again.')
  bank = make_bank(exported, cut.split(cut_lib.split_head(params)[0])[1])
  got = np.asarray(bank.num_subclasses)
  want = np.asarray(hierarchy.sizes)
  if not np.array_equal(got, want):
    bad = int(np.flatnonzero(got != want)[0])
    raise ValueError(f'specialist {bad} has {got[bad]} subclasses but superclass {bad} has {want[bad]}; the '
                     'exported specialists do not match this hierarchy.')
  generalist = jax.device_put({'params': params, 'batch_stats': generalist_variables.get('batch_stats', {})})
  return SuperSub(generalist=generalist, bank=bank, hierarchy=HierarchyArrays.from_hierarchy(hierarchy), cut=cut)
