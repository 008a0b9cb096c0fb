"""Random-access sources of hierarchy-labelled examples, for grain.

`load_source(dataset, split, hierarchy, data_dir)` opens a prepared TFDS array_record split,
keeps the examples whose source class belongs to `hierarchy`, and yields dicts

    {'image': uint8 [H, W, 3], 'subclass': int32 (global label), 'superclass': int32,
     'local': int32 (index within its superclass)}

Labels never require decoding an image: every split's source labels are read once with the image
feature left undecoded (`tfds.decode.SkipDecoding`) and cached as .npz under
`<data_dir>/supersub_labels/` (`label_cache`); relabelling and filtering for any hierarchy then take milliseconds,
also for ImageNet's 1.28M records.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from supersub_jax.choices import DATASETS
from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax.data import builders
from supersub_jax.data import label_cache
from supersub_jax.data import synthetic


# Source-label features per TFDS builder name, and (per dataset) the feature that must agree
# with the hierarchy's superclass.
_LABEL_KEYS = {synthetic.SupersubSynthetic.name: ('label', 'superclass'),
               'cifar100': ('label', 'coarse_label'), 'imagenet2012': ('label',)}
_SUPERCLASS_KEY = {'synthetic': 'superclass', 'cifar100': 'coarse_label'}
_SCAN_CHUNK = 2048


class DatasetNotPreparedError(FileNotFoundError):
  """A dataset or split is missing from data_dir; the message says how to prepare it."""


class DataCorruptError(ValueError):
  """A record of a prepared dataset cannot be read back (a damaged array_record file); the message names the file
  and the command that rebuilds the dataset."""


def prepare_command(dataset: str, data_dir: str | os.PathLike,
                    manual_dir: str | os.PathLike | None = None, **synthetic_knobs) -> str:
  """The shell command that prepares `dataset` in `data_dir` (quoted in error messages); `synthetic_knobs`
  (synthetic.KNOBS) name one synthetic dataset among several."""
  command = (f'python -m tools.prepare --dataset={dataset} '
             f'--data_dir={shlex.quote(os.fspath(data_dir))}')  # pasted into a shell: a path with spaces stays one
  if dataset == 'imagenet2012':
    tars = ' and '.join(builders.IMAGENET_TARS.values())
    command += f' --manual_dir={shlex.quote(os.fspath(manual_dir)) if manual_dir else f"<dir with {tars}>"}'
  elif manual_dir:
    command += f' --manual_dir={shlex.quote(os.fspath(manual_dir))}'
  for knob, value in synthetic_knobs.items():
    command += f' --{knob}={",".join(map(str, value)) if isinstance(value, (tuple, list)) else value}'
  return command


def _rebuild_advice(builder: tfds.core.DatasetBuilder, data_dir: str | os.PathLike,
                    manual_dir: str | os.PathLike | None = None) -> str:
  """How to rebuild the dataset of `builder` once a file of it is found damaged: `prepare` skips a dataset that is
  already there, so its folder goes first."""
  knobs = {}
  cfg = builder.builder_config
  if getattr(cfg, 'max_side', 0):  # builders.CappedConfig
    knobs = dict(max_side=cfg.max_side, jpeg_quality=cfg.jpeg_quality)
  if builder.name == synthetic.SupersubSynthetic.name:
    knobs = synthetic.knobs_of(builder)
  dataset = 'synthetic' if builder.name == synthetic.SupersubSynthetic.name else builder.name
  return (f'delete {shlex.quote(os.fspath(builder.data_dir))}, then run: '
          f'{prepare_command(dataset, data_dir, manual_dir, **knobs)}')


def _record_file(shards: Sequence[tuple[str, int, int]], index: int) -> str:
  """The file holding record `index` of a split read through `shards` ((filename, skip, take) each)."""
  for filename, _, take in shards:
    if index < take:
      return filename
    index -= take
  return shards[-1][0] if shards else '<unknown file>'


def _corrupt(shards, first: int, last: int, name: str, rebuild: str, error: Exception) -> DataCorruptError:
  files_ = sorted({_record_file(shards, i) for i in (first, last)})
  records = f'record {first}' if first == last else f'records {first}-{last}'
  detail = str(error).splitlines()[0][:300] if str(error) else ''
  return DataCorruptError(f'{" / ".join(files_)} is damaged: {records} of {name} cannot be read '
                          f'({type(error).__name__}: {detail}). Rebuild the dataset: {rebuild}')


def _shards(builder: tfds.core.DatasetBuilder, split: str) -> tuple[tuple[str, int, int], ...]:
  try:
    instructions = builder.info.splits[split].file_instructions
  except Exception:  # pylint: disable=broad-except  (only error messages use it)
    return ()
  return tuple((os.fspath(fi.filename), int(fi.skip), int(fi.take)) for fi in instructions)


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Relabelled:
  """Examples of a split kept by a hierarchy, with their labels (all arrays [n]).

  record: int64, index of the example in the TFDS split.
  subclass: int32 global label.  superclass: int32.  local: int32 index within its superclass.
  """
  record: np.ndarray
  subclass: np.ndarray
  superclass: np.ndarray
  local: np.ndarray

  def select(self, keep: np.ndarray) -> Relabelled:
    """The examples at positions or boolean mask `keep`."""
    return Relabelled(*(a[keep] for a in dataclasses.astuple(self)))


def relabel(source_labels: np.ndarray, hierarchy: hierarchy_lib.Hierarchy) -> Relabelled:
  """Keeps the examples whose source class is in `hierarchy`, with their hierarchy labels.

  Args:
    source_labels: int [n], source-dataset class of each record (e.g. ImageNet-1k index).

  Returns:
    `Relabelled` of the kept records, in record order.
  """
  source_labels = np.asarray(source_labels, np.int64)
  bad = (source_labels < 0) | (source_labels >= hierarchy.num_source_classes)
  if bad.any():
    raise ValueError(
        f'source labels {np.unique(source_labels[bad])[:10].tolist()} are outside '
        f'[0, {hierarchy.num_source_classes}) of hierarchy {hierarchy.name!r}: the hierarchy '
        'does not belong to this dataset (e.g. use hierarchy.cifar100() for cifar100).')
  subclass = hierarchy.source_to_label[source_labels]
  record = np.flatnonzero(subclass >= 0)
  subclass = subclass[record].astype(np.int32)
  return Relabelled(record=record.astype(np.int64), subclass=subclass,
                    superclass=hierarchy.label_to_superclass[subclass].astype(np.int32),
                    local=hierarchy.label_to_local[subclass].astype(np.int32))


def cached_labels(builder: tfds.core.DatasetBuilder, split: str,
                  data_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """Label features of every record of `split` (int64 [num_records] each), cached on disk.

  The first call reads the records with the image left undecoded (no JPEG/PNG decoding) and
  saves `<data_dir>/supersub_labels/<name>/<config>/<version>/<split>.npz`; later calls load it.
  A cache that fails its check (damaged, or of other records) is rebuilt. A record that cannot
  be read raises `DataCorruptError` naming its file and the command that rebuilds the dataset.
  """
  keys = _LABEL_KEYS.get(builder.name, ('label',))
  path = label_cache.path_of(builder, split, data_dir)
  raw = builder.as_data_source(split, decoders={'image': tfds.decode.SkipDecoding()})
  if os.path.exists(path):
    num_classes = {k: int(getattr(builder.info.features[k], 'num_classes', 0) or 0) for k in keys
                   if k in builder.info.features}
    labels = label_cache.read(path, keys, len(raw), num_classes=num_classes, records=raw)
    if labels is not None:
      return labels
  logging.info('Scanning the labels of %d records of %s/%s (images not decoded)...', len(raw),
               builder.name, split)
  labels = {k: np.empty(len(raw), np.int64) for k in keys}
  for start in range(0, len(raw), _SCAN_CHUNK):
    stop = min(start + _SCAN_CHUNK, len(raw))
    try:
      examples = raw.__getitems__(range(start, stop))
    except Exception as e:  # pylint: disable=broad-except  (array_record raises RuntimeError; decoders others)
      raise _corrupt(_shards(builder, split), start, stop - 1, f'{builder.name}/{split}',
                     _rebuild_advice(builder, data_dir), e) from e
    for offset, example in enumerate(examples):
      for k in keys:
        value = example.get(k) if isinstance(example, Mapping) else None
        if not isinstance(value, (int, np.integer)) and not (
            isinstance(value, np.ndarray) and value.ndim == 0 and np.issubdtype(value.dtype, np.integer)):
          # array_record hands back empty fields (None) for the records of a file cut short
          raise _corrupt(_shards(builder, split), start + offset, start + offset, f'{builder.name}/{split}',
                         _rebuild_advice(builder, data_dir),
                         ValueError(f'its {k!r} is {type(value).__name__}, not an integer: the file is cut short '
                                    'or overwritten'))
        labels[k][start + offset] = value
  label_cache.write(path, labels)
  return labels


# --------------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------------


class HierarchicalSource:
  """Random-access examples (`len`, `[i]`) relabelled into a hierarchy; picklable for grain.

  Example i is {'image': uint8 [H, W, 3], 'subclass': int32, 'superclass': int32,
  'local': int32}; with `encoded`, 'image' is the stored file itself (bytes: JPEG, PNG), which the input
  pipeline decodes fused with its crop (`image_ops.decode_random_resized_crop`).  `labels` holds the labels
  of all examples (no record read needed).
  """

  def __init__(self, records: Sequence[Mapping[str, Any]], labels: Relabelled, *,
               name: str, hierarchy: hierarchy_lib.Hierarchy, encoded: bool = False,
               shards: Sequence[tuple[str, int, int]] = (), rebuild: str = ''):
    """`shards`: the split's files as (filename, skip, take), and `rebuild`: how to rebuild the
    dataset; both only name a damaged record's file in `DataCorruptError`."""
    self._records = records
    self.labels = labels
    self.name = name
    self.hierarchy = hierarchy
    self.encoded = encoded
    self._shards = tuple(shards)
    self._rebuild = rebuild or 'delete the dataset folder and prepare it again (python -m tools.prepare).'

  def __len__(self) -> int:
    return len(self.labels.record)

  @property
  def shards(self) -> tuple[tuple[str, int, int], ...]:
    """The split's files as (filename, skip, take)."""
    return self._shards

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not -len(self) <= index < len(self):
      raise IndexError(f'index {index} out of range for {self.name} of {len(self)} examples')
    record = int(self.labels.record[index])
    try:
      example = self._records[record]
    except Exception as e:  # pylint: disable=broad-except  (array_record: RuntimeError; image decoders: others)
      raise _corrupt(self._shards, record, record, self.name, self._rebuild, e) from e
    image = example.get('image') if isinstance(example, Mapping) else None
    if image is None:  # array_record hands back empty fields for the records of a file cut short
      raise _corrupt(self._shards, record, record, self.name, self._rebuild,
                     ValueError('the record holds no image: the file is cut short or overwritten'))
    if self.encoded:
      if not isinstance(image, bytes):
        raise ValueError(f'{self.name}[{index}]: expected the encoded image (bytes), got {type(image).__name__}.')
    elif (image := np.asarray(image)).dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f'{self.name}[{index}]: expected a uint8 [H, W, 3] image, got '
                       f'{image.dtype} {image.shape}.')
    return {'image': image, 'subclass': self.labels.subclass[index],
            'superclass': self.labels.superclass[index], 'local': self.labels.local[index]}

  def for_superclass(self, k: int) -> HierarchicalSource:
    """The examples of superclass k only (a specialist's training data)."""
    if not 0 <= k < self.hierarchy.num_superclasses:
      raise ValueError(f'superclass={k} is outside [0, {self.hierarchy.num_superclasses}) of '
                       f'hierarchy {self.hierarchy.name!r}.')
    return HierarchicalSource(self._records, self.labels.select(self.labels.superclass == k),
                              name=f'{self.name}[superclass={k}]', hierarchy=self.hierarchy,
                              encoded=self.encoded, shards=self._shards, rebuild=self._rebuild)

  def outside(self, k: int, *, local: int, weights: np.ndarray | None = None,
              seed: int = 0) -> HierarchicalSource:
    """The examples of every superclass but k, with their 'local' label set to ``local`` (a specialist's dustbin
    class: "not my superclass"); 'subclass' and 'superclass' stay the true ones.

    With ``weights`` (float [N], >= 0; entry k ignored), a resample of as many examples, drawn with replacement by
    a ``seed``-ed generator, in which superclass j makes up a weights[j] / sum(weights) share (its examples equally
    likely); without, every outside example once (each superclass in its natural share).
    """
    if not 0 <= k < self.hierarchy.num_superclasses:
      raise ValueError(f'superclass={k} is outside [0, {self.hierarchy.num_superclasses}) of '
                       f'hierarchy {self.hierarchy.name!r}.')
    keep = np.flatnonzero(self.labels.superclass != k)
    if keep.size == 0:
      raise ValueError(f'{self.name} has no example outside superclass {k}: a dustbin needs other superclasses.')
    if weights is not None:
      w = np.asarray(weights, np.float64).copy()
      if w.shape != (self.hierarchy.num_superclasses,) or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f'weights must be {self.hierarchy.num_superclasses} finite values >= 0, got {weights!r}.')
      w[k] = 0.0
      counts = np.bincount(self.labels.superclass[keep], minlength=w.size).astype(np.float64)
      w[counts == 0] = 0.0
      if w.sum() <= 0:
        raise ValueError(f'weights {weights!r} give no mass to a superclass with examples outside superclass {k}.')
      p = (w / w.sum() / np.maximum(counts, 1.0))[self.labels.superclass[keep]]
      keep = np.random.default_rng(seed).choice(keep, size=keep.size, replace=True, p=p / p.sum())
    chosen = self.labels.select(keep)
    labels = dataclasses.replace(chosen, local=np.full(keep.size, local, chosen.local.dtype))
    return HierarchicalSource(self._records, labels, name=f'{self.name}[outside superclass {k}]',
                              hierarchy=self.hierarchy, encoded=self.encoded, shards=self._shards,
                              rebuild=self._rebuild)

  def __repr__(self) -> str:
    return (f'HierarchicalSource({self.name}, {len(self)} examples, '
            f'hierarchy={self.hierarchy.name!r})')


