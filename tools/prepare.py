"""Prepares the datasets as TFDS array_record files, without TensorFlow: the one command that builds each dataset
(the library: `supersub_jax.data.prepare.prepare`).

  python -m tools.prepare --dataset=synthetic --data_dir=DIR [--grid=samples.png] [--sizes=12,6,...]
  python -m tools.prepare --dataset=cifar100 --data_dir=DIR [--manual_dir=M]
  python -m tools.prepare --dataset=imagenet2012 --data_dir=DIR --manual_dir=M [--max_side=512
      --jpeg_quality=90]

synthetic generates the embedded default dataset (`supersub_jax.data.synthetic`; its knobs as flags, defaults those
of configs/synthetic.py), prints a summary of its classes and, with --grid, writes a PNG of samples.
imagenet2012 reads ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from --manual_dir (the builders are in
`supersub_jax.data.builders`); with --max_side it writes a second, pre-resized store (every JPEG's longer side
capped, re-encoded at --jpeg_quality: `builders.Imagenet2012Capped`) beside the stock one, which training reads with
config.max_side and config.jpeg_quality set alike. cifar100 reads cifar-100-binary.tar.gz from --manual_dir, or
downloads it. Without the archive and without a network, it fails in seconds in one line naming the file and
--manual_dir. A preparation that fails leaves data_dir as it was.

After writing the records, `prepare` also scans every split's labels once (see `sources.cached_labels`), so that
the first training run does not pay for it.
"""

from __future__ import annotations

if __name__ == '__main__':  # run as a program: before the heavy imports, so that a signal during them stops it too
  from supersub_jax import interrupts  # pylint: disable=g-import-not-at-top
  interrupts.install()

import os
import time

from absl import flags

from supersub_jax import cli
from supersub_jax import plots
from supersub_jax.data import prepare as prepare_lib
from supersub_jax.data import render
from supersub_jax.data import sources
from supersub_jax.data import synthetic


def main() -> None:
  flags.DEFINE_enum('dataset', None, list(sources.DATASETS), 'Which dataset to prepare.', required=True)
  flags.DEFINE_string('data_dir', None, 'TFDS data directory to write into.', required=True)
  flags.DEFINE_string('manual_dir', None, 'Folder with the downloaded archives (imagenet2012: the ILSVRC2012 '
                      'tars; cifar100: optional cifar-100-binary.tar.gz).')
  flags.DEFINE_integer('image_size', None, 'synthetic only')
  flags.DEFINE_integer('train_per_class', None, 'synthetic only')
  flags.DEFINE_integer('validation_per_class', None, 'synthetic only')
  flags.DEFINE_integer('test_per_class', None, 'synthetic only')
  flags.DEFINE_integer('specificity', None, 'synthetic only: 0 (every subclass a texture grating) or m >= 1 '
                       '(superclass s takes its subclass from cue kind s % m of ten)')
  flags.DEFINE_integer('seed', None, 'synthetic only')
  flags.DEFINE_list('sizes', None, 'synthetic only: subclasses per superclass, e.g. 12,6,4,3')
  flags.DEFINE_string('grid', None, 'synthetic only: write a PNG grid of test samples here.')
  flags.DEFINE_integer('max_side', 0, 'imagenet2012 only: cap every JPEG\'s longer side at this many pixels (a '
                       'separate, pre-resized store; 0: as distributed).')
  flags.DEFINE_integer('jpeg_quality', 90, 'imagenet2012 with --max_side: JPEG quality of the re-encoded images.')

  def run(argv):
    if len(argv) > 1:
      raise ValueError(f'Unexpected arguments: {argv[1:]}')
    f = flags.FLAGS
    cli.required_path('data_dir', f.data_dir, 'data')  # an empty one would build into the current folder
    knobs = {k: f[k].value for k in synthetic.KNOBS if k != 'sizes' and f[k].value is not None}
    if f.sizes:
      knobs['sizes'] = tuple(int(x) for x in f.sizes)
    if f.grid and f.dataset != 'synthetic':
      raise ValueError('--grid draws samples of the synthetic dataset; drop it for other datasets.')
    start = time.perf_counter()
    try:
      builder = prepare_lib.prepare(f.dataset, os.path.abspath(os.path.expanduser(f.data_dir)),
                                    manual_dir=f.manual_dir, max_side=f.max_side, jpeg_quality=f.jpeg_quality, **knobs)
    except TypeError as e:  # synthetic knobs given for another dataset
      raise ValueError(str(e)) from e
    seconds = time.perf_counter() - start
    if f.dataset == 'synthetic':
      print('\n'.join(synthetic.summary_lines(builder, seconds)))
      if f.grid:
        sizes = builder.builder_config.sizes
        grid, row_labels = render.sample_grid(builder.as_data_source('test'), sizes)
        plots.save_grid_png(f.grid, grid, row_labels, sizes)
        print(f'  sample grid: {f.grid}')
      return
    splits = ', '.join(f'{name}={info.num_examples}' for name, info in builder.info.splits.items())
    print(f'{builder.name} prepared at {builder.data_dir} ({splits}) in {seconds:.1f} s')

  cli.run(run)


if __name__ == '__main__':
  main()
