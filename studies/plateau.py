"""Study: does the demo's flat network leave its early plateau? (issue 23)

  python -m studies.plateau --config=configs/synthetic_scratch.py --workdir=/tmp/plateau --variants=baseline,no_zero_init \
    --seeds=0,1,2,3,4 --steps=1200 --stop_after=210 --out=docs/results/plateau

Each (variant, seed, steps) is one run of the vanilla stage alone: ``train.py`` in a child process, with the
variant's ``--config.x=y`` overrides, ``--config.seed=<seed>`` and ``--config.vanilla.num_train_steps=<steps>``
(the cosine schedule depends on the budget, so compare variants at the same ``--steps``). The train loss of every
``--config.log_every_steps``-th step is read back from ``<run>/metrics.jsonl``; a single step's loss on one batch of
128 is noisy, hence the mean over a window (``--window``, steps 100..200 inclusive by default). With
``--stop_after`` a run is stopped once that step is logged (enough for the window, not for the held-out top-1).

Prints and writes (``<out>.json``, ``<out>.md``) one row per run: the mean train loss over the window, the loss at
its last step, the held-out top-1 of a run that reached its end, and the wall time (start of the child process to
its end: compilation, the steps and the final evaluation). A run whose directory already holds a result of the
same command is read back, not rerun (``--rerun`` forces it; ``--read_only`` tabulates what is there). With ``--repeats=2`` each command runs twice (the
second in ``<run>_repeat1``) and a further table says whether the two runs' metrics.jsonl records are identical:
the determinism check.

Variants are named in ``VARIANTS``; ``--extra='name=--config.a=1 --config.b=2'`` adds one for this call.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

from absl import app
from absl import flags

import supersub_jax

FLAGS = flags.FLAGS
flags.DEFINE_string('config', 'configs/synthetic_scratch.py', 'The configs/*.py file the runs start from.')
flags.DEFINE_string('workdir', None, 'One subdirectory per run is made here.')
flags.DEFINE_list('variants', ['baseline'], 'Names of VARIANTS (and of --extra) to run.')
flags.DEFINE_multi_string('extra', [], "More variants for this call: 'name=--config.a=1 --config.b=2'.")
flags.DEFINE_list('seeds', ['0'], 'config.seed of each run.')
flags.DEFINE_list('steps', ['1200'], 'vanilla.num_train_steps of each run (the schedule depends on it).')
flags.DEFINE_integer('stop_after', 0, 'Stop a run once this step is logged (0: run to the end and evaluate).')
flags.DEFINE_list('window', ['100', '200'], 'First and last step of the mean train loss.')
flags.DEFINE_integer('log_every', 10, 'config.log_every_steps of the runs.')
flags.DEFINE_string('out', None, 'Write <out>.json and <out>.md (e.g. docs/results/plateau).')
flags.DEFINE_integer('repeats', 1, 'Runs of each command (2: a determinism check; records compared).')
flags.DEFINE_bool('read_only', False, 'Run nothing: tabulate the runs already in --workdir, skip the others.')
flags.DEFINE_bool('rerun', False, 'Rerun runs whose directory already holds a result of the same command.')
flags.mark_flags_as_required(['workdir'])

LN_38 = math.log(38)

# name -> the --config overrides that make the variant, on top of --config.
VARIANTS: dict[str, tuple[str, ...]] = {
    'baseline': (),
    # Every residual branch live from the first step (models.ResNet.zero_init_residual).
    'no_zero_init': ('--config.zero_init_residual=False',),
    'lr_0.05': ('--config.vanilla.learning_rate=0.05',),
    'lr_0.2': ('--config.vanilla.learning_rate=0.2',),
    'warmup_20': ('--config.vanilla.warmup_steps=20',),
    'adamw': ('--config.vanilla.optimizer=adamw', '--config.vanilla.learning_rate=0.002',
              '--config.vanilla.weight_decay=0.05'),
    'no_augment': ('--config.augment=none',),
    'label_smoothing_0.1': ('--config.vanilla.label_smoothing=0.1',),
    'batch_64': ('--config.batch_size=64',),
    'width_2': ('--config.width=2.0',),
    'no_zero_init_warmup_20': ('--config.zero_init_residual=False', '--config.vanilla.warmup_steps=20'),
    'no_zero_init_lr_0.2': ('--config.zero_init_residual=False', '--config.vanilla.learning_rate=0.2'),
    'no_zero_init_warmup_20_lr_0.2': ('--config.zero_init_residual=False', '--config.vanilla.warmup_steps=20',
                                      '--config.vanilla.learning_rate=0.2'),
    'no_zero_init_warmup_20_lr_0.05': ('--config.zero_init_residual=False', '--config.vanilla.warmup_steps=20',
                                       '--config.vanilla.learning_rate=0.05'),
    'warmup_20_lr_0.2': ('--config.vanilla.warmup_steps=20', '--config.vanilla.learning_rate=0.2'),
    'no_zero_init_warmup_20_lr_0.4': ('--config.zero_init_residual=False', '--config.vanilla.warmup_steps=20',
                                      '--config.vanilla.learning_rate=0.4'),
    'no_zero_init_adamw': ('--config.zero_init_residual=False', '--config.vanilla.optimizer=adamw',
                           '--config.vanilla.learning_rate=0.002', '--config.vanilla.weight_decay=0.05'),
}


def _train_py() -> str:
  """train.py of the checkout the package is installed from (an editable install: the repository root)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(supersub_jax.__file__)))
  path = os.path.join(root, 'train.py')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: run this study from a checkout installed with `make install`.')
  return path


