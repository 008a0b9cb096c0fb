"""Two-stage inference against the single network, on real held-out batches routed as the generalist routes them.

  python -m benchmarks.inference --workdir=runs/demo
  python -m benchmarks.inference --workdir=runs/demo --chunk_sizes=32 --chunk_sizes=32,8 --chunk_sizes=64,16 \
      --batch_sizes=1,256 --repeats=20

For each chunk-size plan (``inference.route``) and batch size: the mean seconds per call of the single (vanilla)
network and of Super-Sub top-1 prediction over ``--repeats`` distinct held-out batches drawn in random order
(``measure.measure_inference``, the same measurement as report.json), taking turns in this process; images/s,
the ratio, how many specialists a batch reaches, XLA's compiled memory of one call, and the parameter-resident
bytes. Uses the config stored in the workdir. Prints a markdown table and the rows as JSON.
"""

import json

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir trained by train.py (all three stages).')
_CHUNKS = flags.DEFINE_multi_string('chunk_sizes', None, 'Chunk-size plans to time, e.g. 32,8 (repeatable); '
                                    'default: the config\'s evaluate.chunk_sizes.')
_BATCHES = flags.DEFINE_list('batch_sizes', None, 'Batch sizes (default: evaluate.benchmark_batch_sizes).')
_REPEATS = flags.DEFINE_integer('repeats', None, 'Distinct batches timed per batch size (default: '
                                'evaluate.benchmark_batches).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from supersub_jax import checkpoint as ckpt, config as config_lib, inference, measure, runtime  # pylint: disable=g-import-not-at-top
  from supersub_jax import setup_of, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.read(_WORKDIR.value)
  runtime.initialize_runtime(config)
  if _BATCHES.value:
    config.evaluate.benchmark_batch_sizes = tuple(int(b) for b in _BATCHES.value)
  if _REPEATS.value:
    config.evaluate.benchmark_batches = _REPEATS.value
  plans = [tuple(int(c) for c in p.split(',')) for p in _CHUNKS.value] if _CHUNKS.value else [
      tuple(int(c) for c in config.evaluate.chunk_sizes)]
  trained = workdir_lib.load_trained(config, ckpt.abs_path(_WORKDIR.value), setup_of.build(config))
  device = jax.devices()[0]
  print(f'device: {device.platform} {device.device_kind}; model {config.model} at {config.image_size}px; '
        f'{trained.hierarchy.num_superclasses} superclasses', flush=True)
  rows = []
  print('| chunk sizes | batch | single img/s | Super-Sub img/s | ratio | specialists per batch | single memory | '
        'Super-Sub memory |\n|---|---|---|---|---|---|---|---|', flush=True)
  for plan in plans:
    result = measure.measure_inference(config, trained.hierarchy, trained.vanilla, trained.state,
                                       generalist_model=trained.generalist.model,
                                       specialist_model=trained.specialist_model,
                                       paths={**inference.path_settings(config.evaluate), 'chunk_sizes': plan})
    for b, t in sorted(result['throughput']['by_batch'].items(), key=lambda kv: int(kv[0])):
      m = result['memory']['by_batch'][b]
      rows.append({'chunk_sizes': list(plan), 'batch': int(b), **t, 'single_bytes': m['single_bytes'],
                   'supersub_bytes': m['supersub_bytes']})
      print(f"| {','.join(map(str, plan))} | {b} | {t['single_ips']:,.1f} | {t['supersub_ips']:,.1f} | "
            f"{t['ratio']:.3f} | {t['specialists_per_batch']:.1f} | {m['single_bytes']:,} | "
            f"{m['supersub_bytes']:,} |", flush=True)
  resident = result['memory']['params_resident']
  print(f"\nparameters on device: single {resident['single_bytes']:,} B; Super-Sub {resident['supersub_bytes']:,} B "
        f"= generalist {resident['generalist_bytes']:,} + bank {resident['bank_bytes']:,} + one specialist "
        f"{resident['specialist_bytes']:,}")
  print(json.dumps({'device': str(device.device_kind), 'rows': rows, 'params_resident': resident}))


if __name__ == '__main__':
  app.run(main)
