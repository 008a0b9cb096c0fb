"""Decision rules: how a router's superclass distribution and the specialists' distributions become one answer.

Shapes: B images, N superclasses, M subclasses (global labels, superclass-major), S the largest superclass's
subclass count, k routes per image (static). A specialist's *local distribution* is float32[S + d]: its n_s real
subclasses first, its padding (probability 0) after them, and, with d = 1, a last *dustbin* column: "not my
superclass" (Hinton, Vinyals and Dean 2015, section 5). Without a dustbin, d = 0.

A ``Rule`` names one decision procedure, written ``'<rule>[:k][@<threshold>][/<router>]'``:

* ``hard`` (the paper's): the router's top superclass decides; its specialist's most likely real subclass is the
  answer. One specialist per image.
* ``soft`` (HD-CNN's probabilistic averaging, Yan et al. 2015): p(sub | x) = sum over the router's top-k
  superclasses s of p(s | x) p(sub | s, x); the dustbin's mass counts for no subclass. k specialists per image.
* ``hinton`` (Hinton et al.'s combination, 2015 section 5; called ``product`` before, which it is not): the
  distribution q over the M subclasses that minimises KL(p_router || Q_router) + sum over the top-k specialists m of
  KL(p_m || Q_m), where Q_router is q summed over each superclass and Q_m is q seen through specialist m: its own
  subclasses one by one, every other subclass in its dustbin cell. A sum of KLs with q in the second place is
  minimised by a compromise that behaves like a MIXTURE of the experts, not their product: with k = 2 and router
  (0.9, 0.1), a confident wrong specialist wins once its probability is about 1.7 times the right one's. Solved
  exactly (``hinton_distribution``). k specialists per image. ``product`` is still read as this rule.
* ``poe`` (a product of experts, Hinton 2002): over the subclasses of the router's top k superclasses, q(c)
  proportional to r_s(c) x prod over those k specialists m of p~_m(c), where r_s(c) is the router's probability of
  c's superclass and p~_m(c) is m's probability of c for its own subclasses and, outside them, its dustbin mass
  spread evenly over the M - n_m subclasses it does not cover; a specialist without a dustbin abstains there
  (factor 1). Every expert must agree for a subclass to win: a specialist's "not mine" lowers its subclasses and
  raises the others'. Without dustbins it ranks as ``soft`` does. k specialists per image.

Routers give p(s | x), float32[B, N] (``router_probs``): ``generalist`` (its softmax), ``flat`` (a flat network's
subclass softmax summed over each superclass), ``mean`` (the average of the two) or ``oracle`` (the true superclass,
one-hot: what the specialists do once the superclass is known; k = 1).

A threshold (``'soft:2@0.7'``) runs the routes after the first only for images whose top router probability is below
it (``routes_to_run``: -1 for a route not run); the others are decided by the same rule over their first route
alone. ``soft:2@t`` is threshold top-2: the answer is the (superclass, subclass) of the larger p(s | x) max_j
p(sub = j | s, x) of the routes run (on an exact tie, the lower label). 0 never asks; above 1 always asks.

Padded classes of a specialist get the logit ``NEG_LOGIT`` (training masks with it too, ``step.mask_logits``), so
their probability is 0; an image that skips a route gets it in every column (a uniform row the rules never read).

Everything here is pure jnp over arrays and jittable; ``inference`` runs the specialists and calls these.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re

import jax
import jax.numpy as jnp
import numpy as np

from supersub_jax.choices import RULES, ROUTERS

ALIASES = {'product': 'hinton'}  # the old name of 'hinton' (configs and reports before 2026-12-06)
BISECTIONS = 64  # halvings of log lam in hinton_distribution: from 2^-126..2 to float32 resolution
# The logit of a class that is not there: finite, so a softmax over an all-masked row stays defined (uniform).
NEG_LOGIT = float(np.finfo(np.float32).min / 2)


@dataclasses.dataclass(frozen=True)
class Rule:
  """One decision rule: ``name`` in ``RULES``, ``k`` routes per image (1 for ``hard``), a ``router`` in
  ``ROUTERS`` ('oracle': k = 1, the true superclass given), and an optional ``threshold`` (k >= 2): routes after
  the first run only where the router's top probability is below it. Hashable: a static argument of the compiled
  predictor."""
  name: str = 'hard'
  k: int = 1
  router: str = 'generalist'
  threshold: float | None = None

  def __post_init__(self):
    if self.name not in RULES:
      raise ValueError(f'decision rule {self.name!r}: use one of {RULES}.')
    if self.router not in ROUTERS:
      raise ValueError(f'router {self.router!r}: use one of {ROUTERS}.')
    if self.k < 1 or (self.name == 'hard' and self.k != 1):
      raise ValueError(f'{self.name} with k={self.k}: k is at least 1, and hard routing runs exactly 1.')
    if self.router == 'oracle' and self.k != 1:
      raise ValueError(f'{self.name}:{self.k}/oracle: the oracle router gives one superclass; use k=1.')
    if self.threshold is not None:
      if self.k < 2:
        raise ValueError(f'{self.name}@{self.threshold}: a threshold decides when routes after the first run; '
                         'use it with k >= 2, e.g. soft:2@0.7.')
      if not (isinstance(self.threshold, numbers.Real) and math.isfinite(self.threshold) and self.threshold >= 0):
        raise ValueError(f'threshold={self.threshold!r}: use a finite number >= 0 (0 never asks, > 1 always).')
      object.__setattr__(self, 'threshold', float(self.threshold))

  @classmethod
  def parse(cls, spec: str) -> 'Rule':
    """``'hard'``, ``'soft:2'``, ``'hinton:3/mean'``, ``'poe:2'``, ``'hard/flat'``, ``'hard/oracle'``,
    ``'soft:2@0.7'`` -> Rule (k defaults to 1; ``'product'`` is read as ``'hinton'``)."""
    match = re.fullmatch(r'(\w+)(?::(\d+))?(?:@(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?))?(?:/(\w+))?', spec.strip())
    if not match:
      raise ValueError(f"decision rule {spec!r}: write '<rule>[:k][@<threshold>][/<router>]', e.g. 'soft:2/mean' "
                       f"or 'soft:2@0.7', with a rule of {RULES} and a router of {ROUTERS}.")
    name, k, threshold, router = match.groups()
    return cls(ALIASES.get(name, name), int(k or 1), router or 'generalist',
               None if threshold is None else float(threshold))

  @property
  def key(self) -> str:
    """The canonical spec, e.g. 'soft:2/mean' ('hard' for the paper's rule): report.json's key."""
    return (self.name + (f':{self.k}' if self.name != 'hard' else '')
            + (f'@{self.threshold!r}' if self.threshold is not None else '')
            + (f'/{self.router}' if self.router != 'generalist' else ''))

  @property
  def needs_flat(self) -> bool:
    """The router reads a flat network's logits ('flat', 'mean')."""
    return self.router in ('flat', 'mean')

  @property
  def needs_superclass(self) -> bool:
    """The router reads the true superclass ('oracle')."""
    return self.router == 'oracle'


def router_probs(router: str, generalist_logits: jax.Array | None, flat_logits: jax.Array | None,
                 label_to_superclass: jax.Array, num_superclasses: int,
                 superclass: jax.Array | None = None) -> jax.Array:
  """p(s | x) float32[B, N] of ``router`` from the generalist's logits float[B, N] and/or a flat network's
  logits float[B, M] (label_to_superclass int32[M]); for 'oracle', the true ``superclass`` int32[B] one-hot."""
  def generalist():
    if generalist_logits is None:
      raise ValueError(f'router {router!r} needs the generalist\'s logits.')
    return jax.nn.softmax(generalist_logits.astype(jnp.float32), axis=-1)

  def flat():
    if flat_logits is None:
      raise ValueError(f'router {router!r} needs a flat network\'s logits (the vanilla network of the workdir).')
    probs = jax.nn.softmax(flat_logits.astype(jnp.float32), axis=-1)
    return jax.ops.segment_sum(probs.T, label_to_superclass, num_segments=num_superclasses).T

  if router == 'generalist':
    return generalist()
  if router == 'flat':
    return flat()
  if router == 'mean':
    return 0.5 * (generalist() + flat())
  if router == 'oracle':
    if superclass is None:
      raise ValueError("router 'oracle' needs the true superclass of each image (superclass=).")
    return jax.nn.one_hot(superclass, num_superclasses, dtype=jnp.float32)
  raise ValueError(f'router {router!r}: use one of {ROUTERS}.')


def top_routes(probs: jax.Array, k: int) -> jax.Array:
  """The k most likely superclasses of each image, int32[B, k], most likely first (ties: the lower index)."""
  return jax.lax.top_k(probs, k)[1].astype(jnp.int32)


def routes_to_run(rule: Rule, probs: jax.Array) -> jax.Array:
  """The routes each image runs, int32[B, min(rule.k, N)]: the router's top superclasses (``top_routes``), with -1
  for a route after the first that ``rule.threshold`` skips (the image's top probability is at least it)."""
  routes = top_routes(probs, min(rule.k, probs.shape[1]))
  if rule.threshold is None or routes.shape[1] < 2:
    return routes
  ask = jnp.max(probs, axis=-1) < rule.threshold
  return routes.at[:, 1:].set(jnp.where(ask[:, None], routes[:, 1:], -1))


def _real(local: jax.Array, num_subclasses: int) -> jax.Array:
  """The real-subclass columns [..., S] of local distributions [..., S + d]."""
  return local[..., :num_subclasses]


def within_superclass(logits: jax.Array, superclass: jax.Array, label_to_superclass: jax.Array) -> jax.Array:
  """A flat network with oracle routing: its most likely subclass among those of the given superclass.

  logits float32[B, M] (any monotone score), superclass int32[B], label_to_superclass int32[M] -> labels int32[B].
  The reference for Super-Sub's oracle routing: what the specialists add over the flat network once the superclass
  is known."""
  inside = label_to_superclass[None, :] == superclass[:, None]
  return jnp.argmax(jnp.where(inside, logits, -jnp.inf), axis=-1).astype(jnp.int32)


def hard(routes: jax.Array, local: jax.Array, local_to_label: jax.Array) -> jax.Array:
  """The paper's rule. routes int32[B, >= 1] (column 0 decides), local float32[B, >= 1, S + d] (row 0: that route's
  specialist), local_to_label int32[N, S] (-1 on padding) -> global labels int32[B]."""
  s = local_to_label.shape[1]
  best = jnp.argmax(_real(local[:, 0], s), axis=-1)
  return local_to_label[routes[:, 0], best].astype(jnp.int32)


def global_scores(router: jax.Array, routes: jax.Array, local: jax.Array, local_to_label: jax.Array,
                  num_subclasses: int) -> jax.Array:
  """Soft combination: float32[B, M] with p(s | x) p(sub | s, x) at each routed superclass's subclasses (0
  elsewhere, and the dustbin's mass counted for none). router float32[B, N], routes int32[B, k], local
  float32[B, k, S + d]."""
  s = local_to_label.shape[1]
  weight = jnp.take_along_axis(router, routes, axis=1)  # [B, k]
  contrib = weight[..., None] * _real(local, s)  # [B, k, S]
  labels = local_to_label[routes]  # [B, k, S]; -1 on padding
  b = jnp.arange(routes.shape[0])[:, None, None]
  labels = jnp.where(labels >= 0, labels, num_subclasses)  # padding -> an extra column, dropped
  out = jnp.zeros((routes.shape[0], num_subclasses + 1), jnp.float32).at[b, labels].add(contrib)
  return out[:, :num_subclasses]


def soft(router: jax.Array, routes: jax.Array, local: jax.Array, local_to_label: jax.Array,
         num_subclasses: int) -> jax.Array:
  """HD-CNN's probabilistic averaging over the k routes -> global labels int32[B]."""
  return jnp.argmax(global_scores(router, routes, local, local_to_label, num_subclasses), axis=-1).astype(jnp.int32)


def hinton_distribution(router: jax.Array, routes: jax.Array, local: jax.Array, local_to_label: jax.Array,
                         label_to_superclass: jax.Array, *, iterations: int = BISECTIONS) -> jax.Array:
  """Hinton et al.'s combined distribution q float32[B, M] (module docstring: ``hinton``), solved exactly.

  The objective is -sum_s r_s log Q_s - sum_m [sum_(c in m) p_m(c) log q(c) + b_m log(1 - Q_m)], with r the router,
  m the routed specialists, b_m a specialist's dustbin mass and Q_s the mass q puts on superclass s. Within a routed
  superclass only specialist m's own terms depend on how Q_m is split, so q(c) = Q_m p_m(c) / P_m there (P_m = 1 -
  b_m, m's own mass); within the others nothing does, and q is uniform (the limit of the EM fixed point from the
  uniform start). What is left is convex in Q over the simplex. Its stationarity conditions, with the multiplier
  lam > 0: Q_s = r_s / lam for a superclass no specialist sees, and for a routed one the root in (0, 1) of
  lam Q^2 - (lam + a + b) Q + a = 0 (a = r_s + P_s, b = b_s); sum_s Q_s(lam) - 1 falls as lam grows, so lam is
  found by bisection (on log lam, ``iterations`` halvings of [2^-126, sum_s a_s]).

  Args:
    router: p(s | x) float32[B, N]; routes int32[B, k]; local float32[B, k, S + d] (d = 0: no dustbin, a
      specialist then claims all its mass for its own subclasses).
    local_to_label: int32[N, S] (-1 on padding); label_to_superclass: int32[M].
  """
  b, k = routes.shape
  s = local_to_label.shape[1]
  m = label_to_superclass.shape[0]
  n = router.shape[1]
  tiny = jnp.finfo(jnp.float32).tiny
  real = _real(local, s)  # [B, k, S]
  own = jnp.sum(real, axis=-1)  # P_m [B, k]
  dustbin = local[..., s] if local.shape[-1] > s else jnp.zeros((b, k), jnp.float32)  # b_m [B, k]
  rows = jnp.arange(b)[:, None]
  routed = jnp.zeros((b, n), bool).at[rows, routes].set(True)
  a = router + jnp.zeros((b, n), jnp.float32).at[rows, routes].add(own)
  bin_mass = jnp.zeros((b, n), jnp.float32).at[rows, routes].add(dustbin)

  def masses(log_lam):  # Q_s(lam) [B, N] for log lam [B, 1]
    lam = jnp.maximum(jnp.exp(log_lam), tiny)
    c = lam + a + bin_mass
    root = 2.0 * a / jnp.maximum(c + jnp.sqrt(jnp.maximum(c * c - 4.0 * lam * a, 0.0)), tiny)
    return jnp.where(routed, root, router / lam)

  def halve(_, bounds):
    lo, hi = bounds  # log lam
    mid = 0.5 * (lo + hi)
    too_small = jnp.sum(masses(mid), axis=-1, keepdims=True) > 1.0  # mass above 1: lam must grow
    return jnp.where(too_small, mid, lo), jnp.where(too_small, hi, mid)

  lo = jnp.full((b, 1), jnp.log(tiny))
  hi = jnp.log(jnp.sum(a, axis=-1, keepdims=True))  # sum_s Q_s(lam) <= sum_s a_s / lam: at most 1 here
  lo, hi = jax.lax.fori_loop(0, iterations, halve, (lo, hi))
  q_super = masses(0.5 * (lo + hi))
  q_super = q_super / jnp.sum(q_super, axis=-1, keepdims=True)  # the bisection's last rounding
  # Within each superclass: a routed one split as its specialist splits its own mass, the others uniformly.
  sizes = jax.ops.segment_sum(jnp.ones(m, jnp.float32), label_to_superclass, num_segments=n)
  q = q_super[:, label_to_superclass] / sizes[label_to_superclass]
  labels = jnp.where(local_to_label[routes] >= 0, local_to_label[routes], m)  # [B, k, S]
  share = real / jnp.maximum(own, tiny)[..., None]
  within = jnp.zeros((b, m + 1), jnp.float32).at[rows[..., None], labels].add(share)[:, :m]
  covered = jnp.any(label_to_superclass[None, None, :] == routes[..., None], axis=1)  # [B, M]
  return jnp.where(covered, q_super[:, label_to_superclass] * within, q)


def hinton(router: jax.Array, routes: jax.Array, local: jax.Array, local_to_label: jax.Array,
           label_to_superclass: jax.Array) -> jax.Array:
  """Hinton et al.'s combination -> global labels int32[B] (the argmax of ``hinton_distribution``)."""
  q = hinton_distribution(router, routes, local, local_to_label, label_to_superclass)
  return jnp.argmax(q, axis=-1).astype(jnp.int32)


def poe_log_scores(router: jax.Array, routes: jax.Array, local: jax.Array, local_to_label: jax.Array,
                   label_to_superclass: jax.Array) -> jax.Array:
  """The product of experts' unnormalised log q float32[B, M] (module docstring): log r_s(c) plus, for each routed
  specialist m, log p_m(c) on its subclasses and log(b_m / (M - n_m)) elsewhere (0 without a dustbin); -inf on the
  subclasses of superclasses no route covers.

  router float32[B, N]; routes int32[B, k]; local float32[B, k, S + d]; local_to_label int32[N, S] (-1 on padding);
  label_to_superclass int32[M]."""
  b, k = routes.shape
  s = local_to_label.shape[1]
  m = label_to_superclass.shape[0]
  tiny = jnp.finfo(jnp.float32).tiny
  rows = jnp.arange(b)[:, None, None]
  log_p = jnp.log(jnp.maximum(_real(local, s), tiny))  # [B, k, S]
  covered = label_to_superclass[None, None, :] == routes[..., None]  # [B, k, M]
  if local.shape[-1] > s:  # a dustbin: its mass spread over the subclasses the specialist does not cover
    sizes = jnp.sum(local_to_label >= 0, axis=-1)[routes]  # n_m [B, k]
    outside = jnp.log(jnp.maximum(local[..., s], tiny)) - jnp.log(jnp.maximum(m - sizes, 1))  # [B, k]
  else:
    outside = jnp.zeros((b, k), jnp.float32)
  labels = jnp.where(local_to_label[routes] >= 0, local_to_label[routes], m)  # [B, k, S]
  inside = jnp.zeros((b, k, m + 1), jnp.float32).at[rows, jnp.arange(k)[None, :, None], labels].set(log_p)[..., :m]
  experts = jnp.where(covered, inside, outside[..., None])  # [B, k, M]
  scores = jnp.log(jnp.maximum(router[:, label_to_superclass], tiny)) + jnp.sum(experts, axis=1)
  return jnp.where(jnp.any(covered, axis=1), scores, -jnp.inf)  # candidates: the routed superclasses' subclasses


def poe(router: jax.Array, routes: jax.Array, local: jax.Array, local_to_label: jax.Array,
        label_to_superclass: jax.Array) -> jax.Array:
  """The product of experts -> global labels int32[B] (the argmax of ``poe_log_scores``)."""
  return jnp.argmax(poe_log_scores(router, routes, local, local_to_label, label_to_superclass),
                    axis=-1).astype(jnp.int32)


def _combine(name: str, router, routes, local, local_to_label, label_to_superclass) -> jax.Array:
  if name == 'hard':
    return hard(routes, local, local_to_label)
  if name == 'soft':
    return soft(router, routes, local, local_to_label, label_to_superclass.shape[0])
  if name == 'poe':
    return poe(router, routes, local, local_to_label, label_to_superclass)
  return hinton(router, routes, local, local_to_label, label_to_superclass)


def decide(rule: Rule, router: jax.Array, routes: jax.Array, local: jax.Array, local_to_label: jax.Array,
           label_to_superclass: jax.Array) -> jax.Array:
  """Global labels int32[B] of ``rule`` from the router's p(s | x) [B, N], its routes int32[B, k]
  (``routes_to_run``: k = min(rule.k, N), -1 for a route not run) and the routed specialists' local distributions
  float32[B, k, S + d] (rows of routes not run are ignored). An image whose later routes did not run is decided by
  the same rule over its first route alone."""
  if rule.threshold is None or routes.shape[1] < 2:
    return _combine(rule.name, router, routes, local, local_to_label, label_to_superclass)
  asked = routes[:, 1] >= 0
  # Routes not run are filled with the first (their rows are ignored below): every index stays in range.
  filled = jnp.where(routes >= 0, routes, routes[:, :1])
  every = _combine(rule.name, router, filled, local, local_to_label, label_to_superclass)
  first = _combine(rule.name, router, routes[:, :1], local[:, :1], local_to_label, label_to_superclass)
  return jnp.where(asked, every, first)
