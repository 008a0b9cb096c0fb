"""Trains the stages of ``config.stages`` in order (vanilla, superclass, specialists).

  python train.py --config=configs/synthetic.py --workdir=runs/demo [--config.batch_size=128 ...]

Rerunning the same command resumes every stage from its latest checkpoint; finished stages are skipped.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and reports.')
flags.mark_flags_as_required(['workdir'])
config_flags.DEFINE_config_file('config', None, 'A configs/*.py file; fields can be overridden as --config.x=y.',
                                lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Imported here so that jax.distributed.initialize runs before any other JAX call.
  from supersub_jax import stages, train as train_lib  # pylint: disable=g-import-not-at-top
  if not FLAGS['verbosity'].present:  # orbax and tfds log every save at INFO; progress lines are printed
    logging.set_verbosity(logging.WARNING)
  train_lib.initialize_distributed(FLAGS.config.distributed)
  logging.info('config:\n%s', FLAGS.config)
  stages.run(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
