r"""How Super-Sub's costs grow with the number of superclasses N and with the model.

  python -m benchmarks.scaling --models=resnet18 --out=docs/results/scaling_resnet18       # 14 min on the 2-core CPU
  python -m benchmarks.scaling --models=resnet50 --num_superclasses=2,20 --out=docs/results/scaling_resnet50  # 16 min
  python -m benchmarks.scaling --models=resnet50 --num_superclasses=2,20 --image_size=224 --stem=imagenet \
      --batch_sizes=1,256 --train_batch_size=256 --half_precision --repeats=10 --chunk_sizes=64,16 \
      --out=docs/results/scaling_gpu       # H200: N = 2 done, N = 20 stopped by a 15-minute time limit

For each model and each N, --subclasses subclasses are split as evenly as possible over N superclasses (so the total
task stays the same and only the hierarchy changes), and two existing benchmarks run in their own processes
(``subprocess_run.in_subprocess``):
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

from absl import app
from absl import flags

from benchmarks import subprocess_run
from supersub_jax import files
from supersub_jax import plots


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
_OUT = flags.DEFINE_string('out', 'docs/results/scaling', 'Output path prefix (.json, .md, .png).')
_DISTINCT = flags.DEFINE_integer('distinct_specialists', 0, 'Export this many random specialists and repeat them to '
                                 'N (0: all distinct): inference_scale --distinct_specialists, for a session too '
                                 'short to export 20 ResNet-50s on the host.')

def split_evenly(total: int, n: int) -> list[int]:
  """``total`` subclasses over ``n`` superclasses, sizes differing by at most one, largest first."""
  if not 1 <= n <= total:
    raise ValueError(f'cannot split {total} subclasses over {n} superclasses: need 1 <= N <= {total}.')
  return [total // n + (i < total % n) for i in range(n)]


def measure(model: str, n: int) -> dict:
  sizes = split_evenly(_SUBCLASSES.value, n)
  common = dict(model=model, image_size=_IMAGE.value, stem=_STEM.value, half_precision=_HALF.value)
  train = {}
  for kind, classes in (('plain', n), ('delta', max(sizes))):
    (row,) = subprocess_run.in_subprocess('benchmarks.train_step.measure_steps', dict(
        common, kinds=[kind], num_classes=classes, batch_size=_TRAIN_BATCH.value, steps=_TRAIN_STEPS.value),
        devices=1)
    train[kind] = {k: row[k] for k in ('compile_s', 'step_s', 'update_step_s', 'images_per_s')}
    # One line per measurement: a run stopped inside a row (a time limit ending) still says what it had measured.
    print(f'{model} N={n} {kind} step: {1e3 * row["step_s"]:,.1f} ms (compile {row["compile_s"]:.1f} s)', flush=True)
  infer = subprocess_run.in_subprocess('benchmarks.inference_scale.measure_scale', dict(
      common, sizes=sizes, batch_sizes=[int(b) for b in _BATCHES.value], repeats=_REPEATS.value,
      chunk_sizes=[_CHUNKS.value], density=_DENSITY.value, bits=_BITS.value, data_dir=_DATA_DIR.value,
      distinct_specialists=_DISTINCT.value))
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
  plots.save_figure(fig, path, dpi=130)


def main(argv):
  del argv
  rows = []
  for model in _MODELS.value:
    for n in (int(x) for x in _NS.value):
      rows.append(measure(model, n))
      print(f'{model} N={n}: done ({rows[-1]["device"]})', flush=True)
      files.write_results(_OUT.value, rows, table(rows))
  files.write_results(_OUT.value, rows, table(rows), plot)
  print(table(rows))


if __name__ == '__main__':
  app.run(main)
