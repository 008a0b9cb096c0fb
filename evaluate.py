"""Evaluates a trained workdir: vanilla against Super-Sub, storage, memory, throughput.

  python evaluate.py --config=configs/synthetic.py --workdir=runs/demo

Writes report.json, report.md and PNG plots into the workdir and prints the report table.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'The workdir that train.py wrote.')
flags.mark_flags_as_required(['workdir'])
config_flags.DEFINE_config_file('config', None, 'The config the workdir was trained with.', lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  from supersub_jax import evaluation, report  # pylint: disable=g-import-not-at-top
  result = evaluation.run(FLAGS.config, FLAGS.workdir)
  print(report.table(report.summary_rows(result)))
  print(f'\nWrote {FLAGS.workdir}/report.json, report.md and {", ".join(result.get("plots", []))}')


if __name__ == '__main__':
  app.run(main)
