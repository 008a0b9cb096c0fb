"""Every closed set of names a config field may take, in one light module (no jax, nothing but tuples).

The config check (``supersub_jax.config_check``) tests every field against these; the modules that act on a field
import its tuple from here (a stage's optimizer from ``step``, a routing from ``inference`` ...), so a new choice is
added once. The named delta leaf sets are ``delta.LEAVES``'s keys (each maps a name to what it builds, beside the code
that builds it); the model names are here too, for the command-line faces that list them before importing jax
(tests/test_models.py checks that ``models.MODELS`` has exactly them).
"""

# Data (config.dataset, config.augment, config.input).
DATASETS: tuple[str, ...] = ('synthetic', 'cifar100', 'imagenet2012')  # data.sources
AUGMENTATIONS = ('crop_flip', 'random_resized_crop', 'none')  # data.pipeline's training augmentations
LABEL_MODES = ('subclass', 'superclass', 'local')  # data.pipeline: which label a batch carries
DECODERS = ('cpu', 'dali')  # config.input.decoder: who decodes the training JPEGs
NORMALIZE = ('host', 'device')  # config.input.normalize: where the batches are normalised

# Model (config.model, config.stem, config.init).
MODELS = ('resnet18', 'resnet34', 'resnet50', 'resnet_tiny', 'resnet_small')  # models.MODELS' keys, in its order
STEMS = ('imagenet', 'small')  # models.ResNet's stems: 7x7/2 + max-pool, or 3x3 without a pool (32x32 images)
INIT_FORMATS = ('torchvision', 'orbax')  # config.init.format: a torchvision state dict, or a convert.py directory

# Stages (config.stages) and their optimisation (config.<stage>).
STAGES = ('vanilla', 'superclass', 'specialists', 'vanilla_matched', 'head_only')
NETWORK_STAGES = ('vanilla', 'superclass', 'vanilla_matched')  # one network each, trained by train_network
SPECIALIST_STAGES = ('specialists', 'head_only')  # one specialist per superclass each, trained by train_specialists
STAGE_SECTIONS = ('vanilla', 'superclass', 'specialists')  # the config sections that hold a stage's settings
SCHEDULES = ('cosine', 'step', 'constant')  # step.make_schedule's kinds
OPTIMIZERS = ('sgd', 'adamw')  # step.make_optimizer's
NONFINITE = ('stop', 'skip')  # config.nonfinite: what the loop does with a non-finite step (skip_nonfinite)
PARALLELISMS = ('pmap', 'shard_map')  # runtime.Parallel's kinds (config.parallelism)

# The specialists' delta (config.specialists).
SUPPORTED_BITS = (8, 4, 2)  # quant's integer widths (config.specialists.bits; 0 there: no quantization)
GRANULARITIES = ('per_channel', 'per_tensor')  # delta: one quantization scale per output channel or per tensor
SCOPES = ('per_leaf', 'global')  # sparsity: the density kept per leaf or over all leaves together
SCHEDULE_KINDS = ('one_shot', 'gradual', 'none')  # sparsity: how the density falls over training
DUSTBIN_OTHERS = ('all', 'confused')  # config.specialists.dustbin_others: which other superclasses fill the dustbin
HEAD_FROM = ('random', 'init')  # config.specialists.head_from: a specialist's head starts random, or as config.init's
                                # subclass head restricted to its superclass's subclasses

# Inference and evaluation (config.evaluate).
ROUTINGS = ('loop', 'padded')  # inference: specialists over image groups one after another, or vmapped in slots
MATERIALIZE = ('group', 'layer')  # inference: a whole dense specialist per group, or each layer's kernel as it runs
RULES = ('hard', 'soft', 'hinton', 'poe')  # decide.RULES
ROUTERS = ('generalist', 'flat', 'mean', 'oracle')  # decide: whose p(s | x) routes ('oracle': the true superclass)

# Conversion (tools.convert, supersub_jax.convert).
EXPORT_FORMATS = ('orbax', 'safetensors', 'npz')  # a dense network's file formats
TORCHVISION_ARCHS = ('resnet18', 'resnet34', 'resnet50')  # the models torchvision has, layout for layout