def _open_tfds(dataset: str, split: str, data_dir: str, manual_dir: str | None,
               builder_kwargs: dict[str, Any]) -> tfds.core.DatasetBuilder:
  """The prepared stock builder of `dataset`, or DatasetNotPreparedError saying how to prepare."""
  builder_kwargs = dict(builder_kwargs)
  capped = {k: builder_kwargs.pop(k) for k in ('max_side', 'jpeg_quality') if k in builder_kwargs}
  if dataset == 'imagenet2012' and capped.get('max_side'):  # the pre-resized store, in its own config folder
    builder = builders.capped_imagenet(data_dir, **capped)
  elif capped.get('max_side'):
    raise ValueError(f"max_side={capped['max_side']} caps imagenet2012's JPEGs; {dataset} takes none.")
  else:
    builder = tfds.builder(dataset, data_dir=data_dir, **builder_kwargs)
    capped = {}
  command = prepare_command(dataset, data_dir, manual_dir, **capped)
  if not builder.is_prepared():
    raise DatasetNotPreparedError(
        f'{dataset} (version {builder.version}) is not prepared in data_dir={data_dir}. '
        f'Prepare it with:\n  {command}')
  _check_split(builder, split, command)
  return builder


def _check_split(builder: tfds.core.DatasetBuilder, split: str, command: str) -> None:
  base_split = split.split('[')[0]  # TFDS slicing syntax, e.g. 'train[:10%]'.
  available = sorted(builder.info.splits)
  if base_split in available:
    return
  message = (f'split {base_split!r} of {builder.name} is not in {builder.data_dir} (available: '
             f'{available}).')
  if builder.name == 'imagenet2012':
    tar = builders.IMAGENET_TARS.get(base_split)
    if tar:
      message += (f' It was prepared without {tar}: put that file in manual_dir, delete '
                  f'{builder.data_dir} and run:\n  {command}')
  raise DatasetNotPreparedError(message)


