"""The checks an entry point runs before anything else: the pure config check (``config_check``) with this
machine's devices and memory, and what only the machine can tell -- DALI installed, the pretrained file there, the
data directory writable.

  preflight.check(config)                  # recipe.run (train.py), before the workdir's lock
  preflight.check(config, training=False)  # evaluate.py

A bad config fails in seconds with every problem listed, not after hours of an earlier stage; nothing is left on
disk by a refused start (the data directory is tried with a temporary file, removed at once).
"""

from __future__ import annotations

import os
import tempfile

import jax
import ml_collections

from supersub_jax import config_check
from supersub_jax import runtime


def host_problems(config: ml_collections.ConfigDict, *, training: bool = True) -> list[str]:
  """What this machine lacks for ``config``: DALI (``input.decoder='dali'``), the pretrained file a training stage
  starts from (``training`` only), the map the report quotes (evaluation only), a writable ``data_dir`` (created when missing: the label caches and the synthetic
  dataset are written there)."""
  problems = []
  if config.input.decoder == 'dali':
    from supersub_jax.data import dali  # pylint: disable=g-import-not-at-top
    problem = dali.unavailable()
    if problem:
      problems.append(f'input.decoder=\'dali\': {problem}')
  uses_init = ({'vanilla', 'vanilla_matched'} & set(config.stages)
               or ('superclass' in config.stages and not config.superclass.init_from_vanilla))
  if training and uses_init and config.init.path and not os.path.exists(os.path.expanduser(config.init.path)):
    problems.append(f'init.path={config.init.path!r}: no such file or directory; download the weights (see the '
                    "config's docstring) or leave init.path empty for a random start.")
  summary = config.evaluate.map_summary
  if not training and summary and not os.path.isfile(os.path.expanduser(summary)):
    problems.append(f'evaluate.map_summary={summary!r}: no such file; give a map studies/map.py wrote '
                    "(<out>.json), or leave it empty for a report without the map's cell.")
  data_dir = os.path.abspath(os.path.expanduser(config.data_dir))
  try:
    os.makedirs(data_dir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=data_dir):
      pass
  except OSError as e:
    problems.append(f'data_dir={config.data_dir!r}: cannot be written ({e.strerror}); the label caches (and the '
                    'synthetic dataset) are written there: choose a writable directory.')
  return problems


def check(config: ml_collections.ConfigDict, *, training: bool = True) -> None:
  """Raises ``config_check.ConfigError`` listing every problem of ``config`` on this machine: the config check with
  its devices and memory, then ``host_problems``. ``training=False`` (evaluate.py) leaves out what only training
  reads."""
  problems = config_check.problems_of(config, training=training, devices=jax.device_count(),
                                      memory=runtime.device_memory())
  config_check.raise_if(problems + host_problems(config, training=training))
