"""The configuration: defaults of every field (documented once, here), and the copy a workdir keeps.

Configs in ``configs/`` start from ``default_config()`` and override what differs. A stage's own sub-config
(``config.vanilla``, ``config.superclass``, ``config.specialists``) holds its optimisation knobs; fields at the top
level are shared by all stages.

``train.py`` writes the config it ran with to ``<workdir>/config.json`` (``write``); ``evaluate.py`` and
``python -m tools.convert`` read it back (``read``), so a trained workdir needs no ``--config``.

Which fields a checkpoint depends on. Every checkpoint stores the config it was trained with; resuming it, or
loading it in evaluate.py and convert, compares the two (``meaning_differences``) and refuses a change that would
mix settings. Fields fall in three classes:

* ``HARMLESS``: how a run is carried out, not what it computes (logging and saving frequency, evaluation knobs,
  where the data lives, workers, multi-host set-up, the compilation cache, which stages or specialists to run, the
  pretrained file's path, which is read once on a fresh start and recorded there) -- free to change at any time;
* another stage's own section (``config.<stage>``): irrelevant to this stage's checkpoint; what a stage starts from
  is checked by fingerprint instead (the generalist a specialist was trained on, the vanilla network a generalist
  started from);
* everything else, including every field added later: changes the meaning (model, dataset, hierarchy, image size,
  augmentation, batch, seed, precision, and the stage's own section: step budget, optimizer, delta settings).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import ml_collections

from supersub_jax import files
from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax.choices import STAGE_SECTIONS

CONFIG_FILE = 'config.json'


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
  """Optimisation knobs of one stage (names as in flax's examples)."""
  cfg = ml_collections.ConfigDict(dict(
      num_train_steps=1000,     # optimizer steps of this stage (per specialist for the specialists stage)
      learning_rate=0.1,        # peak learning rate, reached after warm-up
      warmup_steps=100,
      schedule='cosine',        # 'cosine' | 'step' | 'constant'
      optimizer='sgd',          # 'sgd' (momentum) | 'adamw'
      momentum=0.9,
      nesterov=True,
      weight_decay=5e-4,        # kernels only; BatchNorm and biases are not decayed
      label_smoothing=0.0,
  ))
  cfg.update(overrides)
  return cfg


def default_config() -> ml_collections.ConfigDict:
  """Every field with its default; configs/*.py override what differs."""
  config = ml_collections.ConfigDict()
  # Data.
  config.dataset = 'synthetic'          # 'synthetic' | 'cifar100' | 'imagenet2012'
  config.hierarchy = 'synthetic'        # a supersub_jax.hierarchy.get spec: 'mixed_10', 'cifar100', 'synthetic', ...
  config.data_dir = './data'            # TFDS data_dir (made absolute); the synthetic dataset is built here
  config.manual_dir = ''                # ImageNet: folder with the ILSVRC2012 tar files
  config.max_side = 0                   # ImageNet: 0 reads the JPEGs as distributed; N > 0 the pre-resized store
  config.jpeg_quality = 90              # (longer side capped at N, re-encoded at jpeg_quality) that `python -m
                                        # tools.prepare --max_side=N --jpeg_quality=Q` writes
  config.eval_split = 'test'            # held-out split of every stage's evaluation and of evaluate.py
                                        # ('validation' for imagenet2012, which has no labelled test split)
  config.synthetic = ml_collections.ConfigDict(dict(
      image_size=32, train_per_class=300, validation_per_class=100, test_per_class=100, seed=0,
      sizes=hierarchy_lib.DEFAULT_SYNTHETIC_SIZES,
      specificity=0,                    # 0: every subclass a texture grating (the same kind of cue in every
                                        # superclass); m >= 1: superclass s's subclass is cue kind s % m of ten, so
                                        # m = 10 gives each superclass features only it uses (data/render.py)
  ))
  config.image_size = 32
  config.augment = 'crop_flip'          # 'crop_flip' | 'random_resized_crop' | 'none'
  config.worker_count = 0               # grain worker processes per host
  config.input = ml_collections.ConfigDict(dict(
      decoder='cpu',                    # 'cpu': the grain workers decode, a JPEG fused with its crop (DCT-scaled by
                                        # libjpeg-turbo, so a crop of a large JPEG is never decoded whole);
                                        # 'dali': NVIDIA DALI decodes, crops and resizes the training batches on the
                                        # GPU (nvJPEG) from the encoded bytes grain hands it (pip install -e
                                        # '.[dali-cuda12]' or '.[dali-cuda13]'); evaluation stays on 'cpu'
      normalize='host',                 # 'host': float32 batches normalised by the input pipeline; 'device': uint8
                                        # batches travel to the device (4x fewer bytes) and the model normalises
                                        # them inside the compiled step (models.ResNet.input_norm)
  ))
  config.batch_size = 128               # global batch, split over all devices of all processes
  config.eval_batch_size = 256
  # Model.
  config.model = 'resnet_small'         # a key of supersub_jax.models.MODELS
  config.stem = 'small'                 # 'small' (3x3 conv, no pool: 32x32) | 'imagenet' (7x7/2 + max-pool)
  config.width = 1.0
  config.half_precision = False         # bf16 compute, float32 params
  config.zero_init_residual = True      # each residual block's last BatchNorm scale starts at 0 (the block starts as
                                        # its shortcut): for deep ResNets; with one block per stage the shortcuts
                                        # are strided projections and the network starts nearly blind: False
                                        # (models.ResNet)
  # Pretrained start: the backbone (every parameter and BatchNorm statistic but the head) of the vanilla network,
  # and of the generalist unless superclass.init_from_vanilla, is loaded from here; the head is new.
  config.init = ml_collections.ConfigDict(dict(
      path='',                          # '' = random initialisation
      format='torchvision',             # 'torchvision': a torchvision ResNet state dict (.pth, .safetensors, .npz);
                                        # 'orbax': a directory written by `python -m tools.convert`
      keep_head=False,                  # the flat stages (vanilla, vanilla_matched) continue the whole network,
                                        # head included (it must have one output per subclass); with the generalist
                                        # also from init (superclass.init_from_vanilla False), the vanilla stage is
                                        # the flat network given Super-Sub's compute, and init the flat router
  ))
  # Runs.
  config.seed = 0
  config.nonfinite = 'stop'             # a step whose loss or updated parameters are not finite: 'stop' the run
                                        # (nothing non-finite is ever saved) or 'skip' the step (keep the old state)
  config.compilation_cache_dir = '~/.cache/supersub_jax/jax'  # XLA's persistent compilation cache ('' = off)
  config.stages = ('vanilla', 'superclass', 'specialists')  # + 'vanilla_matched': the flat network trained for the
                                        # whole pipeline's steps, the compute-matched baseline of report.json;
                                        # + 'head_only': specialists that train a head on the generalist's
                                        # features (branch 'head'), the floor of what the deltas add
  config.parallelism = 'pmap'           # 'pmap' | 'shard_map'
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.profile_steps = 0               # > 0: a jax.profiler trace of that many steps per job, <workdir>/profile/
  config.max_to_keep = 2
  config.distributed = ml_collections.ConfigDict(dict(
      enabled=False, coordinator_address='', num_processes=1, process_id=0, cpu_collectives='',
      local_device_ids=()))
  # Stages.
  config.vanilla = optimizer_config()
  config.superclass = optimizer_config(
      init_from_vanilla=True,           # start from the vanilla network's backbone (else from config.init)
  )
  config.specialists = optimizer_config(
      learning_rate=0.02, warmup_steps=0, weight_decay=0.0,
      superclasses=(),                  # which superclasses get a specialist; () = all
      num_epochs=0.0,                   # > 0: each specialist trains this many passes over its superclass's
                                        # examples instead of num_train_steps (big superclasses get more steps)
      min_steps=20,                     # with num_epochs: at least this many steps per specialist
      steps_multiple=10,                # with num_epochs: steps rounded up to a multiple (fewer compiles)
      # density 0.1 / int8 / per-channel kernels: from the sweep in docs/benchmarks.md, where every density down to
      # 0.1 (int8 or int4) matched dense fine-tuning; int8 is kept as the default since int4 is less proven on
      # real data (int4 at density 0.1 gave alpha 0.054 there, int8 0.066).
      density=0.1,                      # fraction of delta entries kept
      bits=8,                           # 8 | 4 | 2 | 0 (0 = no quantization)
      granularity='per_channel',        # 'per_channel' | 'per_tensor'
      leaves='kernels',                 # 'kernels' | 'kernels_and_norm' | a regex over '/'-joined param paths
      dense_leaves='',                  # regex of delta leaves never pruned (still quantized), e.g. '(scale|bias)$'
                                        # with leaves='kernels_and_norm': BatchNorm affine deltas kept whole
      branch='stem',                    # first layer group with a delta: 'stem' (all) | 'stage<i>' | 'head' (none);
                                        # the layers before it are shared with the generalist (one pass at inference)
      head_from='random',               # 'random': a new head | 'init': config.init's (flat) head, the columns of
                                        # this superclass's subclasses (the converged regime's base already reads
                                        # them; the padding and dustbin columns stay random)
      dustbin=False,                    # one more output, "not my superclass" (Hinton et al. 2015, section 5),
                                        # trained on other superclasses' images; inference brings its logit to even
                                        # odds (exported.dustbin_logit_correction: the router carries the prior).
                                        # It sees (1 - dustbin_fraction) as many of its own images as a specialist
                                        # without one, in the same steps
      dustbin_fraction=0.5,             # with dustbin: share of each device's batch from other superclasses
      dustbin_others='all',             # 'all': other superclasses in their natural shares | 'confused': in
                                        # proportion to the generalist's p(this superclass) on their training images
      sparsity_scope='per_leaf',        # 'per_leaf' | 'global'
      sparsity_schedule='gradual',      # 'gradual' (Zhu & Gupta) | 'one_shot' | 'none'
      prune_begin_fraction=0.1,         # schedule range as fractions of num_train_steps
      prune_end_fraction=0.6,
      mask_update_every=10,
  )
  config.evaluate = ml_collections.ConfigDict(dict(
      batch_size=256,                   # evaluation and benchmark batch (one device)
      top2_threshold=0.8,               # top-2 routing, the rule 'soft:2@<this>': a second specialist when max
                                        # p(superclass) < this
      chunk_sizes=(32, 8),              # specialist chunk sizes over a group of images (inference.route)
      routing='loop',                   # 'loop': each batch's groups one after another (inference.route);
                                        # 'padded': all groups in one vmapped call of fixed shape
                                        # (inference.route.route_padded); 'auto': inference.ROUTING_BY_PLATFORM
      slot_size=32,                     # routing='padded': images per slot
      materialize='auto',               # 'group': a whole dense specialist per group of images; 'layer': each
                                        # layer's dense kernel inside the forward, only while it runs
                                        # (inference.unpack.lazy_specialist_variables: parameters near one network);
                                        # 'auto': inference.MATERIALIZE_BY_PLATFORM ('layer' on GPU/TPU)
      benchmark_batch_sizes=(1, 256),   # timed batch sizes: latency (1) and throughput
      benchmark_batches=10,             # timed calls per model and batch size, on distinct held-out batches
      # Decision rules reported beside the paper's ('hard'), as '<rule>[:k][@<threshold>][/<router>]' (decide.py):
      # rule 'hard' | 'soft' | 'hinton' | 'poe' over the router's top k superclasses, router 'generalist' | 'flat' (the
      # vanilla network's summed subclass probabilities) | 'mean' of the two | 'oracle' (the true superclass, k = 1);
      # a threshold runs routes after the first only where the router's top probability is below it.
      rules=('hard', 'soft:2', 'hinton:2', 'poe:2', 'hard/mean', 'hinton:2/mean'),
      verdict_rule='hard',              # the rule the report's headline gives: the paper's, or one of rules (a
                                        # pipeline whose flat network routes: 'hard/flat')
      map_summary=''))                  # synthetic data: a map of studies/map.py (<out>.json) whose cell of this
                                        # run (specificity, width, steps) and control cell the report quotes
  return config


# ----------------------------------------------------------------------------------------------------------------------
# The workdir's copy


def path(workdir: str) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), CONFIG_FILE)


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def write(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes ``<workdir>/config.json`` atomically (write, then rename)."""
  target = path(workdir)
  os.makedirs(os.path.dirname(target), exist_ok=True)
  files.write_text(target, to_json(config) + '\n')


def read(workdir: str) -> ml_collections.ConfigDict:
  """The config ``train.py`` stored in ``workdir``, over the current defaults (fields added since are filled in).

  Raises FileNotFoundError naming the file and the fix.
  """
  target = path(workdir)
  if not os.path.isdir(os.path.dirname(target)):
    raise FileNotFoundError(f'--workdir={workdir} does not exist: train one first (python train.py '
                            f'--config=configs/<file>.py --workdir={workdir}) or name a trained workdir.')
  if not os.path.exists(target):
    raise FileNotFoundError(f'{target} does not exist: {workdir} was not trained by train.py (or by a version that '
                            'did not store its config); pass --config=<the configs/*.py file it was trained with>.')
  with open(target) as f:
    try:
      stored = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{target} is not valid JSON ({e}); pass --config=<the configs/*.py file it was trained '
                       'with> instead.') from e
  config = default_config()
  config.update(stored)  # recursive; lists from JSON become the tuples the defaults declare
  return config


HARMLESS = ('log_every_steps', 'checkpoint_every_steps', 'profile_steps', 'max_to_keep', 'eval_batch_size', 'eval_split', 'evaluate.',
            'worker_count', 'input.', 'data_dir', 'manual_dir', 'distributed.', 'parallelism', 'stages', 'nonfinite',
            'compilation_cache_dir', 'specialists.superclasses', 'init.path', 'init.format')
# The baseline stages train with another stage's settings: the vanilla recipe for longer, specialists at branch 'head'.
_BASELINE_SECTIONS = {'vanilla_matched': 'vanilla', 'head_only': 'specialists'}


def section(stage: str) -> str:
  """The config section (one of ``STAGE_SECTIONS``) that holds the settings ``stage`` trains with."""
  return _BASELINE_SECTIONS.get(stage, stage)


def meaning_differences(stored: Mapping[str, Any], config: ml_collections.ConfigDict, stage: str) -> list[str]:
  """'field: stored -> current' for every field that changes what a checkpoint of ``stage`` means.

  ``stored`` is the config dict a checkpoint recorded (fields added since then take their defaults).
  """
  old = default_config()
  old.update(dict(stored))
  others = tuple(f'{s}.' for s in STAGE_SECTIONS if s != section(stage))
  return [d for d in differences(old, config)
          if not d.split(':', 1)[0].startswith(HARMLESS + others) and d.split(':', 1)[0] not in HARMLESS]


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f'{prefix}{k}.'))
    return out
  return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def differences(old: ml_collections.ConfigDict, new: ml_collections.ConfigDict) -> list[str]:
  """'field: old -> new' for every leaf field that differs (fields missing on one side shown as <absent>)."""
  a, b = _flatten(old.to_dict()), _flatten(new.to_dict())
  return [f'{k}: {a.get(k, "<absent>")!r} -> {b.get(k, "<absent>")!r}'
          for k in sorted(set(a) | set(b)) if a.get(k, '<absent>') != b.get(k, '<absent>')]
