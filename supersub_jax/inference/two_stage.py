"""Two-stage Super-Sub prediction, compiled: ``predict(state, images, rule)``, the one way to predict.

State. ``predict`` takes a ``bank.SuperSub`` pytree (built once on the host by ``bank.build_supersub``): the
generalist, the ``SpecialistBank`` holding the N specialists in their compact exported encodings, and the
hierarchy's label maps. Specialists are unpacked from the bank inside the compiled function
(``inference.unpack``), one at a time, and images reach them grouped on device (``inference.route``).

Shared trunk. Specialists change the generalist only from their cut on (``state.cut``, from their specs), so
``predict`` runs the generalist's trunk once per batch and routes its activations, not the images: each specialist
runs only the layers from the cut, and ``specialist_variables`` materializes only those.

Rule. A ``decide.Rule`` (static) says how the answer is made: its router gives p(s | x) (the generalist's softmax, a
flat network's, their mean, or the true superclass one-hot: 'oracle'); its top k superclasses
(``decide.routes_to_run``; with a threshold, routes after the first only where the router is unsure) each run as
one routing pass, and ``decide.decide`` combines their local distributions. ``Rule('hard')`` is the paper's top-1
Super-Sub; ``Rule('hard', router='oracle')`` with ``superclass=`` the specialists given the true superclass;
``Rule('soft', 2, threshold=t)`` threshold top-2 (a second specialist where the top probability is below t).

``predict`` targets a single device: plain ``jax.jit``, no sharding annotations; evaluation batches are small enough
for one accelerator, and the specialist loop is sequential anyway. Its model-free core ``answer`` takes router
probabilities and a ``Specialists`` pair, so routing and deciding can be tested on hand-built outputs.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from supersub_jax import bank as bank_lib
from supersub_jax import decide as decide_lib
from supersub_jax.inference import route as route_lib
from supersub_jax.inference import unpack

PyTree = Any

DEFAULT_CHUNK_SIZES = (32, 8)


def trunk(state: bank_lib.SuperSub, images: jax.Array, model) -> jax.Array:
  """The shared trunk's output for images [B, H, W, C]: the generalist's layers before ``state.cut`` (eval
  mode), run by ``model``, any ResNet of the generalist's architecture. The images themselves for 'stem'."""
  return model.apply(state.generalist, images, train=False, stop=state.cut.name)


def generalist_logits(state: bank_lib.SuperSub, shared: jax.Array, model) -> jax.Array:
  """The generalist's superclass logits float32[B, N] from the trunk's output ``shared`` (``trunk``), run by
  ``model``, the generalist (N outputs)."""
  logits = model.apply(state.generalist, shared, train=False, start=state.cut.name)
  n = state.hierarchy.local_valid.shape[0]
  if logits.ndim != 2 or logits.shape[1] != n:
    raise ValueError(f'superclass logits must be [B, N={n}], got {logits.shape}; the generalist '
                     'must have one output per superclass.')
  return logits


def path_settings(config_evaluate, platform: str | None = None) -> dict:
  """``predict``'s routing keywords from ``config.evaluate`` (routing, slot_size, materialize, chunk_sizes),
  with routing and materialize 'auto' resolved for ``platform`` (default: jax's) by ``ROUTING_BY_PLATFORM`` and
  ``MATERIALIZE_BY_PLATFORM``."""
  platform = platform or jax.default_backend()
  routing = str(config_evaluate.routing)
  if routing == 'auto':
    routing = route_lib.ROUTING_BY_PLATFORM.get(platform, 'loop')
  materialize = str(config_evaluate.materialize)
  if materialize == 'auto':
    materialize = unpack.MATERIALIZE_BY_PLATFORM.get(platform, 'group')
  return {'routing': routing, 'slot_size': int(config_evaluate.slot_size),
          'materialize': materialize,
          'chunk_sizes': tuple(int(c) for c in config_evaluate.chunk_sizes)}