def load_source(dataset: str, split: str, hierarchy: hierarchy_lib.Hierarchy,
                data_dir: str | os.PathLike, *, manual_dir: str | os.PathLike | None = None,
                superclass: int | None = None, encoded: bool = False,
                **dataset_kwargs) -> HierarchicalSource:
  """Opens one split of a prepared dataset, filtered to and relabelled by `hierarchy`.

  Args:
    dataset: 'synthetic' (built on demand, in seconds), 'cifar100' or 'imagenet2012'.
    split: TFDS split, e.g. 'train', 'test', 'validation', 'train[:90%]'.
    hierarchy: a `Hierarchy` of this dataset's classes; examples outside it are dropped.
    data_dir: TFDS data directory.
    manual_dir: where ILSVRC2012 tars are (only quoted in the error if imagenet2012 is missing).
    superclass: if given, only that superclass's examples (a specialist's view).
    encoded: 'image' is the stored file (bytes), not decoded pixels: the input pipeline then decodes only
      what its crop needs.
    **dataset_kwargs: synthetic: the knobs of `synthetic.build_synthetic` (`sizes` defaults to
      the hierarchy's); imagenet2012: `max_side` and `jpeg_quality` open the pre-resized store
      (`builders.capped_imagenet`); cifar100 / imagenet2012: others passed to `tfds.builder` (e.g. version).

  Returns:
    A `HierarchicalSource`.

  Raises:
    DatasetNotPreparedError: the dataset or split is not in data_dir (message has the command).
    ValueError: the hierarchy does not fit the dataset.
  """
  data_dir = os.fspath(data_dir)
  manual_dir = os.fspath(manual_dir) if manual_dir is not None else None
  if dataset == 'synthetic':
    sizes = tuple(int(n) for n in hierarchy.sizes)
    given = dataset_kwargs.pop('sizes', sizes)
    if tuple(given) != sizes:
      raise ValueError(f'sizes={tuple(given)} disagrees with hierarchy {hierarchy.name!r} sizes '
                       f'{sizes}; drop the sizes argument or use hierarchy.synthetic(sizes).')
    builder = synthetic.build_synthetic(data_dir, sizes=sizes, **dataset_kwargs)
    _check_split(builder, split, prepare_command('synthetic', data_dir))
  elif dataset in ('cifar100', 'imagenet2012'):
    builder = _open_tfds(dataset, split, data_dir, manual_dir, dataset_kwargs)
  else:
    raise ValueError(f'unknown dataset {dataset!r}; choose one of {DATASETS}.')

  raw_labels = cached_labels(builder, split, data_dir)
  labels = relabel(raw_labels['label'], hierarchy)
  key = _SUPERCLASS_KEY.get(dataset)
  if key is not None:
    # The dataset's own coarse label must be the hierarchy's superclass.
    expected = raw_labels[key][labels.record]
    wrong = np.flatnonzero(expected != labels.superclass)
    if wrong.size:
      i = labels.record[wrong[0]]
      raise ValueError(
          f'{dataset}/{split} record {i}: {key}={expected[wrong[0]]} but hierarchy '
          f'{hierarchy.name!r} puts source class {raw_labels["label"][i]} in superclass '
          f'{labels.superclass[wrong[0]]} ({wrong.size} such records). Use the matching '
          f'hierarchy: hierarchy.{"cifar100()" if dataset == "cifar100" else "synthetic(sizes)"}.')
  records = (builder.as_data_source(split, decoders={'image': tfds.decode.SkipDecoding()}) if encoded
             else builder.as_data_source(split))
  source = HierarchicalSource(records, labels, name=f'{dataset}/{split}', hierarchy=hierarchy,
                              encoded=encoded, shards=_shards(builder, split),
                              rebuild=_rebuild_advice(builder, data_dir, manual_dir))
  if superclass is not None:
    source = source.for_superclass(superclass)
  if len(source) == 0:
    raise ValueError(f'{source.name} has no example of hierarchy {hierarchy.name!r}'
                     + (f' superclass {superclass}' if superclass is not None else '')
                     + '; check that the hierarchy matches the dataset.')
  return source
