"""PRNG-keyed channel samplers: ``sampler.sample(key, weights) -> selection``.

Every sampler ranks the channels of its candidate layers by a score and keeps the best ones
within the budget ``B_mem`` (units, ``sum (C^W_c + C^A_c)`` over selected channels):

* ``uniform``: random scores; TraDy (top-K layers), S-/D-Full Random (all layers);
* ``weighted``: Gumbel-top-k scores ``log w_c + G_c``, i.e. successive sampling without
  replacement with probability proportional to ``w_c`` (MeDyate, with the stored norms);
* ``deterministic``: the scores are the weights (S-/D-Det RGN, Det Raw: highest first).

Two allocation rules decide how many channels each layer gets:

* ``counts`` fixed for the run (the default): every sample has the same per-layer counts, so the
  selection has static shapes and a jitted train step compiles once. The uniform counts give every
  candidate channel the same inclusion probability ``p ~= B_mem / M_K`` (``uniform_counts``);
* ``counts=None``, the papers' rule: go through channels by decreasing score and add them while
  the running total stays within the budget (stop at the first overflow, as the predecessor code).
  Per-layer counts then change from draw to draw; the selection is built on the host and a train
  step recompiles once per distinct count vector.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from trady_jax import selection as sel
from trady_jax.config import ConfigError
from trady_jax.costs import LayerCost, NetworkCosts

PyTree = Any
SCORINGS = ("uniform", "weighted", "deterministic")


def check_budget(layers: Sequence[LayerCost], budget: int) -> None:
  """Raise a clear error if the budget cannot hold the cheapest channel of ``layers``."""
  if not layers:
    raise ValueError("no candidate layers to sample from")
  cheapest = min(layers, key=lambda l: l.memory)
  if budget < cheapest.memory:
    raise ConfigError(f"budget of {budget:,} units is smaller than the cheapest channel "
                      f"({cheapest.memory:,} units, {cheapest.path}); nothing can be trained")


def uniform_counts(layers: Sequence[LayerCost], budget: int) -> dict[str, int]:
  """Fixed per-layer counts with (near-)equal inclusion probability ``k_l / n_l ~= p``.

  ``p`` is the largest common fraction with ``sum_l floor(p n_l) m_l <= B_mem``; the leftover
  budget then adds one channel to the layers with the largest rounding remainder ``p n_l -
  floor(p n_l)`` that still fit, so ``|k_l / n_l - p| < 1 / n_l``.
  """
  check_budget(layers, budget)
  n = np.array([l.in_channels for l in layers])
  m = np.array([l.memory for l in layers])
  lo, hi = 0.0, 1.0
  if (n * m).sum() <= budget:
    return {l.path: l.in_channels for l in layers}
  for _ in range(60):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if (np.floor(mid * n) * m).sum() <= budget else (lo, mid)
  k = np.floor(lo * n).astype(int)
  left = budget - int((k * m).sum())
  for i in np.argsort(-(lo * n - k), kind="stable"):
    if k[i] < n[i] and m[i] <= left:
      k[i] += 1
      left -= m[i]
  return {l.path: int(c) for l, c in zip(layers, k)}


def fill_rule(scores: jax.Array, cost: jax.Array, budget: int) -> jax.Array:
  """The papers' rule over a flat channel pool: boolean mask of the score-ordered prefix that fits."""
  order = jnp.argsort(-scores, stable=True)
  fits = jnp.cumsum(cost[order]) <= budget
  return jnp.zeros(scores.shape, bool).at[order].set(fits)


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
  """
  template: PyTree
  layers: tuple[LayerCost, ...]
  budget: int
  scoring: str = "uniform"
  counts: Mapping[str, int] | None = None
  trainable: tuple[str, ...] = sel.ALWAYS

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
    """True when selections have static shapes (fixed counts)."""
    return self.counts is not None

  def split(self, flat):
    """Split a flat per-channel vector over the pool (jax or numpy) into per-layer pieces."""
    bounds = np.cumsum([l.in_channels for l in self.layers])[:-1]
    return (np.split if isinstance(flat, np.ndarray) else jnp.split)(flat, bounds)

  def _build(self, idx_by_path: Mapping[str, Any]) -> PyTree:
    chans = {l.path: l.channels(idx_by_path[l.path]) for l in self.layers if l.path in idx_by_path}
    return sel.build(self.template, chans, trainable=self.trainable)

  def sample(self, key: jax.Array, weights: jax.Array | None = None) -> PyTree:
    """A selection for this key; ``weights`` is a flat ``(num_channels,)`` vector over the pool.

    Pure and jittable with fixed counts; with ``counts=None`` it runs on the host (variable shapes).
    """
    scores = _scores(key, self.scoring, weights, self.num_channels)
    if self.counts is not None:
      idx = {}
      for l, s in zip(self.layers, self.split(scores)):
        k = self.counts.get(l.path, 0)
        if k:
          idx[l.path] = jax.lax.top_k(s, k)[1].astype(jnp.int32)
      return self._build(idx)
    cost = jnp.concatenate([jnp.full((l.in_channels,), l.memory, jnp.float32)
                            for l in self.layers])
    mask = np.asarray(jax.jit(fill_rule, static_argnums=2)(scores, cost, self.budget))
    idx = {l.path: np.flatnonzero(m).astype(np.int32)
           for l, m in zip(self.layers, self.split(mask)) if m.any()}
    return self._build(idx)


def _candidates(costs: NetworkCosts, paths: Sequence[str] | None) -> tuple[LayerCost, ...]:
  """The layers named by ``paths`` (unknown names are a clear error), or every conv layer."""
  return tuple(costs[p] for p in paths) if paths is not None else costs.convs


def uniform(template: PyTree, costs: NetworkCosts, budget: int,
            paths: Sequence[str] | None = None, *, fixed_counts: bool = True, **kw) -> Sampler:
  """Uniform sampling within ``paths`` (default: all conv layers): TraDy / Full Random."""
  layers = _candidates(costs, paths)
  counts = uniform_counts(layers, budget) if fixed_counts else None
  return Sampler(template, layers, budget, "uniform", counts, **kw)


def weighted(template: PyTree, costs: NetworkCosts, budget: int,
             paths: Sequence[str] | None = None, *, fixed_counts: bool = True, **kw) -> Sampler:
  """Sampling without replacement proportional to per-channel weights (MeDyate).

  With fixed counts, the per-layer counts are the uniform ones (MeDyate's epoch-1 allocation) and
  the weights only decide which channels inside each layer; ``fixed_counts=False`` lets the weights
  move channels across layers, as in the paper.
  """
  layers = _candidates(costs, paths)
  counts = uniform_counts(layers, budget) if fixed_counts else None
  return Sampler(template, layers, budget, "weighted", counts, **kw)


def deterministic(template: PyTree, costs: NetworkCosts, budget: int,
                  paths: Sequence[str] | None = None, **kw) -> Sampler:
  """Highest weights first until the budget is met (S-/D-Det RGN with RGN weights, Det Raw)."""
  layers = _candidates(costs, paths)
  return Sampler(template, layers, budget, "deterministic", None, **kw)


def fixed_scheme(template: PyTree, costs: NetworkCosts, counts: Mapping[str, int],
                 params: PyTree, **kw) -> PyTree:
  """A static selection of ``counts[path]`` channels per layer, largest weight L2 norm first.

  This is MIT Sparse Update's 'magnitude+' criterion; the scheme's own memory is its budget.
  """
  from trady_jax import ranking  # local: ranking imports costs only
  layers = tuple(costs[p] for p in counts if counts[p] > 0)
  budget = sum(counts[l.path] * l.memory for l in layers)
  s = Sampler(template, layers, budget, "deterministic", {l.path: counts[l.path] for l in layers},
              **kw)
  norms = jnp.concatenate([ranking.channel_norm(ranking._leaf(params, l.path), l)
                           for l in layers])
  return s.sample(jax.random.key(0), norms)


# --- MeDyate's stored-norm state (Alg. 1) -------------------------------------------------------

def medyate_init(sampler: Sampler) -> dict[str, jax.Array]:
  """Norm vector ``N`` over the pool (all ones: epoch 1 is uniform) and which channels were seen."""
  n = sampler.num_channels
  return {"norms": jnp.ones((n,), jnp.float32), "seen": jnp.zeros((n,), bool),
          "updates": jnp.zeros((), jnp.int32)}


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


def medyate_update(state: dict, measured: jax.Array, selected: jax.Array) -> dict:
  """Store the raw norms measured for the channels trained this epoch (MeDyate Alg. 1, step 2).

  ``N_c <- measured_c`` for selected channels. After the first epoch, channels never seen get the
  maximum observed norm, so they are explored first; afterwards they keep that value until sampled.
  """
  norms = jnp.where(selected, measured, state["norms"])
  seen = state["seen"] | selected
  first = state["updates"] == 0
  top = jnp.max(jnp.where(seen, norms, -jnp.inf))
  norms = jnp.where(first & ~seen, top, norms)
  # A zero norm would make a channel unreachable for Gumbel-top-k; keep a tiny floor.
  norms = jnp.maximum(norms, jnp.finfo(jnp.float32).tiny)
  return {"norms": norms, "seen": seen, "updates": state["updates"] + 1}
