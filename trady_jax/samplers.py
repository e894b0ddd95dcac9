"""PRNG-keyed channel samplers: ``sampler.sample(key, weights) -> selection``.

Every sampler ranks the channels of its candidate layers by a score and keeps the best ones
within the budget ``B_mem`` (units, ``sum (C^W_c + C^A_c)`` over selected channels):

* ``uniform``: random scores; TraDy (top-K layers), S-/D-Full Random (all layers);
* ``weighted``: Gumbel-top-k scores ``log w_c + G_c``, i.e. successive sampling without
  replacement with probability proportional to ``w_c`` (MeDyate, with the stored norms);
* ``deterministic``: the scores are the weights (S-/D-Det RGN, Det Raw: highest first).

How many channels each layer gets (``ALLOCATIONS``):

* ``'padded'`` (the default), the papers' rule: go through the pool's channels by decreasing score
  and add them while the running total stays within the budget (stop at the first overflow, as the
  predecessor code), so the scores move budget across layers (MeDyate's allocation). Per-layer
  counts change from draw to draw; each layer's index array has a static ``capacity`` and its
  unused slots hold ``selection.PAD``, which stores a zero activation and gets no update
  (``ops``). Capacities are a quantile of each layer's count over Monte Carlo draws with the
  current scores (``Sampler.fit``: the 90th percentile, or higher until under ``REFIT_RATE`` of
  the draws would refit); a draw that wants more than a capacity skips that
  layer's further channels and fills the budget with the next ones (``capped_fill_rule``), and
  when that would move more than ``OVERFLOW_TOLERANCE`` of the budget across layers the
  capacities are refitted (``selector.Selector``: one more compilation). Capacities never
  shrink, so a run compiles a few times. Padding stores ``sum_l (capacity_l - k_l) m_l`` units
  per sample beyond the selected channels' (``padding_units``; about half the budget on
  mbv2-w0.35 at 27,946 units, ``experiments/compare_allocation.py``);
* ``'fixed'``: per-layer counts fixed for the run (``uniform_counts``: every candidate channel has
  the inclusion probability ``p ~= B_mem / M_K``); the scores only choose channels inside a layer.
  Exact shapes, one compilation, but no budget moves between layers;
* ``'exact'``: the papers' rule with exact-length index arrays, built on the host; a train step
  recompiles once per distinct count vector.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from trady_jax import selection as sel
from trady_jax.allocation import capped_fill_rule, check_budget, fill_rule, uniform_counts
from trady_jax.config import ALLOCATIONS
from trady_jax.costs import LayerCost, NetworkCosts

PyTree = Any
SCORINGS = ("uniform", "weighted", "deterministic")
# Padded allocation: capacities cover a quantile of a layer's count over Monte Carlo draws; a
# draw whose capped layers would move more than OVERFLOW_TOLERANCE of the budget refits them.
# The fit raises the quantile along FIT_QUANTILES until under REFIT_RATE of the draws would
# refit: with many layers, each over its 90th percentile in a tenth of the draws, most draws
# overflow somewhere (uniform TraDy over 35 layers of mbv2-w0.35 refitted in each of its first
# three epochs, about 10 s of compiling each in a 2,000-image run).
FIT_QUANTILES = (0.9, 0.95, 0.98, 0.99, 1.0)
REFIT_RATE = 0.05
OVERFLOW_TOLERANCE = 0.03


def _scores(key: jax.Array, scoring: str, weights: jax.Array | None, n: int) -> jax.Array:
  if scoring == "uniform":
    return jax.random.uniform(key, (n,))
  if weights is None:
    raise ValueError(f"{scoring!r} sampling needs per-channel weights")
  w = jnp.asarray(weights, jnp.float32)
  if scoring == "deterministic":
    return w
  return jnp.log(w) + jax.random.gumbel(key, (n,))


@dataclasses.dataclass(frozen=True)
class Sampler:
  """Draws selections over ``layers`` of a model within ``budget``.

  Attributes:
    template: the params pytree (arrays or ``jax.ShapeDtypeStruct``), for the selection's structure.
    layers: candidate layers (``LayerCost``), e.g. the top-K ranked ones.
    budget: ``B_mem`` in units.
    scoring: ``'uniform'``, ``'weighted'`` or ``'deterministic'``.
    counts: fixed ``{path: k}`` per run (static shapes), or ``None`` for the papers' variable rule.
    trainable: regexes of leaves trained whole (the classifier, BatchNorm).
    capacity: with ``counts=None``, ``{path: slots}`` of padded index arrays (the papers' rule,
      jittable); ``None``: exact-length arrays built on the host.
  """
  template: PyTree
  layers: tuple[LayerCost, ...]
  budget: int
  scoring: str = "uniform"
  counts: Mapping[str, int] | None = None
  trainable: tuple[str, ...] = sel.ALWAYS
  capacity: Mapping[str, int] | None = None

  def __post_init__(self):
    # Keep only shapes: a sampler closed over by jit must not embed parameter values.
    object.__setattr__(self, "template", jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), getattr(x, "dtype", np.float32)),
        self.template))
    if self.scoring not in SCORINGS:
      raise ValueError(f"unknown scoring {self.scoring!r}; use one of {SCORINGS}")
    check_budget(self.layers, self.budget)
    if self.counts is not None:
      known = {l.path for l in self.layers}
      if set(self.counts) - known:
        raise KeyError(f"counts name layers outside the candidates: {set(self.counts) - known}")
      used = sum(self.counts[l.path] * l.memory for l in self.layers if l.path in self.counts)
      if used > self.budget:
        raise ValueError(f"fixed counts use {used:,} units, over the budget of {self.budget:,}")

  @property
  def num_channels(self) -> int:
    return sum(l.in_channels for l in self.layers)

  @property
  def jittable(self) -> bool:
    """True when selections have static shapes (fixed counts or padded capacities)."""
    return self.counts is not None or self.capacity is not None

  def fit(self, key: jax.Array, weights: jax.Array | None = None, *, draws: int = 256,
          quantile: float | None = None) -> "Sampler":
    """This sampler with capacities grown to a quantile of each layer's count over ``draws``
    draws of the papers' rule with these weights: ``quantile`` if given, else the first of
    ``FIT_QUANTILES`` at which under ``REFIT_RATE`` of the draws would overflow the capacities
    by more than ``OVERFLOW_TOLERANCE`` of the budget (the refit criterion of ``Selector``)."""
    def wanted(k, w):
      mask = fill_rule(_scores(k, self.scoring, w, self.num_channels), self._cost(), self.budget)
      return jnp.stack([m.sum() for m in self.split(mask)])

    counts = np.asarray(jax.jit(jax.vmap(wanted, (0, None)))(jax.random.split(key, draws),
                                                              weights))
    held = np.array([(self.capacity or {}).get(l.path, 0) for l in self.layers])
    memory = np.array([l.memory for l in self.layers])
    for q in (quantile,) if quantile is not None else FIT_QUANTILES:
      cap = np.maximum(held, np.ceil(np.quantile(counts, q, axis=0, method="higher")))
      overflow = (np.maximum(counts - cap, 0) * memory).sum(axis=1)
      if np.mean(self.refits(overflow)) < REFIT_RATE:
        break
    return self.grow({l.path: int(k) for l, k in zip(self.layers, cap)})

  def overflow_units(self, wanted: Mapping[str, int]) -> int:
    """Units the papers' rule wanted beyond the capacities (moved to other layers by the cap)."""
    return sum(max(int(wanted.get(l.path, 0)) - self.capacity.get(l.path, 0), 0) * l.memory
               for l in self.layers)

  def refits(self, overflow_units):
    """Whether a draw whose capped layers move ``overflow_units`` across layers (a number or an
    array of them) calls for refitted capacities: over ``OVERFLOW_TOLERANCE`` of the budget."""
    return overflow_units > OVERFLOW_TOLERANCE * self.budget

  def _cost(self) -> jax.Array:
    """Flat per-channel memory cost over the pool (units)."""
    return jnp.concatenate([jnp.full((l.in_channels,), l.memory, jnp.float32)
                            for l in self.layers])

  def grow(self, wanted: Mapping[str, int]) -> "Sampler":
    """This sampler with every capacity below ``wanted`` raised to it."""
    cap = {l.path: max(self.capacity.get(l.path, 0), min(int(wanted.get(l.path, 0)), l.in_channels))
           for l in self.layers}
    return self if cap == self.capacity else dataclasses.replace(self, capacity=cap)

  def padding_units(self, counts: Mapping[str, int]) -> int:
    """Units stored by the padded slots of a selection with these valid ``counts``."""
    if self.capacity is None:
      return 0
    return sum((self.capacity.get(l.path, 0) - counts.get(l.path, 0)) * l.memory
               for l in self.layers if self.capacity.get(l.path, 0))

  def padded(self, idx_by_path: Mapping[str, Any]) -> PyTree:
    """The selection of these channels with this sampler's index shapes (resuming a run)."""
    if self.capacity is None:
      return self._build(idx_by_path)
    out = {}
    for l in self.layers:
      cap, idx = self.capacity.get(l.path, 0), np.asarray(idx_by_path.get(l.path, ()), np.int32)
      if len(idx) > cap:
        raise ValueError(f"{l.path}: {len(idx)} channels exceed the capacity {cap}")
      if cap:
        out[l.path] = np.concatenate([idx, np.full(cap - len(idx), sel.PAD, np.int32)])
    return self._build(out)

  def split(self, flat):
    """Split a flat per-channel vector over the pool (jax or numpy) into per-layer pieces."""
    bounds = np.cumsum([l.in_channels for l in self.layers])[:-1]
    return (np.split if isinstance(flat, np.ndarray) else jnp.split)(flat, bounds)

  def _build(self, idx_by_path: Mapping[str, Any]) -> PyTree:
    chans = {l.path: l.channels(idx_by_path[l.path]) for l in self.layers if l.path in idx_by_path}
    return sel.build(self.template, chans, trainable=self.trainable)

  def sample(self, key: jax.Array, weights: jax.Array | None = None) -> PyTree:
    """A selection for this key; ``weights`` is a flat ``(num_channels,)`` vector over the pool.

    Pure and jittable with fixed counts or capacities; otherwise it runs on the host (variable
    shapes). With capacities, a layer's channels beyond its capacity are cut: use ``draw``.
    """
    return self.draw(key, weights)[0]

  def draw(self, key: jax.Array, weights: jax.Array | None = None) -> tuple[PyTree, dict]:
    """``(selection, {path: channels the papers' rule wants})``. With capacities the selection
    follows ``capped_fill_rule``: a want above a capacity moved that budget to other layers
    (``overflow_units``; the caller may ``fit`` and draw again)."""
    scores = _scores(key, self.scoring, weights, self.num_channels)
    if self.counts is not None:
      idx = {}
      for l, s in zip(self.layers, self.split(scores)):
        k = self.counts.get(l.path, 0)
        if k:
          idx[l.path] = jax.lax.top_k(s, k)[1].astype(jnp.int32)
      return self._build(idx), {p: jnp.int32(k) for p, k in self.counts.items()}
    cost = self._cost()
    if self.capacity is not None:
      cap = np.array([self.capacity.get(l.path, 0) for l in self.layers])
      layer = np.repeat(np.arange(len(self.layers)), [l.in_channels for l in self.layers])
      masks = self.split(capped_fill_rule(scores, cost, jnp.asarray(layer), jnp.asarray(cap),
                                          self.budget))
      idx = {l.path: jnp.nonzero(m, size=c, fill_value=sel.PAD)[0].astype(jnp.int32)
             for l, m, c in zip(self.layers, masks, cap) if c}
      wanted = self.split(fill_rule(scores, cost, self.budget))
      return self._build(idx), {l.path: m.sum() for l, m in zip(self.layers, wanted)}
    mask = np.asarray(jax.jit(fill_rule, static_argnums=2)(scores, cost, self.budget))
    idx = {l.path: np.flatnonzero(m).astype(np.int32)
           for l, m in zip(self.layers, self.split(mask)) if m.any()}
    return self._build(idx), {p: len(i) for p, i in idx.items()}


