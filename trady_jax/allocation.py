"""How a budget becomes channels: the papers' fill rule over a score-ordered pool (TraDy Alg. 1,
MeDyate Alg. 1: "add channels until B_mem is met"), its capped form for padded index arrays, and
fixed per-layer counts with equal inclusion probability (``samplers`` draws the scores)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from trady_jax.config import ConfigError
from trady_jax.costs import LayerCost


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


def capped_fill_rule(scores: jax.Array, cost: jax.Array, layer: jax.Array, cap: jax.Array,
                     budget: int) -> jax.Array:
  """``fill_rule`` that skips the channels of a layer once it holds ``cap[layer]`` of them.

  ``layer``: each channel's layer (0..L-1). The fill stops at the first channel, skipped or not,
  that would overflow the budget, so with no full layer before that point it is ``fill_rule``;
  otherwise the budget a full layer would have taken goes to the next channels in score order.
  """
  order = jnp.argsort(-scores, stable=True)
  lay, c = layer[order], cost[order]
  onehot = lay[:, None] == jnp.arange(cap.shape[0])
  rank = jnp.take_along_axis(jnp.cumsum(onehot, 0), lay[:, None], 1)[:, 0] - 1
  eligible = rank < cap[lay]
  taken = jnp.where(eligible, c, 0)
  before = jnp.cumsum(taken) - taken  # budget used by the eligible channels ahead
  stopped = jnp.cumsum(before + c > budget) > 0
  return jnp.zeros(scores.shape, bool).at[order].set(eligible & ~stopped)
