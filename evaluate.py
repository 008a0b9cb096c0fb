"""Evaluates a trained workdir: the flat network against Super-Sub, storage, memory, throughput.

  python evaluate.py --workdir=runs/demo [--config.evaluate.batch_size=64 ...]

Uses the config train.py stored in the workdir; --config=FILE and --config.x=y override it (with a warning that
lists what differs from training). Prints a line per phase (stage k/n, with counts and an ETA), then the verdict
and the report table; writes report.json, report.md and PNG plots into the workdir. Each part (a network's
predictions, the timing and memory) is kept in <workdir>/evaluation/ with the fingerprint of what it read: a rerun
redoes only the parts whose checkpoints or config fields changed, and with nothing changed shows the stored report
in seconds; --force redoes everything. Holds the workdir's lock while it runs (one run at a time, train.py
included). Exit status: 0 done, 1 an error (one line), 130 / 143 stopped by SIGINT / SIGTERM (the previous report
files are left as they were).
"""

from supersub_jax import interrupts

interrupts.install()  # before the heavy imports: a SIGINT or SIGTERM during them must stop the run too

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from supersub_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'The workdir that train.py wrote.')
flags.DEFINE_bool('force', False, 'Evaluate again even if nothing changed since the stored report.')
cli.define_config_flag(stored_in_workdir=True)


def main(argv):
  if len(argv) > 1:
    raise ValueError(f'Unexpected arguments: {argv[1:]}')
  cli.required_path('workdir', FLAGS.workdir, 'runs/demo')
  from supersub_jax import evaluation, locks, preflight, report_text, runtime  # pylint: disable=g-import-not-at-top
  config = cli.config_for_workdir(FLAGS.config, FLAGS.workdir)
  runtime.initialize_runtime(config)
  preflight.check(config, training=False)
  # One run at a time per workdir (train.py holds the same lock); taking it also finds a workdir that cannot be
  # written, before any work.
  with locks.hold_workdir(FLAGS.workdir, program='evaluate.py',
                          writes='report.json, report.md, the PNG plots and evaluation/', create=False):
    result = evaluation.run(config, FLAGS.workdir, force=FLAGS.force)
  print(report_text.headline(result))
  where = report_text.map_line(result)
  if where:
    print(where)
  print(report_text.table(report_text.summary_rows(result)))
  done = 'Kept' if result['evaluation']['kept'] == ['report'] else 'Wrote'
  print(f'\n{done} {FLAGS.workdir}/report.json, report.md and {", ".join(result.get("plots", []))}')


if __name__ == '__main__':
  cli.run(main)
