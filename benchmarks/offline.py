"""Two-stage inference over a whole split, specialist by specialist: the offline path, timed by
``benchmarks/inference_scale.py`` (``--routing=offline``).

Online routing (``inference.predict``) meets each batch as it comes: its images spread over the N specialists, so
each specialist runs a few images at a time. A whole split can be routed first and run specialist by specialist
instead:

1. the generalist runs over every batch of the split (its shared trunk too): superclass logits, routes and trunk
   outputs, kept on the host;
2. each specialist then runs over all the images routed to it in full batches of ``batch_sizes[0]``, the rest in
   batches of the next sizes (the smallest padded): one compile per batch shape, whatever the split, and every
   specialist at the batch size the chip runs best; its layers are materialized inside the forward
   (``materialize='layer'``: no whole dense specialist is ever resident);
3. the answers are read off by ``decide.decide`` under ``decide.Rule('hard')``, the decision
   ``inference.predict`` makes under that rule.

So the predictions are ``inference.predict``'s under ``Rule('hard')`` (tests/test_offline.py), at about two forward
passes per image plus fewer than N x ``batch_sizes[-1]`` padding images. The price is host memory: the split's
trunk outputs (its images for the default cut 'stem') are held until every specialist has run (ImageNet's 12,650
validation images of mixed_10: 1.9 GB as uint8, 7.6 GB as float32). It lives with the benchmarks, not in
evaluation: evaluation predicts several things per batch (oracle routing, threshold top-2, every decision rule,
the head-only baseline) that this path does not, and its speed on an accelerator is not measured yet.

Host code (numpy, loops) around three jitted functions; nothing here is per-image Python.
"""

from __future__ import annotations

import functools
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from supersub_jax import bank as bank_lib
from supersub_jax import decide
from supersub_jax import inference
from supersub_jax.inference.two_stage import generalist_logits

HARD = decide.Rule('hard')


@functools.partial(jax.jit, static_argnames=('generalist_model',))
def _route_batch(state: bank_lib.SuperSub, images: jax.Array, *, generalist_model):
  """(trunk output [B, ...], router p(s | x) float32[B, N], route int32[B]): ``inference.predict``'s first half."""
  shared = inference.trunk(state, images, generalist_model)
  router = decide.router_probs('generalist', generalist_logits(state, shared, generalist_model), None,
                               state.hierarchy.label_to_superclass, state.hierarchy.local_valid.shape[0])
  return shared, router, decide.routes_to_run(HARD, router)[:, 0]


@functools.partial(jax.jit, static_argnames=('specialist_model', 'materialize'))
def specialist_logits(state: bank_lib.SuperSub, k: jax.Array, shared: jax.Array, *, specialist_model,
                      materialize: str = 'layer') -> jax.Array:
  """Specialist ``k``'s (traced: one compile per shape) logits float32[B, S] for trunk outputs ``shared`` [B, ...]."""
  specialists = inference.unpack.make_specialists(state, specialist_model, materialize)
  return specialists.apply(specialists.load(k), shared).astype(jnp.float32)


@jax.jit
def _decide(router, local_logits, routes, hierarchy):
  """``inference.predict``'s dict under ``Rule('hard')`` from the router [B, N], the routed specialists' logits
  [B, S + d] and the routes int32[B]."""
  local = jax.nn.softmax(inference.route.mask_local_logits(local_logits, routes, hierarchy), axis=-1)
  label = decide.decide(HARD, router, routes[:, None], local[:, None], hierarchy.local_to_label,
                        hierarchy.label_to_superclass)
  return {'label': label, 'superclass': hierarchy.label_to_superclass[label], 'routes': routes[:, None],
          'router': router}


def batch_plan(count: int, batch_sizes: Sequence[int]) -> list[tuple[int, int]]:
  """(start, size) of the batches that cover ``count`` images: as many of the largest size as fit, then of the next
  sizes, the smallest rounding up (its last batch padded). ``batch_plan(300, (256, 32)) == [(0, 256), (256, 32),
  (288, 32)]``."""
  sizes = sorted({int(b) for b in batch_sizes}, reverse=True)
  if not sizes or sizes[-1] < 1:
    raise ValueError(f'batch_sizes={batch_sizes!r} must be positive ints, e.g. (256, 32).')
  plan, start = [], 0
  for i, size in enumerate(sizes):
    last = i == len(sizes) - 1
    while count - start >= size or (last and start < count):
      plan.append((start, size))
      start += size
  return plan


def predict_split(state: bank_lib.SuperSub, batches: Iterable[np.ndarray], *, generalist_model, specialist_model,
                  batch_sizes: Sequence[int] = (256, 32), materialize: str = 'layer') -> dict[str, np.ndarray]:
  """Top-1 Super-Sub predictions of every image of ``batches`` (arrays [b, H, W, C], any b; padding images are
  predicted like the others: drop them by the caller's mask), specialist by specialist (module docstring).

  Returns ``inference.predict``'s keys under ``Rule('hard')`` as numpy arrays over all images in order: 'label',
  'superclass' int32[M], 'routes' int32[M, 1], 'router' float32[M, N]; plus 'specialist_batches' (int: the
  specialist calls).
  """
  shared, router, routes = [], [], []
  for images in batches:
    s, p, r = jax.device_get(_route_batch(state, jnp.asarray(images), generalist_model=generalist_model))
    shared.append(s)
    router.append(p)
    routes.append(r)
  if not shared:
    raise ValueError('predict_split got no batches.')
  shared, router, routes = np.concatenate(shared), np.concatenate(router), np.concatenate(routes)
  local = np.zeros((len(routes), state.num_outputs), np.float32)
  calls = 0
  for k in range(state.hierarchy.local_valid.shape[0]):
    index = np.flatnonzero(routes == k)
    for start, size in batch_plan(index.size, batch_sizes):
      rows = index[start:start + size]
      x = np.zeros((size,) + shared.shape[1:], shared.dtype)
      x[:rows.size] = shared[rows]
      out = specialist_logits(state, jnp.int32(k), x, specialist_model=specialist_model, materialize=materialize)
      local[rows] = np.asarray(out)[:rows.size]
      calls += 1
  out = jax.device_get(_decide(router, local, routes, state.hierarchy))
  return {**{k: np.asarray(v) for k, v in out.items()}, 'specialist_batches': calls}
