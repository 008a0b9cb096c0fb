"""The exported specialist: the stored form of a trained delta, and of one whole specialist.

``compress`` turns (delta, masks, cfg) into a ``CompressedDelta``, a plain
nested dict of numpy arrays with the nesting of the selected params and, in place
of each selected leaf, a record::

    'shape':     int32[ndim]     shape of the leaf
    'bits':      int32[]         8, 4 or 2; 0 = not quantized (values are float32)
    'encoding':  int32[]         0 = bitmask, 1 = indices, 2 = Elias-Fano (``positions.POSITIONS_*``)
    'positions': uint8[ceil(size/8)]  np.packbits of the flat C-order mask (bitmask), or
                 uint8/16/32/64[k]    ascending flat indices of kept entries, in the
                                      smallest unsigned dtype that holds size - 1 (indices), or
                 uint8[...]           the Elias-Fano code of those indices (``positions.elias_fano_encode``:
                                      about 2 + log2(size / k) bits per kept entry, 7-12% above
                                      the entropy of a random kept set at densities 0.02-0.1);
                 whichever has fewer bytes (bitmask, then indices, on a tie; bitmask when k == 0)
    'values':    uint8[ceil(k*bits/8)]  quant.pack_int of the k kept int codes, or
                 float32[k]           the kept values themselves when bits == 0;
                                      when k == 0, one padding element (ignored)
    'scale':     float32[...]        only when bits > 0: the absmax scale with its
                                     broadcast shape ([] per tensor, [1,..,1,C] per channel)

``k`` (the number of kept entries) is implied by 'positions'. Leaves that carry no
delta have no record. Every record entry is a numpy array and none is empty (orbax
refuses zero-size arrays), so orbax ``StandardSave``/``PyTreeSave`` and ``np.savez``
(after flattening) can write it. Scalar (0-d) delta leaves cannot be exported.
``materialize_compressed(base, compress(delta, masks, cfg))`` equals
``delta.materialize(base, delta, masks, cfg)`` bit for bit (see ``supersub_jax.quant``).

``export`` gives one specialist's deployable form (``ExportedSpecialist``)::

    'delta':       CompressedDelta over the generalist's backbone from the cut on
    'head':        {'kernel': float32[D, n_k + d], 'bias': float32[n_k + d]}: its real classes, then, with a
                   dustbin (d = 1), the "not my superclass" column, its bias as trained
    'batch_stats': the specialist's BatchNorm statistics (the generalist's layout, from the cut on)
    'spec':        what it is (``describe``), JSON: {'version': 2, 'cut': a layer group name (``cut.Cut``),
                   'num_subclasses': n_k, 'delta': {'bits', 'granularity', 'pattern', 'exclude', 'density'},
                   'dustbin': None, or {'fraction', 'others', 'logit_correction'}: how its dustbin was trained and
                   what inference adds to the dustbin's logit (``dustbin_logit_correction``)}; the specialists
                   stage adds 'superclass' (the one it serves) and 'model' ({'name', 'stem', 'width'}: the
                   architecture its delta fits)

The spec is what every reader (the inference bank, bundles, ``convert``) takes the cut from: a specialist says
where it branches, and no reader goes back to a config for it. Checkpoints keep it in their JSON metadata (the
arrays go to orbax), bundles beside the arrays.

``decode_record`` is the one validated reader of a record (every consumer -- ``decompress``,
``materialize_compressed``, the inference bank, bundles -- goes through it); ``exported_nbytes``
and ``storage_report`` are the byte counts. All numpy, run once on the host; nothing here is jitted
except the quantization that must match the training forward bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from supersub_jax import cut as cut_lib
from supersub_jax import delta as delta_lib
from supersub_jax import positions as positions_lib
from supersub_jax import quant

PyTree = Any
CompressedDelta = dict  # nested dict of records; schema in the module docstring
ExportedSpecialist = dict  # {'delta', 'head', 'batch_stats', 'spec'}; schema in the module docstring

_RECORD_KEYS = frozenset({'shape', 'bits', 'encoding', 'positions', 'values'})


def _quantize_masked(d, m, bits: int, channel_axis: int | None):
  x = delta_lib.masked(d, m)
  scale = quant.absmax_scale(x, bits, channel_axis)
  return quant.quantize(x, scale, bits), scale


_quantize_masked_jit = jax.jit(_quantize_masked, static_argnums=(2, 3))


def _compress_leaf(d, m, cfg: delta_lib.DeltaConfig) -> dict[str, np.ndarray]:
  d = np.asarray(d, np.float32)
  if d.ndim == 0 or d.size == 0:
    raise ValueError(f'cannot export a delta leaf of shape {d.shape} (scalar or empty); exclude it from '
                     'DeltaConfig.pattern.')
  mask = np.ones(d.shape, bool) if m is None else np.asarray(m, bool)
  if mask.shape != d.shape:
    raise ValueError(f'mask shape {mask.shape} differs from delta shape {d.shape}.')
  encoding, positions = positions_lib.encode_positions(mask)
  kept = np.flatnonzero(mask.reshape(-1))
  record = {'shape': np.asarray(d.shape, np.int32), 'encoding': np.asarray(encoding, np.int32),
            'positions': positions}
  if cfg.bits is None:
    record['bits'] = np.asarray(0, np.int32)
    values = d.reshape(-1)[kept].copy()
  else:
    # Same jnp functions as the training forward, so codes and scales are the same bits.
    q, scale = _quantize_masked_jit(d, mask, cfg.bits, delta_lib.channel_axis_for(d.ndim, cfg))
    record['bits'] = np.asarray(cfg.bits, np.int32)
    values = quant.pack_int(np.asarray(q).reshape(-1)[kept], cfg.bits)
    record['scale'] = np.asarray(scale, np.float32)
  record['values'] = values if values.size else np.zeros(1, values.dtype)
  return record


def compress(delta: PyTree, masks: PyTree | None, cfg: delta_lib.DeltaConfig) -> CompressedDelta:
  """Compressed export of a trained delta (numpy, outside jit); schema in the module docstring."""
  masks = delta_lib.masks_like(delta, masks)
  out: dict = {}

  def leaf(path, d, m):
    if d is None:
      return None
    node = out
    keys = delta_lib.path_str(path).split('/')
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = _compress_leaf(d, m, cfg)
    return None

  jax.tree_util.tree_map_with_path(leaf, delta, masks)
  return out


def _is_record(node) -> bool:
  # Keys alone decide: a params subtree with all five of these module names does not occur,
  # and restored checkpoints may hand back numpy scalars or jax arrays as values.
  return isinstance(node, dict) and _RECORD_KEYS <= set(node)


MAX_LEAF_SIZE = np.iinfo(np.int32).max - 1  # positions are int32 inside the compiled predictors


@dataclasses.dataclass(frozen=True)
class DecodedRecord:
  """One validated record, unpacked (numpy): ``indices`` int64 [k] ascending flat positions of the kept entries,
  and either ``codes`` int8 [k] with ``scale`` float32 [1 or C] (entry i uses ``scale[i % C]``), or ``values``
  float32 [k] when ``bits == 0``."""
  shape: tuple[int, ...]
  bits: int
  indices: np.ndarray
  codes: np.ndarray | None
  scale: np.ndarray | None
  values: np.ndarray | None


def _array(rec, key: str, where: str) -> np.ndarray:
  try:
    return np.asarray(rec[key])
  except Exception as e:  # pylint: disable=broad-except  (anything that is not an array)
    raise ValueError(f'{where}: {key!r} is not an array ({type(e).__name__}).') from e


def _int_scalar(rec, key: str, where: str, choices) -> int:
  x = _array(rec, key, where)
  if x.size != 1 or not np.issubdtype(x.dtype, np.integer) or int(x.reshape(-1)[0]) not in choices:
    raise ValueError(f'{where}: {key!r} must be one integer in {tuple(choices)}, got {x.dtype}{list(x.shape)}.')
  return int(x.reshape(-1)[0])


def decode_record(rec, where: str = 'record', expected_shape: tuple[int, ...] | None = None) -> DecodedRecord:
  """Validates and unpacks one compressed record (schema in the module docstring).

  Every malformed input -- a missing key, a wrong dtype or length, positions out of range or out of order, a bad
  scale, a shape other than ``expected_shape`` -- raises ValueError naming ``where``; nothing is allocated at the
  size a record merely claims before its arrays are checked against it.
  """
  if not isinstance(rec, Mapping) or not _RECORD_KEYS <= set(rec):
    raise ValueError(f'{where}: not a compressed record (needs the keys {sorted(_RECORD_KEYS)}).')
  shape_arr = _array(rec, 'shape', where)
  if shape_arr.ndim != 1 or not 1 <= shape_arr.size <= 8 or not np.issubdtype(shape_arr.dtype, np.integer) \
      or (shape_arr < 1).any():
    raise ValueError(f'{where}: shape must be 1 to 8 positive integers, got {shape_arr.dtype}{shape_arr.tolist()}.')
  shape = tuple(int(d) for d in shape_arr)
  if expected_shape is not None and shape != tuple(expected_shape):
    raise ValueError(f'{where}: shape {shape}, but the base param has {tuple(expected_shape)}.')
  size = int(np.prod(shape, dtype=np.float64))
  if size > MAX_LEAF_SIZE:
    raise ValueError(f'{where}: shape {shape} has {size} entries, more than {MAX_LEAF_SIZE}.')
  bits = _int_scalar(rec, 'bits', where, (0,) + quant.SUPPORTED_BITS)
  encoding = _int_scalar(rec, 'encoding', where, positions_lib.ENCODINGS)
  positions = _array(rec, 'positions', where)
  if positions.ndim != 1 or positions.size == 0 or not np.issubdtype(positions.dtype, np.unsignedinteger):
    raise ValueError(f'{where}: positions must be a non-empty 1-D unsigned array, got '
                     f'{positions.dtype}{list(positions.shape)}.')
  if encoding != positions_lib.POSITIONS_INDICES and positions.dtype != np.uint8:
    raise ValueError(f'{where}: bitmask and Elias-Fano positions are uint8 bytes, got {positions.dtype}.')
  if encoding == positions_lib.POSITIONS_BITMASK and positions.size != (size + 7) // 8:
    raise ValueError(f'{where}: a bitmask of {size} entries is {(size + 7) // 8} uint8 bytes, got '
                     f'{positions.dtype}[{positions.size}].')
  try:
    indices = positions_lib.decode_positions(encoding, positions, size)
  except ValueError as e:
    raise ValueError(f'{where}: {e}') from e
  if encoding != positions_lib.POSITIONS_BITMASK and (indices[-1] >= size
                                                      or (indices.size > 1 and (np.diff(indices) <= 0).any())):
    raise ValueError(f'{where}: indices must be strictly increasing and below {size}.')
  k = indices.size
  values = _array(rec, 'values', where)
  if values.ndim != 1:
    raise ValueError(f'{where}: values must be 1-D, got shape {list(values.shape)}.')
  if bits == 0:
    if values.dtype != np.float32 or values.size != max(k, 1) or not np.isfinite(values).all():
      raise ValueError(f'{where}: an unquantized record holds {max(k, 1)} finite float32 values, got '
                       f'{values.dtype}[{values.size}].')
    return DecodedRecord(shape, 0, indices, None, None, values[:k].copy())
  if values.dtype != np.uint8 or values.size != max(quant.packed_len(k, bits), 1):
    raise ValueError(f'{where}: {k} codes of {bits} bits pack into {max(quant.packed_len(k, bits), 1)} uint8 bytes, '
                     f'got {values.dtype}[{values.size}].')
  if 'scale' not in rec:
    raise ValueError(f'{where}: a quantized record (bits={bits}) needs a scale.')
  scale = _array(rec, 'scale', where)
  if scale.dtype != np.float32 or scale.size not in (1, shape[-1]) or not (np.isfinite(scale) & (scale > 0)).all():
    raise ValueError(f'{where}: scale must be 1 or {shape[-1]} (last axis) positive finite float32 values, got '
                     f'{scale.dtype}{list(scale.shape)}.')
  return DecodedRecord(shape, bits, indices, quant.unpack_int(values, bits, k), scale.reshape(-1), None)


def _dense(d: DecodedRecord) -> np.ndarray:
  size = int(np.prod(d.shape))
  if d.values is not None:
    dense = np.zeros(size, np.float32)
    dense[d.indices] = d.values
    return dense.reshape(d.shape)
  codes = np.zeros(size, np.int8)
  codes[d.indices] = d.codes
  scale = d.scale if d.scale.size == 1 else d.scale.reshape((1,) * (len(d.shape) - 1) + (-1,))
  # Exact product (grid scale, |code| <= 127): same bits as quant.dequantize under jit.
  return codes.reshape(d.shape).astype(np.float32) * scale


def walk_records(compressed, prefix=()):
  """(path keys, record) of every record of a ``CompressedDelta``; ValueError on anything else in it."""
  if not isinstance(compressed, Mapping):
    raise ValueError(f'compressed delta {"/".join(prefix) or "root"} is a {type(compressed).__name__}, not a dict; '
                     'was it produced by exported.compress?')
  for k, v in compressed.items():
    if _is_record(v):
      yield prefix + (k,), v
    elif isinstance(v, Mapping):
      yield from walk_records(v, prefix + (k,))
    else:
      raise ValueError(f'compressed delta entry {"/".join(prefix + (k,))!r} is neither a record nor a dict '
                       f'of records; was it produced by exported.compress?')


def decompress(compressed: CompressedDelta) -> dict:
  """Dense float32 effective delta (numpy) for every record, in the same nesting.

  Equals ``effective_delta`` at the selected leaves bit for bit; leaves without a
  delta are absent (there is no None placeholder: the compressed tree does not know
  them).
  """
  out: dict = {}
  for keys, rec in walk_records(compressed):
    node = out
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = _dense(decode_record(rec, '/'.join(keys)))
  return out


def materialize_compressed(base: PyTree, compressed: CompressedDelta) -> PyTree:
  """Specialist params from the base and a ``CompressedDelta``; bit-equal to ``materialize``.

  Decompression runs in numpy, so ``compressed`` must hold concrete arrays; ``base``
  may be traced. Raises ValueError if a record has no base leaf of the same shape.
  """
  shapes = {delta_lib.path_str(p): tuple(np.shape(b)) for p, b in jax.tree_util.tree_flatten_with_path(base)[0]}
  dense = {}
  for keys, rec in walk_records(compressed):
    p = '/'.join(keys)
    if p not in shapes:
      raise ValueError(f'compressed delta has leaf {p!r}, which is not in the base params; compress against the '
                       'same base architecture.')
    dense[p] = _dense(decode_record(rec, p, expected_shape=shapes[p]))

  def leaf(path, b):
    p = delta_lib.path_str(path)
    if p not in dense:
      return b
    b = jnp.asarray(b)
    return (b + jnp.asarray(dense[p])).astype(b.dtype)

  return jax.tree_util.tree_map_with_path(leaf, base)



def compressed_nbytes(compressed: CompressedDelta) -> int:
  """Bytes of all arrays stored in a ``CompressedDelta``, metadata arrays included."""
  return delta_lib.tree_nbytes(compressed)


def storage_report(base_nbytes: int, specialist_nbytes: Sequence[int]) -> dict:
  """Storage of one base network plus N specialists, in bytes and in units of the base.

  ``total = base + sum(specialists) = (alpha * N + 1) * base``; ``factor = total / base``;
  ``naive_factor = N + 1`` (N full copies plus the generalist).

  Returns dict with keys base_bytes, specialists_bytes (list), total_bytes, factor,
  alpha, naive_factor, num_specialists.
  """
  specialists = [int(s) for s in specialist_nbytes]
  if base_nbytes <= 0:
    raise ValueError(f'base_nbytes={base_nbytes} must be positive.')
  if not specialists:
    raise ValueError('storage_report needs at least one specialist (alpha is undefined for N = 0).')
  total = int(base_nbytes) + sum(specialists)
  factor = total / base_nbytes
  n = len(specialists)
  return {'base_bytes': int(base_nbytes), 'specialists_bytes': specialists, 'total_bytes': total,
          'factor': factor, 'alpha': (factor - 1.0) / n, 'naive_factor': n + 1, 'num_specialists': n}



SPEC_VERSION = 2  # 1: specialists before they described themselves (no 'spec'; the cut was the config's)


def describe(cut: cut_lib.Cut, cfg: delta_lib.DeltaConfig, *, num_subclasses: int, density: float,
             dustbin: Mapping[str, Any] | None = None) -> dict:
  """The ``'spec'`` of an exported specialist (JSON types only): its cut, subclass count, delta settings and
  dustbin; ``density`` is the fraction of delta entries it keeps."""
  if dustbin is not None and 'logit_correction' not in dustbin:
    raise ValueError(f"a dustbin spec needs its 'logit_correction', got {dict(dustbin)}.")
  return {'version': SPEC_VERSION, 'cut': cut.name, 'num_subclasses': int(num_subclasses),
          'delta': {'bits': int(cfg.bits or 0), 'granularity': cfg.granularity, 'pattern': cfg.pattern,
                    'exclude': cfg.exclude, 'density': float(density)},
          'dustbin': None if dustbin is None else {k: (float(v) if isinstance(v, (int, float)) else v)
                                                   for k, v in dict(dustbin).items()}}


def dustbin_logit_correction(dustbin: Mapping[str, Any]) -> float:
  """What inference adds to a dustbin's logit: log((1 - f) / f), f the dustbin's share of a training batch
  (``dustbin['fraction']``): the specialist's "mine" against "another" brought to even odds.

  Why even odds and not the natural prior: every rule that reads a dustbin (``soft``, ``hinton``, ``poe``) weighs a
  specialist by the router's p(s | x), which already carries the superclass's prior; moving the dustbin to the prior
  too would count it twice (a specialist of a superclass with 5% of the images, trained at 0.95 "mine", would report
  about 0.5 on its own images). ``hard`` never reads the dustbin. At the default f = 0.5 the correction is 0.
  Specs of before 2026-12-06 stored a prior-based 'logit_correction'; it is not read, this is recomputed."""
  f = float(dustbin['fraction'])
  if not 0.0 < f < 1.0:
    raise ValueError(f"a dustbin's fraction must lie in (0, 1), got {f}.")
  return float(np.log((1.0 - f) / f))


def dustbin_of(exported: Mapping[str, Any]) -> Mapping[str, Any] | None:
  """An exported specialist's dustbin spec, or None (specs of before dustbins have none)."""
  return (exported.get('spec') or {}).get('dustbin')