def _records(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:  # a line cut short by the stop
        continue
      if record.get('stage') == 'vanilla':
        out.append(record)
  return out


def _last_train_step(workdir: str) -> int:
  return max((r['step'] for r in _records(workdir) if r['split'] == 'train'), default=0)


def run_one(command: list[str], workdir: str, num_steps: int, stop_after: int) -> dict:
  """Runs ``command`` (a train.py call writing to ``workdir``) and returns {'wall_s', 'returncode', 'stopped'}."""
  os.makedirs(workdir, exist_ok=True)
  env = dict(os.environ)
  # As `make demo`: two XLA host devices use both cores of a small CPU machine.
  env.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  start = time.time()
  with open(os.path.join(workdir, 'train.log'), 'w') as log:
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    stopped = False
    while child.poll() is None:
      time.sleep(2.0)
      if stop_after and stop_after < num_steps and _last_train_step(workdir) >= stop_after:
        child.send_signal(signal.SIGKILL)  # the run's checkpoints are of no use: no preemption save
        child.wait()
        stopped = True
  return {'wall_s': round(time.time() - start, 1), 'returncode': child.returncode, 'stopped': stopped}


def summarize(workdir: str, window: tuple[int, int]) -> dict:
  """The window's mean train loss, the loss at its last step, and the held-out top-1 of a finished run."""
  records = _records(workdir)
  train = {r['step']: r['loss'] for r in records if r['split'] == 'train'}
  in_window = [loss for step, loss in sorted(train.items()) if window[0] <= step <= window[1]]
  held_out = [r for r in records if r['split'] != 'train']
  return {
      'mean_loss_window': sum(in_window) / len(in_window) if in_window else None,
      'points_in_window': len(in_window),
      'loss_at_window_end': train.get(window[1]),
      'last_step': max(train, default=0),
      'test_top1': held_out[-1]['accuracy'] if held_out else None,
      'test_loss': held_out[-1]['loss'] if held_out else None,
  }


def _fmt(value, spec: str) -> str:
  return '-' if value is None else format(value, spec)


def markdown(rows: list[dict], window: tuple[int, int], determinism: list[dict]) -> str:
  lines = [f'Generated by `python {shlex.join(sys.argv)}` ({time.strftime("%Y-%m-%d")}).', '',
           f'Flat network (vanilla stage), train loss averaged over steps {window[0]}-{window[1]} (logged every '
           f'{FLAGS.log_every} steps); chance is ln 38 = {LN_38:.3f}, the target 0.75 ln 38 = {0.75 * LN_38:.3f}.',
           '',
           '| variant | seed | steps | repeat | mean loss | loss at %d | test top-1 | wall s | overrides |' % window[1],
           '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["variant"]} | {r["seed"]} | {r["steps"]} | {r["repeat"]} | '
                 f'{_fmt(r["mean_loss_window"], ".3f")} | {_fmt(r["loss_at_window_end"], ".3f")} | '
                 f'{_fmt(r["test_top1"], ".4f")} | {_fmt(r["wall_s"], ".0f")} | '
                 f'`{" ".join(r["overrides"]) or "(none)"}` |')
  means = {}
  for r in rows:
    if r['mean_loss_window'] is not None and r['repeat'] == 0:
      means.setdefault((r['variant'], r['steps']), []).append(r['mean_loss_window'])
  if means:
    lines += ['', '| variant | steps | seeds | mean of the mean losses | worst seed | every seed <= 0.75 ln 38 |',
              '|---|---|---|---|---|---|']
    for (variant, steps), values in means.items():
      lines.append(f'| {variant} | {steps} | {len(values)} | {sum(values) / len(values):.3f} | {max(values):.3f} | '
                   f'{"yes" if max(values) <= 0.75 * LN_38 else "no"} |')
  if determinism:
    lines += ['', 'Repeats of the same command against the first run (metrics.jsonl records):', '',
              '| variant | seed | steps | repeat | train records compared | differing | first differing step | '
              'max abs loss difference | held-out records identical | test top-1 (first, repeat) |',
              '|---|---|---|---|---|---|---|---|---|---|']
    for d in determinism:
      lines.append(f'| {d["variant"]} | {d["seed"]} | {d["steps"]} | {d["repeat"]} | {d["train_records_compared"]} | '
                   f'{d["train_records_differing"]} | {_fmt(d["first_differing_step"], "d")} | '
                   f'{d["max_abs_loss_difference"]:.3g} | {"yes" if d["held_out_identical"] else "no"} | '
                   f'{", ".join(_fmt(t, ".4f") for t in d["test_top1"])} |')
  return '\n'.join(lines) + '\n'


def _run_or_read(variant: str, overrides: list[str], seed: int, steps: int, repeat: int, train_py: str,
                 window: tuple[int, int]) -> dict:
  """One run's row: read back from its directory when that holds a result of the same command, else run (None
  with --read_only)."""
  name = f'{variant}_seed{seed}_steps{steps}' + (f'_repeat{repeat}' if repeat else '')
  workdir = os.path.join(os.path.abspath(FLAGS.workdir), name)
  command = [sys.executable, train_py, f'--config={FLAGS.config}', f'--workdir={workdir}',
             "--config.stages=('vanilla',)", f'--config.vanilla.num_train_steps={steps}',
             f'--config.seed={seed}', f'--config.log_every_steps={FLAGS.log_every}',
             f'--config.checkpoint_every_steps={steps + 1}', *overrides]
  marker = os.path.join(workdir, 'study_run.json')
  previous = None
  if os.path.exists(marker) and not FLAGS.rerun:
    with open(marker) as f:
      previous = json.load(f)
    # A run that went further than asked serves too: one run to its end, or stopped later than --stop_after.
    went_far_enough = (not previous.get('stopped') or
                       (FLAGS.stop_after and previous.get('stop_after', 0) >= FLAGS.stop_after))
    if previous.get('command') != command or not went_far_enough:
      previous = None
  if previous is None and FLAGS.read_only:
    print(f'{name}: no result of this command in {workdir}; skipped (--read_only)', flush=True)
    return None
  if previous is None:
    if os.path.exists(workdir):
      shutil.rmtree(workdir)
    print(f'running {name}: {shlex.join(command)}', flush=True)
    outcome = run_one(command, workdir, steps, FLAGS.stop_after)
    if outcome['returncode'] not in (0, None) and not outcome['stopped']:
      raise RuntimeError(f'{name} failed (exit {outcome["returncode"]}); see {workdir}/train.log.')
    previous = {'command': command, 'stop_after': FLAGS.stop_after, **outcome}
    with open(marker, 'w') as f:
      json.dump(previous, f, indent=1)
  row = {'variant': variant, 'seed': seed, 'steps': steps, 'repeat': repeat, 'overrides': overrides,
         **summarize(workdir, window), 'wall_s': previous['wall_s'], 'stopped': previous['stopped'],
         # As a reader reruns it (from the repository root, the --workdir as given): no path of the measuring machine.
         'workdir': os.path.join(FLAGS.workdir, name),
         'command': shlex.join(['python', 'train.py', *[a.replace(workdir, os.path.join(FLAGS.workdir, name))
                                                       for a in command[2:]]])}
  print(f'{name:45s}: mean loss {_fmt(row["mean_loss_window"], ".3f")} (steps {window[0]}-{window[1]}), loss at '
        f'{window[1]} {_fmt(row["loss_at_window_end"], ".3f")}, test top-1 {_fmt(row["test_top1"], ".4f")}, '
        f'{row["wall_s"]:.0f} s', flush=True)
  return row


def compare_repeats(rows: list[dict]) -> list[dict]:
  """Repeats of one (variant, seed, steps) against the first: are their metrics.jsonl records identical?"""
  first = {}
  out = []
  for row in rows:
    key = (row['variant'], row['seed'], row['steps'])
    if row['repeat'] == 0:
      first[key] = row
      continue
    if key not in first:
      continue
    a, b = (_records(r['workdir']) for r in (first[key], row))
    metrics = lambda rs, split: {r['step']: (r['loss'], r['accuracy']) for r in rs if (r['split'] == 'train') ==
                                 (split == 'train')}
    train_a, train_b = metrics(a, 'train'), metrics(b, 'train')
    common = sorted(set(train_a) & set(train_b))
    differing = [step for step in common if train_a[step] != train_b[step]]
    held_a, held_b = metrics(a, 'held_out'), metrics(b, 'held_out')
    out.append({'variant': key[0], 'seed': key[1], 'steps': key[2], 'repeat': row['repeat'],
                'train_records_compared': len(common), 'train_records_differing': len(differing),
                'first_differing_step': differing[0] if differing else None,
                'max_abs_loss_difference': max((abs(train_a[s][0] - train_b[s][0]) for s in common), default=0.0),
                'held_out_identical': held_a == held_b and bool(held_a),
                'test_top1': [first[key]['test_top1'], row['test_top1']]})
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  variants = dict(VARIANTS)
  for spec in FLAGS.extra:
    name, _, overrides = spec.partition('=')
    variants[name] = tuple(shlex.split(overrides))
  unknown = [v for v in FLAGS.variants if v not in variants]
  if unknown:
    raise app.UsageError(f'unknown variants {unknown}; known: {sorted(variants)} (or add one with --extra).')
  window = (int(FLAGS.window[0]), int(FLAGS.window[1]))
  train_py = _train_py()
  rows = [_run_or_read(variant, list(variants[variant]), seed, steps, repeat, train_py, window)
          for steps in [int(s) for s in FLAGS.steps]
          for variant in FLAGS.variants
          for seed in [int(s) for s in FLAGS.seeds]
          for repeat in range(FLAGS.repeats)]
  rows = [row for row in rows if row is not None]
  determinism = compare_repeats(rows)
  table = markdown(rows, window, determinism)
  print(table)
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(f'{FLAGS.out}.json', 'w') as f:
      json.dump({'generated_by': f'python {shlex.join(sys.argv)}', 'window': window, 'chance': LN_38, 'target': 0.75 * LN_38, 'rows': rows,
                 'determinism': determinism}, f, indent=1)
    with open(f'{FLAGS.out}.md', 'w') as f:
      f.write(table)


if __name__ == '__main__':
  app.run(main)
