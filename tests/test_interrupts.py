"""supersub_jax.interrupts: a SIGINT or SIGTERM reaches the main code, even when Python drops it on its way."""

import signal
import subprocess
import sys

import pytest

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


_RAISED_IN_AN_ASYNCIO_CALLBACK = '''
import asyncio, os, signal
from supersub_jax import interrupts
interrupts.install()

def callback():  # a plain callback, as asyncio's Task.task_wakeup is: asyncio logs and drops what it raises
  os.kill(os.getpid(), signal.SIGTERM)
  for _ in range(100000):  # Python code: the handler runs here, inside the callback
    pass

async def work():
  asyncio.get_running_loop().call_soon(callback)
  for _ in range(100):
    await asyncio.sleep(0.01)
  print('the run went on')

try:
  asyncio.run(work())
except interrupts.Interrupted as e:
  assert e.signum == signal.SIGTERM
  print('reached the main code')
'''


def test_an_interrupt_raised_inside_an_asyncio_callback_reaches_the_main_code():
  # orbax restores in an asyncio loop on the main thread: a SIGTERM handled inside Task.task_wakeup was logged as
  # "Exception in callback" and dropped, and convert waited forever in selectors.select.
  out = subprocess.run([sys.executable, '-c', _RAISED_IN_AN_ASYNCIO_CALLBACK], capture_output=True, text=True,
                       timeout=60)
  assert out.returncode == 0 and out.stdout == 'reached the main code\n', out.stdout + out.stderr[-3000:]
  assert 'Exception in callback' not in out.stderr


_RESTORING_UNTIL_STOPPED = '''
import json, os, signal, sys, time
from supersub_jax import interrupts
interrupts.install()
sys.path.insert(0, {tests!r})
from conftest import make_tiny_config
from supersub_jax import bundle, convert
config = make_tiny_config({data_dir!r})
print('ready', flush=True)
while True:
  try:
    while True:
      bundle.write_bundle({output!r}, convert.make_bundle(config, {workdir!r}))  # orbax restores, an atomic write
  except interrupts.Interrupted as e:
    interrupts._pending = None  # pylint: disable=protected-access
    print('caught', e.signum, flush=True)
'''


@pytest.mark.slow
def test_dozens_of_interrupts_across_checkpoint_restores_each_reach_the_main_code_at_once(tiny_workdir, tmp_path):
  # One process, restoring a workdir's checkpoints (orbax: asyncio on the main thread, threads, GC callbacks) over
  # and over; each signal, at a random moment, must reach the main code within a bounded time, none swallowed.
  import os  # pylint: disable=g-import-not-at-top
  import random  # pylint: disable=g-import-not-at-top
  import selectors  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  config, workdir, _ = tiny_workdir
  script = _RESTORING_UNTIL_STOPPED.format(tests=os.path.dirname(os.path.abspath(__file__)), data_dir=config.data_dir,
                                           output=str(tmp_path / 'b.msgpack'), workdir=workdir)
  with default_sigint():
    child = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  rng = random.Random(0)
  latencies = []
  try:
    assert child.stdout.readline() == 'ready\n', child.stderr.read()[-3000:] if child.poll() is not None else ''
    with selectors.DefaultSelector() as selector:
      selector.register(child.stdout, selectors.EVENT_READ)
      for i in range(36):
        time.sleep(rng.uniform(0, 0.3))  # into the restores, the writes, the gaps between them
        signum = (signal.SIGINT, signal.SIGTERM)[i % 2]
        sent = time.monotonic()
        child.send_signal(signum)
        assert selector.select(timeout=10), f'interrupt {i} ({signum.name}) never reached the main code'
        assert child.stdout.readline() == f'caught {int(signum)}\n'
        latencies.append(time.monotonic() - sent)
  finally:
    child.kill()
    stderr = child.communicate()[1]
  # (Threads of an interrupted restore may still print "Event loop is closed": an entry point has printed its one
  # line by then and discards them, cli.run; this process goes on restoring.)
  assert 'Exception in callback' not in stderr, stderr[-3000:]
  assert max(latencies) < 5, latencies


_NOISY_SHUTDOWN = '''
import signal, sys, threading, time, traceback
from supersub_jax import interrupts
interrupts.install()
from supersub_jax import cli
interrupts.EXIT_GRACE_SECONDS = 1.0

def noisy():  # as orbax's threads do once their event loop is gone: a traceback, and a thread that never ends
  while interrupts.interrupted() is None:
    time.sleep(0.01)
  time.sleep(0.3)  # the main thread has printed the line meanwhile
  try:
    raise RuntimeError('Event loop is closed')
  except RuntimeError:
    traceback.print_exc()
  time.sleep(3600)

def main(argv):
  threading.Thread(target=noisy).start()  # not a daemon: the interpreter waits for it at exit
  print('working', flush=True)
  while True:
    time.sleep(0.01)

cli.run(main)
'''


def test_after_the_one_line_nothing_is_printed_and_the_process_ends_in_bounded_time():
  import time  # pylint: disable=g-import-not-at-top
  child = subprocess.Popen([sys.executable, '-c', _NOISY_SHUTDOWN], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  try:
    assert child.stdout.readline() == 'working\n'
    sent = time.monotonic()
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=30)
  finally:
    child.kill()
    child.wait()
  assert time.monotonic() - sent < 1.0 + 5  # the grace period, and the start of a fresh interpreter's exit
  assert child.returncode == 143
  assert stderr == interrupts.message(signal.SIGTERM) + '\n'