def cut_of(exported: Sequence[Mapping[str, Any]]) -> cut_lib.Cut:
  """The one cut of a list of exported specialists, from their specs; ValueError when a spec is missing or they
  branch at different layers."""
  cuts = []
  for k, ex in enumerate(exported):
    spec = ex.get('spec') if isinstance(ex, Mapping) else None
    if not isinstance(spec, Mapping) or 'cut' not in spec:
      raise ValueError(f"exported specialist {k} has no 'spec' (what it is: its cut and delta settings); build it "
                       'with exported.export, or load it with workdir.load_exported or bundle.load_bundle, '
                       'which describe older specialists.')
    cuts.append(str(spec['cut']))
  if len(set(cuts)) > 1:
    raise ValueError(f'the exported specialists branch at different layers ({sorted(set(cuts))}); one bank needs '
                     'one cut.')
  return cut_lib.Cut(cuts[0])


def export(delta: PyTree, masks: PyTree | None, head: Mapping[str, Any], batch_stats: PyTree,
           cfg: delta_lib.DeltaConfig, num_subclasses: int, *, cut: cut_lib.Cut,
           dustbin: Mapping[str, Any] | None = None) -> ExportedSpecialist:
  """The deployable form of one trained specialist (numpy).

  Args:
    delta, masks: the trained delta and its masks (``delta.init_delta`` structure).
    head: ``{'kernel': [D, S + d], 'bias': [S + d]}``, padded to S >= num_subclasses real columns, then (d = 1,
      with ``dustbin``) the dustbin column; the real ones and the dustbin are kept.
    batch_stats: the specialist's BatchNorm statistics from ``cut`` on.
    cfg: the DeltaConfig it was trained with.
    num_subclasses: n_k.
    cut: where it branches off the generalist.
    dustbin: its dustbin's spec (``describe``), or None for a specialist without one.
  """
  head = jax.tree.map(np.asarray, head)
  sizes = jax.tree.leaves(jax.tree.map(
      lambda d, m: np.asarray([np.size(d), np.size(d) if m is None else np.count_nonzero(m)]), delta,
      delta_lib.masks_like(delta, masks)))
  total, kept = np.sum(sizes, axis=0) if sizes else (0, 0)
  return {
      'delta': compress(delta, masks, cfg),
      'head': {name: np.concatenate([x[..., :num_subclasses], x[..., -1:]] if dustbin else [x[..., :num_subclasses]],
                                    axis=-1) for name, x in head.items()},
      'batch_stats': jax.tree.map(np.asarray, batch_stats),
      'spec': describe(cut, cfg, num_subclasses=num_subclasses, density=float(kept / total) if total else 0.0,
                       dustbin=dustbin),
  }


def exported_nbytes(exported: ExportedSpecialist) -> dict[str, int]:
  """Stored bytes of one exported specialist by part: 'delta', 'head', 'batch_stats'."""
  return {'delta': compressed_nbytes(exported['delta']),
          'head': delta_lib.tree_nbytes(exported['head']),
          'batch_stats': delta_lib.tree_nbytes(exported['batch_stats'])}
