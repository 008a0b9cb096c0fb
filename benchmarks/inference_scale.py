"""Two-stage inference at model scale without a trained workdir: ResNet-50 at 224px with ImageNet's superclass sizes.

  python -m benchmarks.inference_scale --model=resnet50 --image_size=224 --batch_sizes=1,256   # a GPU
  python -m benchmarks.inference_scale --model=resnet_tiny --image_size=32 --batch_sizes=1,16   # a CPU smoke run

Costs do not depend on the weights' values, so the networks are random: a generalist of N outputs, a single network
of sum(sizes) outputs, and N specialists exported from random deltas at the demo's settings (--density of the
kernels kept, --bits). The images are real held-out images (the synthetic test split, resized to --image_size), and
the generalist's head is centred on them so that a batch spreads over the superclasses as a trained generalist's
does (the script prints how many specialists a batch reaches). Both models are timed as report.json times them
(``measure.time_calls``: the mean over --repeats distinct batches, taking turns, after a compiling call); the
first call at each batch size is timed on its own (compilation plus one run: what a fresh process waits for).
Storage is that of the exported specialists (``exported.storage_report``): random masks at --density cost in
positions what trained ones do (the export codes both near their entropy), and values cost --bits each.
"""

import json
import re

from absl import app
from absl import flags

_MODEL = flags.DEFINE_string('model', 'resnet50', 'supersub_jax.models name.')
_IMAGE = flags.DEFINE_integer('image_size', 224, 'Image side.')
_STEM = flags.DEFINE_string('stem', 'imagenet', "'imagenet' or 'small'.")
_SIZES = flags.DEFINE_list('sizes', ['116', '52', '27', '13', '10', '8', '7', '7', '7', '6'],
                           'Subclasses per superclass (default: mixed_10 of ImageNet).')
_BATCHES = flags.DEFINE_list('batch_sizes', ['1', '256'], 'Batch sizes.')
_REPEATS = flags.DEFINE_integer('repeats', 10, 'Distinct batches per batch size.')
_CHUNKS = flags.DEFINE_multi_string('chunk_sizes', ['64,16'], 'Chunk-size plans (repeatable).')
_DENSITY = flags.DEFINE_float('density', 0.1, 'Fraction of each kernel kept in a delta.')
_BITS = flags.DEFINE_integer('bits', 8, 'Bits of the delta codes.')
_HALF = flags.DEFINE_bool('half_precision', False, 'bf16 compute.')
_DATA_DIR = flags.DEFINE_string('data_dir', './data', 'Where the synthetic dataset is (built if missing).')
_ROUTING = flags.DEFINE_list('routing', ['loop'], "Paths: 'loop' (inference.route.route, --chunk_sizes, per-group "
                             "materialization), 'padded' (inference.route.route_padded, --slot_size, per-layer), "
                             "'offline' (benchmarks.offline.predict_split over all of a batch size's batches, "
                             "per-layer).")
_SLOT = flags.DEFINE_integer('slot_size', 32, "routing 'padded': images per slot.")
_MEMORY_ONLY = flags.DEFINE_bool('memory_only', False, 'Only the parameters resident on device with each '
                                  'materialization mode (no images, no timing: minutes on a CPU for ResNet-50).')
_SETTINGS = flags.DEFINE_enum('settings', 'default', ['default', 'frontier'],
                              "Delta settings: 'default' (config.specialists': --density of the kernels, --bits) or "
                              "'frontier' (delta.FRONTIER: density 0.05 int4 kernels, BatchNorm affine deltas whole; "
                              "--density and --bits are then ignored).")
_DISTINCT = flags.DEFINE_integer('distinct_specialists', 0, 'Export this many random specialists and repeat them '
                                 'to N (0: all N distinct). Costs do not depend on the values; export is host work '
                                 'that grows with N x the model (minutes for 20 ResNet-50s).')


