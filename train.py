"""Trains the stages of ``config.stages`` in order (vanilla, superclass, specialists).

  python train.py --config=configs/synthetic.py --workdir=runs/demo [--config.batch_size=128 ...]

Rerunning the same command resumes every stage from its latest intact checkpoint; finished stages are skipped. The
config is stored in <workdir>/config.json, which evaluate.py and `python -m tools.convert` read. Exit status:
0 done, 1 an error (one line; --debug for the traceback), 75 preempted by SIGTERM after saving (rerun to resume), 130
interrupted by SIGINT (the last saved step is kept; rerun to resume).
"""

import signal

from supersub_jax import interrupts

# Before the heavy imports: a SIGINT during them must stop the run too. SIGTERM is a preemption (save, exit 75).
interrupts.install((signal.SIGINT,))

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position

from supersub_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and reports.')
cli.define_config_flag(stored_in_workdir=False)


def main(argv):
  if len(argv) > 1:
    raise ValueError(f'Unexpected arguments: {argv[1:]}')
  cli.required_path('workdir', FLAGS.workdir, 'runs/demo')
  if FLAGS.config is None:
    raise ValueError('--config is required: a configs/*.py file, e.g. --config=configs/synthetic.py.')
  from supersub_jax import recipe, runtime  # pylint: disable=g-import-not-at-top
  runtime.initialize_runtime(FLAGS.config)  # before any other JAX call
  logging.info('config:\n%s', FLAGS.config)
  recipe.run(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  cli.run(main, interrupt_signals=(signal.SIGINT,))  # SIGTERM is a preemption: save, exit 75 (runtime.Preemption)
