r"""Checkpoint conversion: pretrained weights in, trained networks out (the library: `supersub_jax.convert`).

  python -m tools.convert VERB [flags]      (VERB --help shows that verb's flags and an example)

import-torchvision: a torchvision ResNet state dict (.pth, .safetensors or .npz) -> an orbax checkpoint that
  config.init can start from (config.init.format='orbax'), or that other flax code restores.
    python -m tools.convert import-torchvision --arch=resnet50 --input=resnet50-0676ba61.pth \
        --output=$PWD/resnet50_orbax

export: specialist K of a trained workdir as one dense network (the generalist's backbone plus K's delta, its own
  BatchNorm statistics and its n_K-way head). --format=orbax writes a checkpoint like import-torchvision's;
  safetensors and npz use torchvision's names and layouts, so that for the torchvision architectures
  `torchvision.models.resnet50(num_classes=n_K).load_state_dict(...)` takes it.
    python -m tools.convert export --workdir=runs/demo --superclass=0 --format=safetensors
  (writes runs/demo/specialist0.safetensors; --output=PATH writes elsewhere)

network: a trained network stage of a workdir (vanilla, superclass or vanilla_matched) as one dense network, in the
  formats of export; e.g. a flat network for config.init (with init.keep_head to continue it).
    python -m tools.convert network --workdir=runs/demo --stage=vanilla --format=safetensors
  (writes runs/demo/vanilla.safetensors; --output=PATH writes elsewhere)

bundle: everything two-stage inference needs, in one msgpack file: the generalist's variables, every specialist's
  compressed delta, head and BatchNorm statistics, and the hierarchy; no optimizer state, no dense specialist.
  `bundle.load_bundle` reads it back and `bank.build_supersub` takes it.
    python -m tools.convert bundle --workdir=runs/demo
  (writes runs/demo/supersub.msgpack; --output=PATH writes elsewhere)

export, network and bundle write into the workdir unless --output names another path, and read the config stored
in the workdir by train.py; --config=FILE and --config.x=y override it
(with a warning listing what differs from training). Nothing is written unless the whole conversion succeeds, and
one conversion at a time writes an --output (a lock beside it). SIGINT and SIGTERM stop a conversion in one line
(exit status 130 and 143), leaving no partial file.
"""

from __future__ import annotations

if __name__ == '__main__':  # run as a program: before the heavy imports, so that a signal during them stops it too
  from supersub_jax import interrupts  # pylint: disable=g-import-not-at-top
  interrupts.install()

import sys

from absl import flags

from supersub_jax import choices
from supersub_jax import cli


VERBS = {
    'import-torchvision': ('arch', 'input', 'output', 'stem', 'width'),
    'export': ('workdir', 'superclass', 'format', 'output', 'config'),
    'network': ('workdir', 'stage', 'format', 'output', 'config'),
    'bundle': ('workdir', 'output', 'config'),
}


def _verb_help(verb: str) -> str:
  """The module docstring's paragraph on ``verb`` plus its flags."""
  paragraphs = __doc__.split('\n\n')
  text = next(p for p in paragraphs if p.startswith(f'{verb}:'))
  lines = [f'usage: python -m tools.convert {verb} [flags]', '', text, '', 'flags:']
  for name in VERBS[verb]:
    flag = flags.FLAGS[name]
    default = '' if flag.default in (None, '') else f' (default: {flag.default})'
    lines.append(f'  --{name}: {flag.help}{default}')
  lines.append('  --debug: on an error, show the full traceback instead of one line')
  return '\n'.join(lines)