def _candidates(costs: NetworkCosts, paths: Sequence[str] | None) -> tuple[LayerCost, ...]:
  """The layers named by ``paths`` (unknown names are a clear error), or every conv layer."""
  return tuple(costs[p] for p in paths) if paths is not None else costs.convs


def _sampler(template: PyTree, costs: NetworkCosts, budget: int, paths, scoring: str,
             allocation: str, **kw) -> Sampler:
  """A sampler over ``paths`` with one of ``ALLOCATIONS``; padded capacities start at the
  uniform counts (``fit`` grows them to the scores at hand)."""
  if allocation not in ALLOCATIONS:
    raise ValueError(f"unknown allocation {allocation!r}; use one of {ALLOCATIONS}")
  layers = _candidates(costs, paths)
  counts = uniform_counts(layers, budget)
  if allocation == "fixed":
    return Sampler(template, layers, budget, scoring, counts, **kw)
  return Sampler(template, layers, budget, scoring, None, capacity=
                 dict(counts) if allocation == "padded" else None, **kw)


def uniform(template: PyTree, costs: NetworkCosts, budget: int,
            paths: Sequence[str] | None = None, *, allocation: str = "padded", **kw) -> Sampler:
  """Uniform sampling within ``paths`` (default: all conv layers): TraDy / Full Random."""
  return _sampler(template, costs, budget, paths, "uniform", allocation, **kw)


