"""Tests of supersub_jax.cli through the entry points that use it: what --help shows."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('program', ['train.py', 'evaluate.py'])
def test_help_lists_config_beside_workdir(program):
  out = subprocess.run([sys.executable, os.path.join(ROOT, program), '--help'], capture_output=True, text=True,
                       timeout=300)
  assert 'Traceback' not in out.stderr  # (absl's --help exits with status 1)
  own = out.stdout.split(f'{program}:', 1)[1].split('Try --helpfull')[0]  # the program's own flags
  assert '--config: A configs/*.py file' in own and '--workdir' in own
