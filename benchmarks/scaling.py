r"""How Super-Sub's costs grow with the number of superclasses N and with the model.

  python benchmarks/scaling.py --models=resnet18 --out=docs/scaling_resnet18       # 14 min on the 2-core CPU
  python benchmarks/scaling.py --models=resnet50 --num_superclasses=2,20 --out=docs/scaling_resnet50  # 16 min
  python benchmarks/scaling.py --models=resnet50 --num_superclasses=2,20 --image_size=224 --stem=imagenet \
      --batch_sizes=1,256 --train_batch_size=256 --half_precision --repeats=10 --chunk_sizes=64,16 \
      --out=docs/scaling_gpu       # H200: N = 2 done, N = 20 stopped by the end of the 15-minute lease

For each model and each N, --subclasses subclasses are split as evenly as possible over N superclasses (so the total
task stays the same and only the hierarchy changes), and two existing benchmarks run in their own processes:
  * benchmarks/train_step.py on one device: the generalist's step (an N-way head) and the specialists' delta step
    (a head as wide as the largest superclass), each with its compile time and its mean over whole mask-update
    periods (random data on device: step time does not depend on the values);
  * benchmarks/inference_scale.py: two-stage inference against one network over all subclasses, on real held-out
    images (random weights, exported specialists at --density/--bits): the first call (compilation plus one run),
    images/s at each of --batch_sizes, the specialists a batch reaches, and the storage (alpha, alpha*N+1 against
    the naive N+1).
Prints a table and writes <out>.json and <out>.md after each row (a run stopped early keeps what it measured) and
<out>.png at the end (inference throughput and storage against N).
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags

import results  # benchmarks/results.py

_MODELS = flags.DEFINE_list('models', ['resnet18', 'resnet50'], 'supersub_jax.models names.')
_NS = flags.DEFINE_list('num_superclasses', ['2', '5', '10', '20'], 'Values of N.')
_SUBCLASSES = flags.DEFINE_integer('subclasses', 100, 'Subclasses in all, split over the N superclasses.')
_IMAGE = flags.DEFINE_integer('image_size', 32, 'Image side.')
_STEM = flags.DEFINE_string('stem', 'small', "'small' or 'imagenet'.")
_BATCHES = flags.DEFINE_list('batch_sizes', ['1', '32'], 'Inference batch sizes.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Distinct inference batches per batch size.')
_CHUNKS = flags.DEFINE_string('chunk_sizes', '32,8', 'Inference chunk-size plan.')
_TRAIN_BATCH = flags.DEFINE_integer('train_batch_size', 16, 'Training batch.')
_TRAIN_STEPS = flags.DEFINE_integer('train_steps', 10, 'Timed training steps (whole mask-update periods of 10).')
_DENSITY = flags.DEFINE_float('density', 0.1, 'Fraction of each kernel kept in a delta.')
_BITS = flags.DEFINE_integer('bits', 8, 'Bits of the delta codes.')
_HALF = flags.DEFINE_bool('half_precision', False, 'bf16 compute.')
_DATA_DIR = flags.DEFINE_string('data_dir', './data', 'Where the synthetic dataset is (built if missing).')
_OUT = flags.DEFINE_string('out', 'docs/scaling', 'Output path prefix (.json, .md, .png).')

_HERE = os.path.dirname(os.path.abspath(__file__))


def split_evenly(total: int, n: int) -> list[int]:
  """``total`` subclasses over ``n`` superclasses, sizes differing by at most one, largest first."""
  if not 1 <= n <= total:
    raise ValueError(f'cannot split {total} subclasses over {n} superclasses: need 1 <= N <= {total}.')
  return [total // n + (i < total % n) for i in range(n)]


def _last_json(script: str, args: list[str]):
  """Runs ``benchmarks/<script>`` with ``args`` and returns the JSON its last stdout line holds."""
  out = subprocess.run([sys.executable, os.path.join(_HERE, script)] + args, capture_output=True, text=True)
  lines = out.stdout.strip().splitlines()
  if out.returncode or not lines:
    raise RuntimeError(f'{script} {" ".join(args)} failed (exit {out.returncode}):\n{out.stdout[-2000:]}\n'
                       f'{out.stderr[-4000:]}')
  return json.loads(lines[-1])


def measure(model: str, n: int) -> dict:
  sizes = split_evenly(_SUBCLASSES.value, n)
  common = [f'--model={model}', f'--image_size={_IMAGE.value}', f'--stem={_STEM.value}',
            f'--half_precision={_HALF.value}']
  train = {}
  for kind, classes in (('plain', n), ('delta', max(sizes))):
    (row,) = _last_json('train_step.py', common + [f'--kinds={kind}', '--devices=1', f'--num_classes={classes}',
                                                   f'--batch_size={_TRAIN_BATCH.value}',
                                                   f'--steps={_TRAIN_STEPS.value}'])
    train[kind] = {k: row[k] for k in ('compile_s', 'step_s', 'update_step_s', 'images_per_s')}
    # One line per measurement: a run stopped inside a row (a lease ending) still says what it had measured.
    print(f'{model} N={n} {kind} step: {1e3 * row["step_s"]:,.1f} ms (compile {row["compile_s"]:.1f} s)', flush=True)
  infer = _last_json('inference_scale.py', common + [f'--sizes={",".join(map(str, sizes))}',
                                                      f'--batch_sizes={",".join(_BATCHES.value)}',
                                                      f'--repeats={_REPEATS.value}',
                                                      f'--chunk_sizes={_CHUNKS.value}',
                                                      f'--density={_DENSITY.value}', f'--bits={_BITS.value}',
                                                      f'--data_dir={_DATA_DIR.value}'])
  return {'model': model, 'num_superclasses': n, 'sizes': sizes, 'device': infer['device'],
          'generalist_step': train['plain'], 'delta_step': train['delta'], 'storage': infer['storage'],
          'inference': infer['rows']}


def table(rows: list[dict]) -> str:
  batches = [r['batch'] for r in rows[0]['inference']]
  head = ['model', 'N', 'generalist step ms (compile s)', 'delta step ms (compile s)']
  for b in batches:
    head += [f'batch {b}: single / Super-Sub img/s (ratio)', f'batch {b}: specialists per batch']
  head += ['Super-Sub first call s (batch ' + ', '.join(map(str, batches)) + ')', 'alpha', 'storage (networks)',
           'naive N+1']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    g, d, s = r['generalist_step'], r['delta_step'], r['storage']
    cells = [r['model'], str(r['num_superclasses']), f"{1e3 * g['step_s']:,.0f} ({g['compile_s']:.1f})",
             f"{1e3 * d['step_s']:,.0f} ({d['compile_s']:.1f})"]
    for i in r['inference']:
      cells += [f"{i['single_ips']:,.1f} / {i['supersub_ips']:,.1f} ({i['ratio']:.3f})",
                f"{i['specialists_per_batch']:.1f}"]
    cells += [', '.join(f"{i['supersub_first_call_s']:.1f}" for i in r['inference']), f"{s['alpha']:.4f}",
              f"{s['factor']:.3f}", str(s['naive_factor'])]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def plot(rows: list[dict], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax_speed, ax_store) = plt.subplots(1, 2, figsize=(10, 4))
  for model in dict.fromkeys(r['model'] for r in rows):
    mine = sorted((r for r in rows if r['model'] == model), key=lambda r: r['num_superclasses'])
    ns = [r['num_superclasses'] for r in mine]
    for j, b in enumerate(i['batch'] for i in mine[0]['inference']):
      ax_speed.plot(ns, [r['inference'][j]['ratio'] for r in mine], marker='o', label=f'{model}, batch {b}')
    ax_store.plot(ns, [r['storage']['factor'] for r in mine], marker='o', label=f'{model}: alpha*N+1')
  ns = sorted({r['num_superclasses'] for r in rows})
  ax_store.plot(ns, [n + 1 for n in ns], ls='--', color='gray', label='naive N+1')
  ax_speed.set_xlabel('superclasses N')
  ax_speed.set_ylabel('Super-Sub / single network throughput')
  ax_speed.set_title('Two-stage inference')
  ax_store.set_xlabel('superclasses N')
  ax_store.set_ylabel('storage (networks)')
  ax_store.set_title('Storage')
  for ax in (ax_speed, ax_store):
    ax.set_xticks(ns)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=130)
  plt.close(fig)


def main(argv):
  del argv
  rows = []
  for model in _MODELS.value:
    for n in (int(x) for x in _NS.value):
      rows.append(measure(model, n))
      print(f'{model} N={n}: done ({rows[-1]["device"]})', flush=True)
      results.write(_OUT.value, rows, table(rows))
  results.write(_OUT.value, rows, table(rows), plot)
  print(table(rows))


if __name__ == '__main__':
  app.run(main)