def weighted(template: PyTree, costs: NetworkCosts, budget: int,
             paths: Sequence[str] | None = None, *, allocation: str = "padded", **kw) -> Sampler:
  """Sampling without replacement proportional to per-channel weights (MeDyate, Alg. 1).

  The papers' rule (``'padded'``, ``'exact'``) lets the weights move channels across layers;
  with ``'fixed'`` the per-layer counts stay the uniform ones (MeDyate's epoch-1 allocation) and
  the weights only decide which channels inside each layer.
  """
  return _sampler(template, costs, budget, paths, "weighted", allocation, **kw)


def deterministic(template: PyTree, costs: NetworkCosts, budget: int,
                  paths: Sequence[str] | None = None, *, allocation: str = "padded",
                  **kw) -> Sampler:
  """Highest weights first until the budget is met (S-/D-Det RGN with RGN weights, Det Raw)."""
  return _sampler(template, costs, budget, paths, "deterministic", allocation, **kw)


def fixed_scheme(template: PyTree, costs: NetworkCosts, counts: Mapping[str, int],
                 params: PyTree, biases: Sequence[str] = (), **kw) -> PyTree:
  """A static selection of ``counts[path]`` channels per layer, largest weight L2 norm first.

  This is MIT Sparse Update's 'magnitude+' criterion; the scheme's own memory is its budget.
  ``biases``: bias leaves trained whole (the scheme's ``n_bias_update``, ``schemes.bias_paths``),
  uncharged as every bias in the papers' accounting; names the model lacks (BatchNorm models,
  whose shifts are always trained) are ignored.
  """
  from trady_jax import ranking  # local: ranking imports costs only
  layers = tuple(costs[p] for p in counts if counts[p] > 0)
  budget = sum(counts[l.path] * l.memory for l in layers)
  kw["trainable"] = tuple(kw.get("trainable", sel.ALWAYS)) + tuple(
      f"^{re.escape(b)}$" for b in biases)
  s = Sampler(template, layers, budget, "deterministic", {l.path: counts[l.path] for l in layers},
              **kw)
  norms = jnp.concatenate([ranking.channel_norm(sel.at_path(params, l.path), l)
                           for l in layers])
  return s.sample(jax.random.key(0), norms)


def pool_vector(sampler: Sampler, per_layer: Mapping[str, jax.Array], fill: float = 0.0):
  """Concatenate ``{path: (C_in,)}`` vectors into the sampler's flat pool order."""
  return jnp.concatenate([jnp.asarray(per_layer[l.path], jnp.float32) if l.path in per_layer
                          else jnp.full((l.in_channels,), fill, jnp.float32)
                          for l in sampler.layers])


def selected_vector(sampler: Sampler, selection: PyTree) -> jax.Array:
  """Boolean flat pool vector: which channels ``selection`` trains (built on the host, so
  selections of varying sizes never trigger compilations)."""
  idx = sel.as_numpy(selection)
  parts = []
  for l in sampler.layers:
    m = np.zeros((l.in_channels,), bool)
    if l.path in idx:
      m[idx[l.path]] = True
    parts.append(m)
  return jnp.asarray(np.concatenate(parts))
