"""The full-gradient oracle of Det RGN / Det Raw / Prob Raw ("complete gradient knowledge", TraDy
4.2, MeDyate 4.3): per-channel norms (Eq. 6) of the loss gradient over the training split."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from trady_jax import ranking, steps
from trady_jax.costs import NetworkCosts

PyTree = Any


def full_gradient_norms(model, costs: NetworkCosts, batches: Callable[[], Any],
            batch_stats: Callable[[], PyTree] = lambda: None) -> Callable:
  """Channel norms (Eq. 6) of the full gradient, the "complete gradient knowledge" of Det RGN /
  Det Raw / Prob Raw: the loss gradient averaged over ``batches()`` (the whole training split
  unless ``Config.oracle_batches`` asks for a few-batch approximation), accumulated batch by
  batch, then its per-channel norms. ``batch_stats()``: the current BN running statistics (BN
  then uses batch statistics)."""

  @functools.partial(jax.jit, donate_argnums=0)
  def add(total, params, batch, stats):
    def logits(p):
      if stats is None:
        return model.apply({"params": p}, batch["image"])
      return model.apply({"params": p, "batch_stats": stats}, batch["image"],
                         mutable=["batch_stats"])[0]

    g = jax.grad(lambda p: steps.cross_entropy(logits(p), batch["label"]))(params)
    return jax.tree.map(jnp.add, total, g)

  def oracle(params):
    total, n = jax.tree.map(jnp.zeros_like, params), 0
    for b in batches():
      total, n = add(total, params, b, batch_stats()), n + 1
    return ranking.channel_norms(jax.tree.map(lambda g: g / max(n, 1), total), costs)

  return oracle
