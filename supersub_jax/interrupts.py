"""Interrupts: SIGINT (and SIGTERM where it is not a preemption) stop a run at once, in one line, never lost.

  from supersub_jax import interrupts
  interrupts.install()       # first thing in an entry point, before jax is imported

Each signal raises ``Interrupted`` in the main thread; ``cli.run`` reports it in one line and exits 130 (SIGINT) or
143 (SIGTERM); every ``files.atomic_write`` block it crosses removes its temporary file, and none commits once a
signal came. Standard library only, so that an entry point can install it before its heavy imports: jax registers a
garbage-collector callback as it is imported, and a signal handled inside that callback is lost (see
``_redeliver_lost_interrupt``).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time

INTERRUPT_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number, as shells report it
_pending: int | None = None  # the signal that asked this process to stop, once one has

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"; a scheduler can requeue on it, unlike a crash's 1
# SIGINT / SIGTERM outside a preemption: INTERRUPT_EXIT_CODES (130 / 143).


class Preempted(Exception):
  """Raised after a SIGTERM once the checkpoint of the current step is saved (entry points exit with
  ``PREEMPTED_EXIT_CODE``; runtime.Preemption raises it)."""


class Interrupted(KeyboardInterrupt):
  """Raised in the main thread by SIGINT or SIGTERM (``install``).

  A KeyboardInterrupt (so a BaseException), so that ``except Exception`` in a library does not swallow it, and so
  that asyncio lets it through: asyncio logs and drops any other exception raised in one of its callbacks
  ("Exception in callback Task.task_wakeup"), and the handler runs wherever the main thread is, inside orbax's event
  loop included; that left ``convert`` waiting forever in ``selectors.select``.
  """

  def __init__(self, signum: int):
    self.signum = int(signum)
    self.exit_code = INTERRUPT_EXIT_CODES.get(self.signum, 128 + self.signum)
    super().__init__(f'interrupted by {signal.Signals(self.signum).name}')


def interrupted() -> int | None:
  """The signal that interrupted this process (its exception may not have reached the main code yet), or None."""
  return _pending


def raise_if_interrupted() -> None:
  """Raises ``Interrupted`` if a signal asked this process to stop: called before anything is committed to disk, so
  that an interrupt that was lost on its way still prevents the write."""
  if _pending is not None:
    raise Interrupted(_pending)


def _handler(signum, frame):
  del frame
  global _pending
  _pending = signum
  raise Interrupted(signum)


def _redeliver_lost_interrupt(unraisable, previous=None) -> None:
  """``sys.unraisablehook``: an ``Interrupted`` raised where Python cannot propagate it is sent again.

  Python runs a signal's handler in the main thread at the next bytecode boundary, which may be inside a garbage
  collector callback (jax registers one, ``_xla_gc_callback``, that runs on every collection), a ``__del__`` or a
  weakref callback. An exception raised there is printed as "Exception ignored" and dropped, and the run goes on:
  that is how SIGINT was ignored by evaluate.py. The signal is sent again from a thread a moment later, when the
  main thread is back in ordinary code.
  """
  if unraisable.exc_type is not None and issubclass(unraisable.exc_type, Interrupted):
    signum = unraisable.exc_value.signum if unraisable.exc_value is not None else (_pending or signal.SIGINT)

    def resend():
      time.sleep(0.05)
      os.kill(os.getpid(), signum)

    threading.Thread(target=resend, name='redeliver-interrupt', daemon=True).start()
    return
  (previous or sys.__unraisablehook__)(unraisable)


def message(signum: int) -> str:
  """The one line a run stopped by ``signum`` ends with."""
  return (f'interrupted by {signal.Signals(signum).name}: stopped; no file was left half-written (each is the old '
          'one or the new one). Rerun the same command to finish.')


def _report_at_top_level(exc_type, exc, tb, previous=None) -> None:
  """``sys.excepthook``: an ``Interrupted`` that escapes to the top level (it came during the entry point's imports,
  before ``cli.run``) ends the process as one inside the run does: one line, its exit status. Nothing was written
  yet, so nothing is left to clean up."""
  if issubclass(exc_type, Interrupted):
    sys.stdout.flush()
    print(message(exc.signum), file=sys.stderr, flush=True)
    os._exit(exc.exit_code)  # pylint: disable=protected-access  (an excepthook cannot choose the exit status)
  (previous or sys.__excepthook__)(exc_type, exc, tb)


def work_done() -> None:
  """The run's work has ended (its results written and reported): a SIGINT or SIGTERM from now on has nothing to
  stop, and is ignored. Python restores a handled signal's default action as it shuts down, and jax's teardown
  after that takes a while: a signal then killed the process with no line at all. An ignored signal stays ignored
  through the shutdown, and the process exits 0 after its last line."""
  for signum in INTERRUPT_EXIT_CODES:
    signal.signal(signum, signal.SIG_IGN)


# After the one line of an interrupt, the most the process may take to end (its threads and atexit handlers).
EXIT_GRACE_SECONDS = 10.0


def exit_after_line(code: int) -> None:
  """Ends the process with exit status ``code`` once its one line has been printed: whatever the shutdown prints
  after it (asyncio's "Event loop is closed" from orbax's threads, a library's traceback of the interrupt it met)
  is discarded, and a shutdown that takes longer than ``EXIT_GRACE_SECONDS`` (a thread that never ends) is cut
  short. Raises SystemExit, so that ``finally`` blocks and atexit handlers still run."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  try:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
  except OSError:
    pass

  def watchdog():
    time.sleep(EXIT_GRACE_SECONDS)
    os._exit(code)  # pylint: disable=protected-access

  threading.Thread(target=watchdog, name='interrupt-exit-watchdog', daemon=True).start()
  sys.exit(code)


def install(signals=(signal.SIGINT, signal.SIGTERM)) -> None:
  """Makes each of ``signals`` raise ``Interrupted`` in the main thread, never lost (call it from the main thread;
  calling it again is harmless).

  train.py passes SIGINT only: its SIGTERM is a preemption (``runtime.Preemption``: save, then exit 75). A signal
  that the parent process set to be ignored stays ignored, as Python itself leaves SIGINT then: a shell without job
  control ignores SIGINT in the jobs it starts with ``&``, so that a Ctrl-C meant for the foreground does not stop
  them.
  """
  for signum in signals:
    if signal.getsignal(signum) is signal.SIG_IGN:
      continue
    signal.signal(signum, _handler)
  if getattr(sys.unraisablehook, 'func', None) is not _redeliver_lost_interrupt:
    sys.unraisablehook = functools.partial(_redeliver_lost_interrupt, previous=sys.unraisablehook)
  if getattr(sys.excepthook, 'func', None) is not _report_at_top_level:
    sys.excepthook = functools.partial(_report_at_top_level, previous=sys.excepthook)
