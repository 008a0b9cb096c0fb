"""Time to the first and second training steps of train.py, with a cold and a warm persistent compilation cache.

  python -m benchmarks.startup --config=configs/synthetic.py --runs=2

Each run is a fresh `python train.py` process on a fresh workdir (vanilla stage only), killed once its first step
is done; the seconds from launching the process to the step-1 record in ``metrics.jsonl`` (written after the step's
metrics reach the host) are what a user waits before training starts: imports, data opening, model init and the
compilation of the step. The step-2 record (``log_every_steps=2``) shows whether the second call runs at speed or
compiles the step again (as it did while the replicated state and the step's output state differed in sharding).
``cold``: an empty compilation cache directory; ``warm``: the same directory again, now filled by the cold run. The
dataset is already built (its first build is not counted). Prints a table and JSON.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

_CONFIG = flags.DEFINE_string('config', 'configs/synthetic.py', 'Config file.')
_RUNS = flags.DEFINE_integer('runs', 2, 'Runs of each kind (cold runs each get a new empty cache).')
_DATA_DIR = flags.DEFINE_string('data_dir', './data', 'The dataset directory.')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _time_to_steps(cache: str, workdir: str) -> tuple[float, float]:
  env = {**os.environ, 'JAX_COMPILATION_CACHE_DIR': cache, 'PYTHONUNBUFFERED': '1'}
  start = time.perf_counter()
  proc = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'train.py'), f'--config={_CONFIG.value}', f'--workdir={workdir}',
       f'--config.data_dir={os.path.abspath(_DATA_DIR.value)}', "--config.stages=('vanilla',)",
       '--config.vanilla.num_train_steps=1000', '--config.log_every_steps=2'],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  seconds = {}
  while proc.poll() is None:
    text = open(metrics).read() if os.path.exists(metrics) else ''
    for step in (1, 2):
      if step not in seconds and f'"step": {step},' in text:
        seconds[step] = time.perf_counter() - start
    if len(seconds) == 2:
      proc.kill()
      proc.wait()
      return seconds[1], seconds[2]
    time.sleep(0.05)
  raise RuntimeError('train.py ended before its second step:\n' + proc.stdout.read()[-3000:])


def main(argv):
  del argv
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for run in range(_RUNS.value):
      cache = os.path.join(tmp, f'cache{run}')
      os.makedirs(cache)
      for kind in ('cold', 'warm'):
        first, second = _time_to_steps(cache, os.path.join(tmp, f'w{run}_{kind}'))
        rows.append({'run': run, 'cache': kind, 'seconds_to_first_step': first, 'seconds_to_second_step': second})
        print(f'run {run} {kind:>4} cache: {first:6.1f} s to the first step, {second:6.1f} s to the second',
              flush=True)
  for kind in ('cold', 'warm'):
    for key in ('seconds_to_first_step', 'seconds_to_second_step'):
      values = [r[key] for r in rows if r['cache'] == kind]
      print(f'{kind}: {key.replace("_", " ")}: mean {sum(values) / len(values):.1f} s over {len(values)} run(s)')
  print(json.dumps(rows))


if __name__ == '__main__':
  app.run(main)
