r"""The GPU list: every GPU measurement the project wants, run in one sitting on a GPU host, each item with its own timeout.

  bash benchmarks/gpu.sh "$OUT"                      # on a GPU host (sets up Python, then runs this)
  python -m benchmarks.gpu --out=/tmp/gpu_smoke --cpu_smoke   # here: every item at toy size, in minutes
  python -m benchmarks.gpu --out=DIR --items=bare_step,routed_inference   # a chosen subset, in that order
  python -m benchmarks.gpu --out=DIR --extra=studies_gpu.txt               # the seed-study slot (see ``extra``)

A GPU host may start bare and give one command only about 10 minutes, so the list runs
under one deadline (``--budget_s``, 540 s by default): items run in order, each under ``min(its timeout, the time
left)``, and an item that would start with less than ``MIN_START_S`` left is recorded as skipped. One slow item
never eats the rest: it is killed at its timeout (with its whole process group) and the list goes on.

Everything goes to ``--out``: ``summary.json`` (per item: status, wall seconds, the numbers parsed from its output),
``summary.md`` (the same as a table) and ``items.log`` (each item's commands and the tail of their output). Three
files, because the device tool returns at most 8 from ``$OUT``.

Items (``ITEMS``, in default order):
  env               python, jax, devices, nvidia-smi;
  dali_contract     tests/test_dali.py: the CPU and DALI decoders meet one contract (skipped without DALI);
  bare_step         benchmarks.train_step: the plain ResNet-50 bf16 step at batch 256, batches already on device;
  routed_inference  benchmarks.inference_scale: the single network against Super-Sub on every routing path
                    (``inference.ROUTINGS``), ResNet-50 at 224 in bf16, batches 1 and 256;
  input_pipeline    benchmarks.input_pipeline: photo-like 375x500 JPEGs -> RandomResizedCrop 224, by worker count;
  imagenet_recipe   configs/imagenet_superclassing_resnet50.py's vanilla stage on a fake ILSVRC2012 of photo-like
                    JPEGs (the 253 classes of mixed_10), grain workers on the host's cores: end-to-end training
                    images/s, to hold against bare_step's;
  demo              ``make demo``'s two commands (train.py and evaluate.py on configs/synthetic.py): wall time and
                    images/s per stage, and the report's headline numbers;
  scaling_n20       benchmarks.scaling's ResNet-50 row at N = 20 (224px, bf16, training batch 256; 2 distinct
                    exported specialists repeated to 20, since exporting 20 ResNet-50s on the host outlasted whole
                    earlier GPU sittings, and costs do not depend on the values);
  extra             the commands of ``--extra`` (one per line; ``#`` comments), each with ``--extra_timeout_s``:
                    the slot for the lead's seed study (``studies/...``; benchmarks/gpu_studies.txt holds the
                    regimes study). Commands run from the repository root with ``$PY`` (this Python), ``$WORK`` (a
                    scratch folder) and ``$OUT`` (--out, which comes back) set.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

from absl import app
from absl import flags

_OUT = flags.DEFINE_string('out', None, 'Folder for summary.json, summary.md and items.log.')
_WORK = flags.DEFINE_string('work', '/tmp/supersub_gpu_work', 'Scratch folder (datasets, workdirs).')
_SMOKE = flags.DEFINE_bool('cpu_smoke', False, 'Every item at toy size (a CPU check of the list itself).')
_ITEMS = flags.DEFINE_list('items', None, 'Items to run, in this order (default: all, in ITEMS order).')
_BUDGET = flags.DEFINE_float('budget_s', 540.0, 'Deadline for the whole list, from the start of this script.')
_EXTRA = flags.DEFINE_string('extra', None, 'A file of extra commands (the seed-study slot), one per line.')
_EXTRA_TIMEOUT = flags.DEFINE_float('extra_timeout_s', 120.0, 'Timeout of each extra command.')
flags.mark_flags_as_required(['out'])

MIN_START_S = 20.0  # an item with less than this left would only measure its own start-up
LOG_TAIL = 60_000  # characters of each command's output kept in items.log


def _items(smoke: bool, work: str, extra: list[str]) -> dict[str, dict]:
  """name -> {'timeout': s, 'commands': [argv lists or shell strings]}; toy sizes with ``smoke``."""
  py = sys.executable
  fake = os.path.join(work, 'fake_imagenet')
  if smoke:
    model = ['--model=resnet_tiny', '--image_size=32', '--stem=imagenet']
    bare = [py, '-m', 'benchmarks.train_step', *model, '--batch_size=8', '--devices=1', '--kinds=plain',
            '--steps=10']
    routed = [[py, '-m', 'benchmarks.inference_scale', *model, '--sizes=3,2,2', '--batch_sizes=1,16',
               '--repeats=2', '--routing=loop,padded,offline', f'--data_dir={work}/synthetic']]
    pipeline_cmd = [py, '-m', 'benchmarks.input_pipeline', '--dataset=imagenet2012', f'--data_dir={fake}_bench',
                    '--image_size=224', '--augment=random_resized_crop', '--workers=0', '--batch_size=8',
                    '--batches=2', '--warmup=1', '--fake_classes=2', '--fake_per_class=8']
    recipe_sizes = ['--config.model=resnet_tiny', '--config.image_size=32', '--config.batch_size=16',
                    '--config.eval_batch_size=16', '--config.worker_count=0', '--config.vanilla.num_train_steps=4',
                    '--config.vanilla.warmup_steps=1', '--config.log_every_steps=2']
    per_class, photo = 1, '96,128'
    demo_config = f'tests/tiny_config.py:{work}/demo_data'
    scaling = [py, '-m', 'benchmarks.scaling', '--models=resnet_tiny', '--num_superclasses=3', '--subclasses=6',
               '--batch_sizes=1,8', '--train_batch_size=8', '--repeats=1', '--distinct_specialists=2',
               f'--data_dir={work}/synthetic',
               f'--out={work}/scaling_n20']
  else:
    model = ['--model=resnet50', '--image_size=224', '--stem=imagenet']
    bare = [py, '-m', 'benchmarks.train_step', *model, '--batch_size=256', '--half_precision', '--devices=1',
            '--kinds=plain', '--steps=10']
    routed = [[py, '-m', 'benchmarks.inference_scale', *model, '--batch_sizes=1,256', '--repeats=5',
               '--half_precision', '--routing=loop,padded,offline', f'--data_dir={work}/synthetic']]
    pipeline_cmd = [py, '-m', 'benchmarks.input_pipeline', '--dataset=imagenet2012', f'--data_dir={fake}_bench',
                    '--image_size=224', '--augment=random_resized_crop', '--workers=0,8,14', '--batch_size=64',
                    '--batches=20', '--warmup=4']
    recipe_sizes = ['--config.batch_size=256', '--config.worker_count=14', '--config.vanilla.num_train_steps=60',
                    '--config.vanilla.warmup_steps=10', '--config.log_every_steps=10']
    per_class, photo = 4, '375,500'
    demo_config = 'configs/synthetic.py'
    scaling = [py, '-m', 'benchmarks.scaling', '--models=resnet50', '--num_superclasses=20', '--image_size=224',
               '--stem=imagenet', '--batch_sizes=1,256', '--train_batch_size=256', '--half_precision',
               '--repeats=5', '--chunk_sizes=64,16', '--distinct_specialists=2', f'--data_dir={work}/synthetic',
               f'--out={work}/scaling_n20']
  write_fake = (f'from supersub_jax.data.fake_imagenet import write_mixed_10; '
                f'write_mixed_10({fake!r}, per_class={per_class}, photo_size=({photo}))')
  recipe = [
      [py, '-c', write_fake],
      [py, '-m', 'tools.prepare', '--dataset=imagenet2012', f'--data_dir={fake}/data',
       f'--manual_dir={fake}'],
      [py, 'train.py', '--config=configs/imagenet_superclassing_resnet50.py', f'--workdir={work}/recipe',
       f'--config.data_dir={fake}/data', f'--config.manual_dir={fake}', '--config.init.path=',
       '--config.stages=vanilla', '--config.checkpoint_every_steps=100000', *recipe_sizes],
  ]
  demo = [[py, 'train.py', f'--config={demo_config}', f'--workdir={work}/demo'],
          [py, 'evaluate.py', f'--workdir={work}/demo']]
  env = [[py, '-c', 'import sys, jax; print(sys.version); print("jax", jax.__version__, jax.devices())'],
         'nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv || true',
         'nproc; free -g | head -2']
  return {
      'env': {'timeout': 60, 'commands': env},
      'dali_contract': {'timeout': 90, 'commands': [[py, '-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider',
                                                     'tests/test_dali.py']]},
      'bare_step': {'timeout': 90, 'commands': [bare]},
      'routed_inference': {'timeout': 150, 'commands': routed},
      'input_pipeline': {'timeout': 90, 'commands': [pipeline_cmd]},
      'imagenet_recipe': {'timeout': 150, 'commands': recipe},
      'demo': {'timeout': 200, 'commands': demo},
      'scaling_n20': {'timeout': 180, 'commands': [scaling]},
      'extra': {'timeout': None, 'commands': extra},
  }


ITEMS = ('env', 'dali_contract', 'bare_step', 'routed_inference', 'input_pipeline', 'imagenet_recipe', 'demo',
         'scaling_n20', 'extra')


def _run(command, timeout: float, env: dict) -> tuple[int | None, str, float]:
  """(exit status or None on timeout, output, seconds) of one command, killed with its process group at timeout."""
  shell = isinstance(command, str)
  start = time.perf_counter()
  proc = subprocess.Popen(command, shell=shell, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, start_new_session=True)
  try:
    out, _ = proc.communicate(timeout=timeout)
    rc = proc.returncode
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)  # grain workers and other children go with it
    out, _ = proc.communicate()
    rc = None
  return rc, out or '', time.perf_counter() - start


def _json_tail(text: str):
  """The last line of ``text`` that parses as a JSON list or object (the benchmarks print their rows last)."""
  for line in reversed(text.splitlines()):
    line = line.strip()
    if line[:1] in '[{':
      try:
        return json.loads(line)
      except json.JSONDecodeError:
        continue
  return None


def _parse(name: str, outputs: list[str]) -> dict:
  """The numbers worth a summary line, from an item's outputs (empty when the output lacks them)."""
  text = '\n'.join(outputs)
  if name == 'bare_step':
    rows = _json_tail(text) or []
    return {r['kind']: {'images_per_s': r['images_per_s'], 'step_ms': 1e3 * r['step_s'], 'mfu': r['mfu']}
            for r in rows if isinstance(r, dict) and 'kind' in r}
  if name == 'routed_inference':
    result = _json_tail(text) or {}
    return {'rows': [{k: r[k] for k in ('routing', 'batch', 'single_ips', 'supersub_ips', 'ratio') if k in r}
                     for r in result.get('rows', [])],
            'params_resident': result.get('params_resident')}
  if name == 'input_pipeline':
    return {'images_per_s_by_workers': {int(w): float(r.replace(',', '')) for w, r, _ in
                                        re.findall(r'^\| (\d+) \| ([\d,.]+) \| ([\d,.]+) \|$', text, re.M)}}
  if name in ('imagenet_recipe', 'demo'):
    rates: dict[str, list[float]] = {}
    for stage, rate in re.findall(r'^\[([\w/ ]+?)\] step \d+/\d+ .* ([\d,.]+) img/s', text, re.M):
      rates.setdefault(stage, []).append(float(rate.replace(',', '')))
    # The first logged interval holds the data pipeline's start-up; the rest is the steady rate.
    out = {'images_per_s': {s: (sum(r[1:]) / len(r[1:]) if len(r) > 1 else r[0]) for s, r in rates.items()}}
    if name == 'demo':
      out['report'] = {k: float(v) for k, v in re.findall(
          r'^(flat network top-1|vanilla top-1|Super-Sub top-1 \(routed by the generalist\)|generalist superclass top-1)\s.*?'
          r'([01]\.\d+)\s*$', text, re.M)}
    return out
  if name == 'scaling_n20':
    return {'row': re.findall(r'^\| resnet\S* \| \d+ \|.*$', text, re.M)[-1:]}
  return {}


