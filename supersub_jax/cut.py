"""Where specialists branch off the generalist: the layer groups of a ResNet's variables and the cut between them.

A ResNet's top-level ``params``/``batch_stats`` keys fall into layer groups in forward order (``models``' docstring):
``'stem'`` (``conv_init``, ``bn_init``), ``'stage1'`` .. ``'stageS'`` (``stage{i}_block{j}``) and ``'head'``
(``group_of``). ``Cut(g)`` is the group where specialists branch: it divides a ``params`` or ``batch_stats`` tree
into the generalist's trunk and the rest, and specialists with a shared trunk change only the groups from it on.
``split_head`` takes the classifier off a whole network's params.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping


def split_head(params: Mapping[str, Any]) -> tuple[dict, Any]:
  """A ResNet's params -> (backbone: every entry but ``'head'``, head). Specialists share the backbone."""
  if 'head' not in params:
    raise ValueError("params have no 'head'; pass a whole network's params (e.g. the generalist's).")
  return {k: v for k, v in params.items() if k != 'head'}, params['head']


def _group_position(group: str) -> int:
  """Forward position of a layer group: 'stem' 0, 'stage<i>' i, 'head' after every stage."""
  if group == 'stem':
    return 0
  if group == 'head':
    return HEAD_POSITION
  match = re.fullmatch(r'stage([1-9][0-9]*)', group)
  if not match:
    raise ValueError(f"unknown layer group {group!r}; use 'stem', 'stage<i>' (i from 1) or 'head'.")
  return int(match.group(1))


HEAD_POSITION = 1 << 30  # after every stage, whatever the depth


def group_of(key: str) -> str:
  """The layer group of a top-level ``params``/``batch_stats`` key: 'conv_init' -> 'stem',
  'stage3_block1' -> 'stage3', 'head' -> 'head'."""
  if key in ('conv_init', 'bn_init'):
    return 'stem'
  return key.split('_', 1)[0]


@dataclasses.dataclass(frozen=True)
class Cut:
  """Where specialists branch off the generalist: a layer group (``ResNet.layer_groups``) named ``name``.

  The groups before the cut are the *trunk*, the generalist's own, shared by every specialist and run once per
  image; the groups from it on are each specialist's. ``Cut('stem')`` shares nothing (a delta may touch every
  layer); ``Cut('head')`` shares the whole backbone (a specialist is a new head on the generalist's features).
  This one object answers every question about that boundary: ``split`` divides a params or batch_stats tree,
  ``trunk_regex`` matches the trunk's '/'-joined param paths, ``shares_trunk`` and ``keeps_backbone`` say what
  the cut leaves to the generalist. Frozen and hashable: it is a static field of compiled state.
  """
  name: str = 'stem'

  def __post_init__(self):
    _group_position(self.name)  # raises for a name that is no layer group

  @property
  def position(self) -> int:
    return _group_position(self.name)

  @property
  def shares_trunk(self) -> bool:
    """Whether some layers before the cut stay the generalist's (every cut but 'stem')."""
    return self.position > 0

  @property
  def keeps_backbone(self) -> bool:
    """Whether the whole backbone stays the generalist's, so a specialist has no delta at all ('head')."""
    return self.position == HEAD_POSITION

  def split(self, tree: Mapping[str, Any]) -> tuple[dict, dict]:
    """A ``params`` or ``batch_stats`` tree -> (trunk: the groups before the cut, top: the rest), by top-level key.
    ``Cut('stem').split(params)`` is ``({}, params)``."""
    trunk = {k: v for k, v in tree.items() if _group_position(group_of(k)) < self.position}
    return trunk, {k: v for k, v in tree.items() if k not in trunk}

  @property
  def trunk_regex(self) -> str | None:
    """Regex (``re.search``) over '/'-joined param paths that matches the trunk's params; None when there is no
    trunk."""
    if not self.shares_trunk:
      return None
    if self.keeps_backbone:
      return r'^(?!head/)'
    stages = '|'.join(str(i) for i in range(1, self.position))
    return rf'^(conv_init|bn_init|stage({stages})_[^/]*)/' if stages else r'^(conv_init|bn_init)/'

  def check(self, model) -> None:
    """Raises ValueError unless the cut is a layer group of ``model`` (a ``models.ResNet``)."""
    if self.name not in model.layer_groups:
      raise ValueError(f'config.specialists.branch={self.name!r} is not a layer group of this model; use one of '
                       f"{model.layer_groups} ('stem': a delta on every layer, 'head': the generalist's features "
                       'and a new head).')
