"""Time to the first training step of train.py, with a cold and a warm persistent compilation cache.

  python benchmarks/startup.py --config=configs/synthetic.py --runs=2

Each run is a fresh `python train.py` process on a fresh workdir (vanilla stage only), killed once its first step
is done; the seconds from launching the process to the step-1 record in ``metrics.jsonl`` (written after the step's
metrics reach the host) are what a user waits before training starts: imports, data opening, model init and the
compilation of the step. ``cold``: an empty compilation cache
directory; ``warm``: the same directory again, now filled by the cold run. The dataset is already built (its first
build is not counted). Prints a table and JSON.
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


def _time_to_first_step(cache: str, workdir: str) -> float:
  env = {**os.environ, 'JAX_COMPILATION_CACHE_DIR': cache, 'PYTHONUNBUFFERED': '1'}
  start = time.perf_counter()
  proc = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'train.py'), f'--config={_CONFIG.value}', f'--workdir={workdir}',
       f'--config.data_dir={os.path.abspath(_DATA_DIR.value)}', "--config.stages=('vanilla',)",
       '--config.vanilla.num_train_steps=1000'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=env, cwd=ROOT)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  while proc.poll() is None:
    if os.path.exists(metrics) and '"step": 1,' in open(metrics).read():
      seconds = time.perf_counter() - start
      proc.kill()
      proc.wait()
      return seconds
    time.sleep(0.05)
  raise RuntimeError('train.py ended before its first step:\n' + proc.stdout.read()[-3000:])


def main(argv):
  del argv
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for run in range(_RUNS.value):
      cache = os.path.join(tmp, f'cache{run}')
      os.makedirs(cache)
      for kind in ('cold', 'warm'):
        seconds = _time_to_first_step(cache, os.path.join(tmp, f'w{run}_{kind}'))
        rows.append({'run': run, 'cache': kind, 'seconds_to_first_step': seconds})
        print(f'run {run} {kind:>4} cache: {seconds:6.1f} s to the first step', flush=True)
  for kind in ('cold', 'warm'):
    values = [r['seconds_to_first_step'] for r in rows if r['cache'] == kind]
    print(f'{kind}: mean {sum(values) / len(values):.1f} s over {len(values)} run(s)')
  print(json.dumps(rows))


if __name__ == '__main__':
  app.run(main)
