"""What every absl entry point shares: the --config flag, quiet logs, and one-line errors.

Entry points (``train.py``, ``evaluate.py``, ``python -m tools.convert|prepare|hierarchy``) call
``run(main)`` instead of ``app.run(main)``. Exit status:

* 0: done;
* 1: bad input or a fault the run cannot fix itself (a wrong config, a checkpoint made with other settings, no intact
  checkpoint, a non-finite step): one line, ``error: <what and how to fix it>`` (``--debug`` shows the traceback);
* 75 (``interrupts.PREEMPTED_EXIT_CODE``, EX_TEMPFAIL): train.py preempted by SIGTERM after saving a checkpoint; rerun
  the same command to resume;
* 130 / 143 (``interrupts.INTERRUPT_EXIT_CODES``): stopped by SIGINT / SIGTERM (SIGINT only for train.py, whose SIGTERM
  is a preemption), in one line; every file is the old one or the new one, never half of one;
* anything else: a crash, with its traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Callable, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from supersub_jax import config as config_lib
from supersub_jax import interrupts

FLAGS = flags.FLAGS
# Bad input: the message names the problem and the fix; a traceback would only bury it.
USER_ERRORS = (ValueError, OSError, FloatingPointError)  # OSError: missing files, permissions, a full disk


def _argv_value(name: str, argv: Sequence[str]) -> str | None:
  """The value of --name in argv (``--name=v`` or ``--name v``), ignoring ``--name.field=...`` overrides."""
  for i, arg in enumerate(argv):
    for dashes in ('--', '-'):
      if arg.startswith(f'{dashes}{name}='):
        return arg.split('=', 1)[1]
      if arg == f'{dashes}{name}' and i + 1 < len(argv):
        return argv[i + 1]
  return None


def required_path(name: str, value: str | None, example: str) -> str:
  """The value of the path flag --name; raises ValueError when it is missing or empty.

  An empty path is the current directory to ``os.path``: ``--workdir=$WORKDIR`` with the variable unset would
  write a run's files into wherever the command was started (the repository, say).
  """
  if value is None or not value.strip():
    state = 'missing' if value is None else f'empty ({value!r}; an unset shell variable?)'
    raise ValueError(f'--{name} is {state}: pass a path, e.g. --{name}={example}.')
  return value


def define_config_flag(*, stored_in_workdir: bool) -> None:
  """Defines --config (a configs/*.py file; fields overridden with --config.x=y).

  With ``stored_in_workdir`` (evaluate.py, convert) --config may be left out: the config train.py stored in
  --workdir is used, and --config.x=y overrides apply on top of it (``config_for_workdir`` warns about each).
  """
  argv = sys.argv
  if stored_in_workdir and _argv_value('config', argv) is None:
    workdir = _argv_value('workdir', argv)
    if workdir and os.path.exists(config_lib.path(workdir)):
      try:
        stored = config_lib.read(workdir)
      except ValueError:  # unreadable: main() reports it through config_for_workdir
        stored = None
      if stored is not None:
        try:  # ml_collections applies the --config.x=y overrides of sys.argv here, at once
          config_flags.DEFINE_config_dict('config', stored, 'The config stored in --workdir (by train.py); '
                                          'override fields with --config.x=y.', lock_config=True)
        except (AttributeError, KeyError) as e:
          if _debug_in(argv):
            raise
          print(f'error: {_config_problem(e, argv)}', file=sys.stderr)
          sys.exit(1)
        _list_in_help('config')
        return
  help_ = ('A configs/*.py file; override fields with --config.x=y.' +
           (' Optional: by default the config stored in --workdir by train.py.' if stored_in_workdir else ''))
  config_flags.DEFINE_config_file('config', None, help_, lock_config=True)
  _list_in_help('config')


def _list_in_help(name: str) -> None:
  """Lists flag ``name`` in the program's own --help (absl shows there only the main module's flags; a flag defined
  here would be left to --helpfull)."""
  flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])


def config_for_workdir(config, workdir: str):
  """The config to evaluate or convert ``workdir`` with: the given one (file and overrides), else the stored one.

  Warns, listing every field that differs from the config the workdir was trained with.
  """
  if config is None:
    return config_lib.read(workdir)  # raises with the fix when the workdir has no stored config
  if os.path.exists(config_lib.path(workdir)):
    changed = config_lib.differences(config_lib.read(workdir), config)
    if changed:
      logging.warning('%d config field(s) differ from the config %s was trained with:\n  %s', len(changed),
                      workdir, '\n  '.join(changed))
  return config


def quiet_logs() -> None:
  """orbax and tfds log every save and restore at INFO; progress lines are printed. --verbosity=0 shows them."""
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def define_debug_flag() -> None:
  if 'debug' not in FLAGS:
    flags.DEFINE_bool('debug', False, 'On an error, show the full traceback instead of one line.')


def _config_problem(e: Exception, argv: Sequence[str]) -> str:
  """What went wrong while the flags were parsed, in one line: an unknown --config.x=y field, or a config file
  that does not load (a syntax error, an exception of its own), with the file and line."""
  overrides = [a for a in argv if a.lstrip('-').startswith('config.')]
  if isinstance(e, (AttributeError, KeyError)):
    field = str(e).strip('"\'')
    named = [a for a in overrides if field in a.lstrip('-').split('=', 1)[0].split('.')[1:]]
    return (f'{", ".join(named) or "a --config.x=y override"}: the config has no field {field!r}; '
            '`--helpfull` lists the fields (as --config.<field>), or see the configs/*.py file.')
  config = _argv_value('config', argv)
  where = ''
  if isinstance(e, SyntaxError):
    where = f' ({e.filename}, line {e.lineno})'
  else:
    frames = [f for f in traceback.extract_tb(e.__traceback__) if config and f.filename.endswith(
        config.split(':', 1)[0].rsplit('/', 1)[-1])]
    if frames:
      where = f' ({frames[-1].filename}, line {frames[-1].lineno})'
  message = e.msg if isinstance(e, SyntaxError) else str(e)
  return (f'--config={config} could not be loaded: {type(e).__name__}: {message}{where}; fix the file or pass '
          'another --config.' if config else f'the --config flags could not be parsed: {type(e).__name__}: {e}')


def _parse_flags(parser: Callable, argv: Sequence[str]):
  """``parser(argv)``, with a config that does not load or an override of an unknown field reported as one line
  ``error: ...``, exit status 1 (absl reports its own flag errors; ``--debug`` shows the traceback)."""
  try:
    rest = parser(argv)
    config = FLAGS['config'].value if 'config' in FLAGS else None
    if type(config).__name__ == '_ErrorConfig':  # ml_collections defers a file it could not read to its first use
      reason = str(getattr(config, '_error', '')).strip().splitlines() or ['unreadable']
      raise ValueError(f'--config={_argv_value("config", argv)} could not be read: {reason[-1].strip()}; pass a '
                       'configs/*.py file, e.g. --config=configs/synthetic.py.')
    return rest
  except flags.Error as e:  # e.g. --config.batch_size=abc: absl's own parser, outside parse_flags_with_usage
    problem = str(e)
  except Exception as e:  # pylint: disable=broad-except  (a config file runs arbitrary code)
    if _debug_in(argv):
      raise
    problem = str(e) if isinstance(e, ValueError) and str(e).startswith('--config=') else _config_problem(e, argv)
  print(f'error: {problem}', file=sys.stderr)
  sys.exit(1)


def _debug_in(argv: Sequence[str]) -> bool:
  return any(a in ('--debug', '-debug', '--debug=true', '--debug=True', '--debug=1') for a in argv)


def _exit_interrupted(signum: int) -> None:
  for s in interrupts.INTERRUPT_EXIT_CODES:  # a second signal while this one is reported ends the process at once
    signal.signal(s, signal.SIG_DFL)
  print(interrupts.message(signum), file=sys.stderr, flush=True)
  interrupts.exit_after_line(interrupts.INTERRUPT_EXIT_CODES.get(signum, 128 + signum))


def run(main: Callable[[list[str]], None], *, flags_parser: Callable | None = None,
        interrupt_signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> None:
  """``app.run(main)``, with bad input reported as one line (exit status 1) unless --debug, and each of
  ``interrupt_signals`` ending the run in one line with its own exit status (``interrupts.INTERRUPT_EXIT_CODES``;
  entry points install them before their heavy imports too, ``interrupts.install``)."""
  define_debug_flag()

  def wrapped(argv):
    quiet_logs()
    interrupts.install(interrupt_signals)
    try:
      main(argv)
      interrupts.raise_if_interrupted()  # a signal that arrived as the work ended still ends the run as interrupted
      interrupts.work_done()  # a signal from now on, during the shutdown, is ignored: the run has finished
    except interrupts.Interrupted as e:
      _exit_interrupted(e.signum)
    except interrupts.Preempted as e:
      interrupts.work_done()  # saved: the run ends here, with this line
      print(str(e), file=sys.stderr)
      sys.exit(interrupts.PREEMPTED_EXIT_CODE)
    except USER_ERRORS as e:
      if interrupts.interrupted() is not None:  # an interrupt that a library turned into another error on its way
        _exit_interrupted(interrupts.interrupted())
      if FLAGS.debug:
        raise
      interrupts.work_done()  # the run ends here, with this line
      print(f'error: {e}', file=sys.stderr)
      sys.exit(1)
    except Exception:  # pylint: disable=broad-except
      if interrupts.interrupted() is not None:
        _exit_interrupted(interrupts.interrupted())
      raise

  parser = flags_parser or FLAGS  # not app.parse_flags_with_usage: its flag errors take two lines, 'FATAL ...'
  app.run(wrapped, flags_parser=lambda argv: _parse_flags(parser, argv))
