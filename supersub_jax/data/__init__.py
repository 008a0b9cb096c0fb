"""Datasets and input pipelines: the synthetic hierarchical dataset, TFDS sources relabelled
into a hierarchy, and grain train/eval iterators.

Submodules: `synthetic` (the embedded default dataset), `sources` (`load_source`), `pipeline`
(`train_iterator`, `eval_iterator`), `builders` (TF-free CIFAR-100/ImageNet TFDS builders), `prepare`
(dataset preparation and its command).  The names below
are re-exported lazily, so that `python -m supersub_jax.data.<module>` does not import the
module twice.
"""

import importlib

_EXPORTS = {
    'AUGMENTATIONS': 'pipeline', 'DATASET_STATS': 'pipeline', 'LABEL_MODES': 'pipeline',
    'DatasetStats': 'pipeline', 'batch_layout': 'pipeline', 'channel_stats': 'pipeline',
    'eval_iterator': 'pipeline', 'num_eval_batches': 'pipeline', 'train_iterator': 'pipeline',
    'DATASETS': 'sources', 'prepare_command': 'sources', 'prepare': 'prepare',
    'DatasetNotPreparedError': 'sources', 'HierarchicalSource': 'sources',
    'cached_labels': 'sources', 'load_source': 'sources', 'relabel': 'sources',
    'build_synthetic': 'synthetic',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f'{__name__}.{_EXPORTS[name]}'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
