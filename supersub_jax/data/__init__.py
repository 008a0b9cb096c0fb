"""Datasets and input pipelines: the synthetic hierarchical dataset, TFDS sources relabelled into a hierarchy, and
grain train/eval iterators.

Submodules: `render` (the synthetic images' renderer) and `cues`, `synthetic` (its TFDS builder), `sources`
(`load_source`) and `label_cache`, `builders` (TF-free CIFAR-100/ImageNet TFDS builders), `prepare` (dataset
preparation), `image_ops` (per-image crops and fused JPEG decoding), `pipeline` (`train_iterator`, `eval_iterator`),
`dali` (the optional GPU decoder), `fake_imagenet` (a tiny ILSVRC2012 for tests).
"""