def main() -> None:
  flags.DEFINE_string('workdir', None, 'A workdir trained by train.py.')
  flags.DEFINE_string('output', None, 'Where to write (a file; a new directory for orbax). Default: into --workdir '
                      '(export: specialist<K>.<format>, network: <stage>.<format>, bundle: supersub.msgpack).')
  flags.DEFINE_integer('superclass', None, 'Which specialist (superclass index, as in report.md).')
  flags.DEFINE_enum('format', 'orbax', choices.EXPORT_FORMATS, 'Export file format.')
  flags.DEFINE_enum('stage', None, list(choices.NETWORK_STAGES), 'Which network stage (the network verb).')
  flags.DEFINE_enum('arch', None, sorted(choices.MODELS), 'Architecture of the torchvision state dict '
                    f'(torchvision has {", ".join(choices.TORCHVISION_ARCHS)}).')
  flags.DEFINE_string('input', None, 'A torchvision state dict: .pth (needs torch), .safetensors or .npz.')
  flags.DEFINE_enum('stem', 'imagenet', list(choices.STEMS), 'Stem of the architecture (torchvision: imagenet).')
  flags.DEFINE_float('width', 1.0, 'Width multiplier of the architecture (torchvision: 1.0).')
  cli.define_config_flag(stored_in_workdir=True)
  cli.define_debug_flag()

  def parse(argv):
    verb = next((a for a in argv[1:] if not a.startswith('-')), None)
    if verb in VERBS and any(a in ('--help', '-h', '--helpshort', '-?') for a in argv[1:]):
      print(_verb_help(verb))
      sys.exit(0)
    return flags.FLAGS(argv)  # cli.run reports a flag error in one line

  def run(argv):
    f = flags.FLAGS
    verbs = argv[1:]
    if len(verbs) != 1 or verbs[0] not in VERBS:
      raise ValueError(f'give one verb of {sorted(VERBS)}, got {verbs}; '
                       '`python -m tools.convert VERB --help` shows its flags and an example.')
    verb = verbs[0]
    optional = ('config', 'format', 'stem', 'width') + (('output',) if verb != 'import-torchvision' else ())
    required = [n for n in VERBS[verb] if n not in optional and f[n].value is None]
    if required:
      raise ValueError(f'{verb} needs --{", --".join(required)} (see `python -m tools.convert {verb} '
                       '--help`).')
    for name, example in (('workdir', 'runs/demo'), ('input', 'resnet50.pth'), ('output', 'supersub.msgpack')):
      # An unset --output defaults into the workdir (default_output); an empty one is a mistake (an unset variable).
      if name in VERBS[verb] and (name not in optional or f[name].value is not None):
        cli.required_path(name, f[name].value, example)
    # The conversions (jax, orbax) once the flags are known to be whole: a refusal above answers at once.
    # pylint: disable=g-import-not-at-top
    from supersub_jax import bundle
    from supersub_jax import convert
    from supersub_jax import locks
    from supersub_jax import runtime
    from supersub_jax import setup_of
    # pylint: enable=g-import-not-at-top
    if verb == 'import-torchvision':
      with locks.hold_output(f.output, program='convert import-torchvision'):
        what = convert.import_torchvision(f.arch, f.input, f.output, stem=f.stem, width=f.width)
      print(f'wrote {f.output}: {what}')
      return
    if f.output is not None:
      convert.check_output_outside(f.output, f.workdir)
    config = cli.config_for_workdir(f.config, f.workdir)
    runtime.initialize_runtime(config)
    output = f.output or convert.default_output(verb, f.workdir, fmt=f.format, superclass=f.superclass, stage=f.stage)
    # The workdir is only read (finished checkpoints); the output is what two conversions could both write.
    with locks.hold_output(output, program=f'convert {verb}'):
      if verb == 'export':
        what = convert.export_specialist(config, f.workdir, f.superclass, f.format, output)
        print(f'wrote {output}: {what}')
      elif verb == 'network':
        what = convert.export_network(config, f.workdir, f.stage, f.format, output)
        print(f'wrote {output}: {what}')
      else:
        size = bundle.write_bundle(output, convert.make_bundle(config, f.workdir))
        print(f'wrote {output}: {size:,} bytes (generalist + {setup_of.make_hierarchy(config).num_superclasses} '
              'compressed specialists)')

  cli.run(run, flags_parser=parse)


if __name__ == '__main__':
  main()