def measure_scale(*, model: str, image_size: int, stem: str, sizes: list[int], batch_sizes: list[int], repeats: int,
                  chunk_sizes: list[str], density: float, bits: int, half_precision: bool, data_dir: str,
                  routing: list[str] = ('loop',), slot_size: int = 32, distinct_specialists: int = 0,
                  memory_only: bool = False, settings: str = 'default') -> dict:
  """The measurement of the module docstring; prints a table row per plan and batch size, returns the rows. With
  `memory_only`, only the parameters resident on device per materialization mode (no images, no timing)."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from supersub_jax import bank as bank_lib, config as config_lib, delta as delta_lib, measure  # pylint: disable=g-import-not-at-top
  from supersub_jax import cut as cut_lib, exported as exported_lib, hierarchy as hierarchy_lib, inference, models, setup_of  # pylint: disable=g-import-not-at-top
  from supersub_jax import decide  # pylint: disable=g-import-not-at-top
  from benchmarks import offline  # pylint: disable=g-import-not-at-top

  sizes = tuple(int(s) for s in sizes)
  hierarchy = hierarchy_lib.synthetic(sizes)
  n = len(sizes)
  dtype = jnp.bfloat16 if half_precision else jnp.float32
  make = functools.partial(models.create_model, model, stem=stem, dtype=dtype)
  shape = (image_size, image_size, 3)
  gm, sm, vm = make(n), make(hierarchy.max_subclasses), make(hierarchy.num_subclasses)
  gen = jax.device_get(models.init_variables(gm, jax.random.key(0), shape))
  single = jax.device_put(jax.device_get(models.init_variables(vm, jax.random.key(1), shape)))

  rng = np.random.default_rng(0)
  batches = {}
  if memory_only:  # parameters do not depend on the images: a random head of the generalist's feature width
    width = gen['params']['head']['kernel'].shape[0]
    routing = ()
  else:
    data_config = config_lib.default_config()
    data_config.data_dir = data_dir
    resize = jax.jit(lambda x: jax.image.resize(x, (x.shape[0],) + shape, 'bilinear'))
    for b in sorted({int(x) for x in batch_sizes}):
      held = measure.held_out_batches(data_config, setup_of.make_hierarchy(data_config), b, repeats)
      batches[b] = [resize(jnp.asarray(x)) for x in held]
    # Centre the random generalist's head on real images so that its argmax spreads over the N superclasses.
    calibration = batches[max(batches)][0]
    _, features = jax.jit(functools.partial(gm.apply, train=False, return_features=True))(gen, calibration)
    features = np.asarray(features, np.float32)
    width = features.shape[1]
    kernel = rng.normal(size=(width, n)).astype(np.float32) * np.float32(3.0 / (features.std() + 1e-6))
    gen['params']['head'] = {'kernel': kernel, 'bias': -features.mean(0) @ kernel}

  base = cut_lib.split_head(gen['params'])[0]
  if settings == 'frontier':
    density, bits = delta_lib.FRONTIER['density'], delta_lib.FRONTIER['bits']
    cfg = delta_lib.DeltaConfig(bits=bits, pattern=delta_lib.KERNELS_AND_NORM)
    dense = re.compile(delta_lib.FRONTIER['dense_leaves'])  # BatchNorm affine deltas: whole, never pruned
  else:
    cfg = delta_lib.DeltaConfig(bits=bits or None)
    dense = None
  exported = []
  for k, n_k in enumerate(sizes):
    if distinct_specialists and k >= distinct_specialists:  # a repeat of specialist k mod D, with its own head
      ex = dict(exported[k % distinct_specialists])
      ex['head'] = {'kernel': rng.normal(size=(width, n_k)).astype(np.float32),
                    'bias': np.zeros(n_k, np.float32)}
      ex['spec'] = dict(ex['spec'], num_subclasses=n_k)
      exported.append(ex)
      continue
    delta = jax.tree.map(lambda z: rng.normal(size=z.shape).astype(np.float32) * 0.01,
                         delta_lib.init_delta(base, cfg.pattern, cfg.exclude))
    masks = jax.tree_util.tree_map_with_path(
        lambda path, d: np.ones(d.shape, bool) if dense and dense.search(delta_lib.path_str(path))
        else rng.random(d.shape) < density, delta)
    head = {'kernel': rng.normal(size=(width, n_k)).astype(np.float32), 'bias': np.zeros(n_k, np.float32)}
    exported.append(exported_lib.export(delta, masks, head, gen['batch_stats'], cfg, n_k, cut=cut_lib.Cut()))
  state = bank_lib.build_supersub(gen, exported, hierarchy)
  per_specialist = [sum(exported_lib.exported_nbytes(e).values()) for e in exported]
  stored = sum(per_specialist)
  storage = exported_lib.storage_report(
      delta_lib.tree_nbytes(gen['params']) + delta_lib.tree_nbytes(gen['batch_stats']), per_specialist)
  device = jax.devices()[0]
  print(f'device: {device.platform} {device.device_kind}; {model} at {image_size}px '
        f'{"bf16" if half_precision else "fp32"}; N={n} superclasses of {sizes}; {settings} delta settings '
        f'(density {density}, int{bits}, {cfg.pattern}); bank {bank_lib.nbytes(state.bank):,} B '
        f'on device, {stored:,} B exported', flush=True)
  single_apply = jax.jit(lambda v, x: vm.apply(v, x, train=False))
  rows = []
  if routing:
    print('| path | batch | single img/s | Super-Sub img/s | ratio | single ms | Super-Sub ms | specialists per '
          'batch | single memory | Super-Sub memory |\n|---|---|---|---|---|---|---|---|---|---|', flush=True)
  paths = []
  for name in routing:
    if name == 'loop':
      paths += [(f'loop {plan}', dict(routing='loop', materialize='group',
                                      chunk_sizes=tuple(int(c) for c in plan.split(',')))) for plan in chunk_sizes]
    elif name == 'padded':
      paths.append((f'padded {slot_size}', dict(routing='padded', materialize='layer', slot_size=slot_size)))
    elif name == 'offline':
      paths.append(('offline', None))
    else:
      raise ValueError(f'--routing: unknown {name!r}; use loop, padded or offline.')
  for label, kw in paths:
    if kw is not None:
      predict = jax.jit(functools.partial(inference.predict, rule=decide.Rule('hard'), generalist_model=gm,
                                          specialist_model=sm, **kw))
    for b, xs in batches.items():
      if kw is None:  # the whole set of batches is one call: route them all, then each specialist in full batches
        run_all = lambda i, xs=xs, b=b: offline.predict_split(state, xs, generalist_model=gm, specialist_model=sm,
                                                               batch_sizes=(b, max(1, b // 8)))['label']
        timing = measure.time_calls({'single': lambda i, xs=xs: [single_apply(single, x) for x in xs],
                                     'supersub': run_all}, 2)
        seconds = {name: t.mean / len(xs) for name, t in timing.items()}
        reached = float(np.mean([len(np.unique(np.asarray(
            jax.jit(functools.partial(gm.apply, train=False))(gen, x)).argmax(-1))) for x in xs]))
        mem_single = mem_supersub = 0
      else:
        timing = measure.time_calls({'single': lambda i: single_apply(single, xs[i]),
                                     'supersub': lambda i: predict(state, xs[i])}, len(xs))
        seconds = {name: t.mean for name, t in timing.items()}
        reached = float(np.mean([len(np.unique(np.asarray(predict(state, x)['superclass']))) for x in xs]))
        spec = jax.ShapeDtypeStruct(xs[0].shape, xs[0].dtype)
        mem_single = measure.compiled_bytes(single_apply, single, spec).get('total', 0)
        mem_supersub = measure.compiled_bytes(predict, state, spec).get('total', 0)
      # The first call of each model at this shape (Timing.first_s): compilation plus one run, what a fresh process
      # waits for.
      first = {name: t.first_s for name, t in timing.items()}
      row = {'routing': label, 'chunk_sizes': list((kw or {}).get('chunk_sizes', ())), 'batch': b,
             'single_ms': 1e3 * seconds['single'],
             'supersub_ms': 1e3 * seconds['supersub'], 'single_ips': b / seconds['single'],
             'supersub_ips': b / seconds['supersub'], 'ratio': seconds['single'] / seconds['supersub'],
             'specialists_per_batch': reached, 'single_bytes': mem_single, 'supersub_bytes': mem_supersub,
             'single_first_call_s': first['single'], 'supersub_first_call_s': first['supersub']}
      rows.append(row)
      print(f"| {label} | {b} | {row['single_ips']:,.1f} | {row['supersub_ips']:,.1f} | {row['ratio']:.3f} | "
            f"{row['single_ms']:.2f} | {row['supersub_ms']:.2f} | {reached:.1f} | {mem_single:,} | {mem_supersub:,} |",
            flush=True)
  one_network = delta_lib.tree_nbytes(single)
  whole = int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(
      lambda: inference.specialist_variables(state.bank, state.base, 0, hierarchy.max_subclasses)))))
  layer = inference.largest_dense_leaf_bytes(state.bank, state.base)
  resident = {'single_bytes': one_network, 'generalist_bytes': delta_lib.tree_nbytes(state.generalist),
              'bank_bytes': bank_lib.nbytes(state.bank), 'whole_specialist_bytes': whole,
              'largest_layer_bytes': layer}
  resident['per_group_ratio'] = (resident['generalist_bytes'] + resident['bank_bytes'] + whole) / one_network
  resident['per_layer_ratio'] = (resident['generalist_bytes'] + resident['bank_bytes'] + layer) / one_network
  print(f"parameters on device / one network: per-group materialization {resident['per_group_ratio']:.3f}x, "
        f"per-layer {resident['per_layer_ratio']:.3f}x (generalist {resident['generalist_bytes']:,} B + bank "
        f"{resident['bank_bytes']:,} B + a whole specialist {whole:,} B or its largest layer {layer:,} B; one network "
        f"{one_network:,} B)", flush=True)
  print(f"storage: generalist {storage['base_bytes']:,} B + {n} specialists {stored:,} B = {storage['factor']:.3f} "
        f"networks (alpha {storage['alpha']:.4f}; naive {storage['naive_factor']})", flush=True)
  print(f"| materialization | resident parameters (B) | / one network |\n|---|---:|---:|\n"
        f"| one network (the single network of {hierarchy.num_subclasses} outputs) | {one_network:,} | 1.000 |\n"
        f"| whole specialist per group (`materialize='group'`) | "
        f"{resident['generalist_bytes'] + resident['bank_bytes'] + whole:,} | {resident['per_group_ratio']:.3f} |\n"
        f"| layer by layer (`materialize='layer'`) | {resident['generalist_bytes'] + resident['bank_bytes'] + layer:,} "
        f"| {resident['per_layer_ratio']:.3f} |", flush=True)
  return ({'device': str(device.device_kind), 'model': model, 'sizes': list(sizes), 'settings': settings,
                    'storage': {k: v for k, v in storage.items() if k != 'specialists_bytes'}, 'rows': rows,
                    'params_resident': resident})


def main(argv):
  del argv
  print(json.dumps(measure_scale(
      model=_MODEL.value, image_size=_IMAGE.value, stem=_STEM.value, sizes=[int(x) for x in _SIZES.value],
      batch_sizes=[int(x) for x in _BATCHES.value], repeats=_REPEATS.value, chunk_sizes=_CHUNKS.value,
      density=_DENSITY.value, bits=_BITS.value, half_precision=_HALF.value, data_dir=_DATA_DIR.value,
      routing=_ROUTING.value, slot_size=_SLOT.value, distinct_specialists=_DISTINCT.value,
      memory_only=_MEMORY_ONLY.value, settings=_SETTINGS.value)))


if __name__ == '__main__':
  app.run(main)
