"""Tests of tools/hierarchy.py, the command that prints a hierarchy (run as a program)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from supersub_jax import hierarchy as H

MIXED_10 = [(s.name, s.wnid, len(s.subclasses)) for s in H.mixed_10().superclasses]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'tools.hierarchy', *args], capture_output=True, text=True,
                        timeout=120, cwd=ROOT)


def test_cli_mixed_10():
  out = _cli('mixed_10')
  assert out.returncode == 0, out.stderr
  header, columns, *lines = out.stdout.strip().split('\n')
  assert header == 'mixed_10: 10 superclasses, 253 subclasses'
  assert columns.split('\t') == ['index', 'superclass', 'wnid', 'subclasses', 'source class indices']
  assert len(lines) == 10
  fields = [line.split('\t') for line in lines]
  assert [(f[1], f[2], int(f[3])) for f in fields] == MIXED_10
  assert [int(f[0]) for f in fields] == list(range(10))
  h = H.mixed_10()
  for f, s in zip(fields, h.superclasses):
    assert [int(x) for x in f[4].split(',')] == [sub.source_index for sub in s.subclasses]
  assert lines == h.summary_lines()


def test_cli_json():
  out = json.loads(_cli('mixed_10', '--json').stdout)
  assert out['name'] == 'mixed_10'
  assert [(s['name'], s['wnid'], s['count']) for s in out['superclasses']] == MIXED_10
  assert out['superclasses'][1]['source_indices'][:3] == [7, 8, 9]


def test_cli_bad_spec_is_one_error_line():
  out = _cli('nonsense')
  assert out.returncode == 1
  assert out.stderr.startswith('error: unknown hierarchy spec') and out.stderr.count('\n') == 1