def answer(rule: decide_lib.Rule, router: jax.Array, shared: jax.Array, specialists: unpack.Specialists,
           hierarchy: bank_lib.HierarchyArrays, *, chunk_sizes: Sequence[int], routing: str = 'loop',
           slot_size: int = 32) -> dict[str, jax.Array]:
  """``rule``'s answer from the router's p(s | x) float32[B, N] and the specialists' inputs ``shared`` [B, ...]:
  each route of ``decide.routes_to_run`` is one routing pass (``route.local_distributions``: 'loop' with
  ``chunk_sizes`` or 'padded' with ``slot_size``; a route not run costs nothing in 'loop'), combined by
  ``decide.decide``.

  Returns dict: 'label' int32[B] (global subclass label), 'superclass' int32[B] (the label's), 'routes'
  int32[B, k] (k = min(rule.k, N); -1 for a route not run), 'router' float32[B, N], 'second' bool[B] (the image
  ran more than one specialist) and 'num_second' int32[] (their count: the extra cost).
  """
  routes = decide_lib.routes_to_run(rule, router)
  local = jnp.stack([route_lib.local_distributions(shared, routes[:, j], specialists, hierarchy,
                                                   chunk_sizes=chunk_sizes, routing=routing, slot_size=slot_size)
                     for j in range(routes.shape[1])], axis=1)
  label = decide_lib.decide(rule, router, routes, local, hierarchy.local_to_label, hierarchy.label_to_superclass)
  second = routes[:, 1] >= 0 if routes.shape[1] > 1 else jnp.zeros(routes.shape[:1], bool)
  return {'label': label, 'superclass': jnp.asarray(hierarchy.label_to_superclass)[label].astype(jnp.int32),
          'routes': routes, 'router': router, 'second': second, 'num_second': jnp.sum(second).astype(jnp.int32)}


@functools.partial(jax.jit, static_argnames=('rule', 'generalist_model', 'specialist_model', 'flat_model',
                                             'chunk_sizes', 'routing', 'slot_size', 'materialize'))
def predict(state: bank_lib.SuperSub, images: jax.Array, rule: decide_lib.Rule, *, generalist_model,
            specialist_model, superclass: jax.Array | None = None, flat: PyTree | None = None, flat_model=None,
            chunk_sizes: tuple[int, ...] = DEFAULT_CHUNK_SIZES, routing: str = 'loop', slot_size: int = 32,
            materialize: str = 'group') -> dict[str, jax.Array]:
  """Super-Sub's answer under the decision ``rule`` (``decide.Rule``, static) for images float[B, H, W, C].

  ``generalist_model``/``specialist_model`` are the flax ResNets with N and S = max_subclasses outputs (static,
  hashable). What the router needs: the 'flat' and 'mean' routers a flat network's ``flat`` (its
  ``{'params', 'batch_stats'}``) run by ``flat_model``; the 'oracle' router the true ``superclass`` int32[B] (in
  [0, N)). How the specialists run (all static): ``routing`` 'loop' (``route.route``, with ``chunk_sizes``) or
  'padded' (``route.route_padded``, one call of ``slot_size`` slots); ``materialize`` 'group' or 'layer'
  (``unpack.make_specialists``; 'padded' wants 'layer'). Every combination gives the same predictions.

  Returns ``answer``'s dict: 'label', 'superclass' int32[B], 'routes' int32[B, k], 'router' float32[B, N],
  'second' bool[B], 'num_second' int32[].
  """
  if not isinstance(rule, decide_lib.Rule):
    raise ValueError(f'rule={rule!r}: pass a decide.Rule, e.g. decide.Rule() or decide.Rule.parse("soft:2").')
  shared = trunk(state, images, generalist_model)
  logits = generalist_logits(state, shared, generalist_model) if rule.router in ('generalist', 'mean') else None
  flat_logits = None
  if rule.needs_flat:
    if flat is None or flat_model is None:
      raise ValueError(f'rule {rule.key!r} routes by a flat network: pass flat= its variables and flat_model=.')
    flat_logits = flat_model.apply(flat, images, train=False)
  if rule.needs_superclass and superclass is None:
    raise ValueError(f'rule {rule.key!r} routes by the true superclass: pass superclass= int32[B].')
  n = state.hierarchy.local_valid.shape[0]
  router = decide_lib.router_probs(rule.router, logits, flat_logits, state.hierarchy.label_to_superclass, n,
                                   None if superclass is None else jnp.asarray(superclass, jnp.int32))
  return answer(rule, router, shared, unpack.make_specialists(state, specialist_model, materialize), state.hierarchy,
                chunk_sizes=chunk_sizes, routing=routing, slot_size=slot_size)
