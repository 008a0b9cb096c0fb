"""supersub_jax.interrupts: a SIGINT or SIGTERM reaches the main code, even when Python drops it on its way."""

import signal
import subprocess
import sys

from processes import default_sigint
from supersub_jax import interrupts

_DROPPED_IN_A_GC_CALLBACK = '''
import gc, os, signal, time
from supersub_jax import interrupts
interrupts.install()
armed = [True]

def callback(phase, info):
  if armed[0]:
    armed[0] = False
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(10000):  # Python code: the handler runs here, inside the callback, and its exception is dropped
      pass

gc.callbacks.append(callback)
try:
  gc.collect()
  assert not armed[0]
  for _ in range(500):
    time.sleep(0.01)
except interrupts.Interrupted as e:
  assert e.signum == signal.SIGINT and e.exit_code == 130 and interrupts.interrupted() == signal.SIGINT
  print('reached the main code')
'''


def test_an_interrupt_that_python_drops_in_a_gc_callback_is_delivered_again():
  # jax runs a Python callback on every garbage collection: a SIGINT handled inside it raised there, Python printed
  # "Exception ignored" and evaluate.py went on to the end. The interrupt must reach the main code all the same.
  with default_sigint():
    out = subprocess.run([sys.executable, '-c', _DROPPED_IN_A_GC_CALLBACK], capture_output=True, text=True,
                         timeout=60)
  assert out.returncode == 0 and 'reached the main code' in out.stdout, out.stderr[-3000:]


def test_a_signal_the_parent_ignores_stays_ignored():
  # A shell without job control starts '&' jobs with SIGINT ignored; Python leaves it so, and so do the entry points.
  saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  hooks = sys.unraisablehook, sys.excepthook
  try:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    interrupts.install()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is interrupts._handler  # pylint: disable=protected-access
  finally:
    for s, handler in saved.items():
      signal.signal(s, handler)
    sys.unraisablehook, sys.excepthook = hooks
