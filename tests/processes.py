"""Child processes for tests: several at once, all killed on a timeout, their output always read."""

import contextlib
import signal
import subprocess
import time


def run_together(commands, *, env=None, timeout: float = 600, cwd=None) -> list[tuple[int, str]]:
  """Starts every command at once; returns (returncode, stdout+stderr) of each.

  If any is still running after ``timeout`` seconds, all are killed and AssertionError shows what each printed, so
  a stuck peer (e.g. one process waiting forever in a collective) cannot hang the suite.
  """
  procs = [subprocess.Popen(c, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for c in commands]
  deadline = time.monotonic() + timeout
  outputs = [None] * len(procs)
  try:
    for i, p in enumerate(procs):
      outputs[i] = p.communicate(timeout=max(deadline - time.monotonic(), 0.1))[0]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    texts = [(o if o is not None else p.communicate()[0]) for p, o in zip(procs, outputs)]
    raise AssertionError(f'killed {len(procs)} processes after {timeout:.0f} s:\n' + '\n'.join(
        f'--- process {i} ---\n{t[-3000:]}' for i, t in enumerate(texts))) from None
  return [(p.returncode, o) for p, o in zip(procs, outputs)]


@contextlib.contextmanager
def default_sigint():
  """Children started in this block get SIGINT as a terminal gives it, whatever this process inherited: a shell
  without job control starts background jobs with SIGINT ignored, and the entry points keep an ignored signal
  ignored. (A handled signal is reset to its default by exec; no preexec_fn, which would fork a threaded process.)"""
  previous = signal.getsignal(signal.SIGINT)
  if previous is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