def _table(summary: dict) -> str:
  lines = ['| item | status | wall s | numbers |', '|---|---|---|---|']
  for name, item in summary['items'].items():
    lines.append(f"| {name} | {item['status']} | {item['wall_s']:.1f} | {json.dumps(item.get('numbers', {}))} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  start = time.perf_counter()
  out_dir, work = os.path.abspath(_OUT.value), os.path.abspath(_WORK.value)
  os.makedirs(out_dir, exist_ok=True)
  os.makedirs(work, exist_ok=True)
  extra = []
  if _EXTRA.value:
    with open(_EXTRA.value) as f:
      extra = [line.strip() for line in f if line.strip() and not line.lstrip().startswith('#')]
  items = _items(_SMOKE.value, work, extra)
  names = _ITEMS.value or list(ITEMS)
  unknown = [n for n in names if n not in items]
  if unknown:
    raise app.UsageError(f'--items: unknown {unknown}; choose from {list(ITEMS)}.')
  env = dict(os.environ, PY=sys.executable, WORK=work, OUT=out_dir, PYTHONUNBUFFERED='1')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = os.pathsep.join(p for p in (root, env.get('PYTHONPATH', '')) if p)
  summary = {'budget_s': _BUDGET.value, 'cpu_smoke': _SMOKE.value, 'items': {}}
  log_path = os.path.join(out_dir, 'items.log')
  with open(log_path, 'w') as log:
    for name in names:
      item = items[name]
      if name == 'extra' and not item['commands']:
        continue
      outputs, walls, status, item_start = [], [], 'ok', time.perf_counter()
      for command in item['commands']:
        left = _BUDGET.value - (time.perf_counter() - start)
        if left < MIN_START_S:
          status = 'skipped: deadline'
          break
        timeout = min(item['timeout'] or _EXTRA_TIMEOUT.value, left)
        shown = command if isinstance(command, str) else shlex.join(command)
        print(f'[{name}] {shown} (timeout {timeout:.0f} s)', flush=True)
        rc, output, seconds = _run(command, timeout, env)
        outputs.append(output)
        walls.append(round(seconds, 1))
        log.write(f'===== [{name}] {shown}\n----- exit {rc} after {seconds:.1f} s\n{output[-LOG_TAIL:]}\n')
        log.flush()
        if rc is None:
          status = f'timeout after {seconds:.0f} s'
        elif rc and name != 'env':
          status = f'failed (exit {rc})'
        if name != 'extra' and status != 'ok':
          break  # an item's later commands need its earlier ones
      # commands_s: each command's wall (the demo's: train.py, whose stages log their images/s, then evaluate.py).
      record = {'status': status, 'wall_s': time.perf_counter() - item_start, 'commands_s': walls,
                'numbers': _parse(name, outputs)}
      summary['items'][name] = record
      print(f'[{name}] {status} in {record["wall_s"]:.1f} s: {json.dumps(record["numbers"])}', flush=True)
      summary['wall_s'] = time.perf_counter() - start
      with open(os.path.join(out_dir, 'summary.json'), 'w') as f:  # rewritten after each item: a cut run keeps it
        json.dump(summary, f, indent=1)
      with open(os.path.join(out_dir, 'summary.md'), 'w') as f:
        f.write(_table(summary) + '\n')
  print(_table(summary))


if __name__ == '__main__':
  app.run(main)
