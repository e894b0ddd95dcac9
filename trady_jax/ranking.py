"""Channel and layer importance: gradient norms, RGN, LaRa, and the top-K layer rules (the maths;
``rankings`` holds the offline ranking value and its file).

* channel gradient norm (Eq. 6): ``||(dL/dW_i)_c||_2``, the L2 norm of kernel slice ``c``;
* reweighted gradient norm (Eq. 7): ``RGN_c = ||(dL/dW_i)_c||_2 / (C^W_c + C^A_c)``;
* layer RGN (Eq. 8): ``sum_c RGN_c``;
* LaRa (Eq. 9): ``||dL/dW_i||_2 / sum_c (C^W_c + C^A_c)``.

Accumulation over training steps ("cumulative" norms, which the papers leave open) is the sum over
steps of the per-step norms, for channels and for whole layers alike.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from trady_jax import paper
from trady_jax import selection as sel
from trady_jax.costs import LayerCost, NetworkCosts

PyTree = Any


def channel_norm(kernel_grad: jax.Array, layer: LayerCost) -> jax.Array:
  """Eq. 6 for every input channel of one layer: ``(C_in,)`` L2 norms of the kernel slices."""
  shape = ((*layer.kernel_size, layer.in_channels // layer.groups, layer.out_channels)
           if layer.kind != "dense" else (layer.in_channels, layer.out_channels))
  chex.assert_shape(kernel_grad, shape, custom_message=f"{layer.path} (its costs)")
  g = kernel_grad.astype(jnp.float32)
  if layer.kind == "depthwise":
    m = layer.out_channels // layer.in_channels
    g = g.reshape(*g.shape[:-1], layer.in_channels, m)
    return jnp.sqrt(jnp.sum(g * g, axis=(0, 1, 2, 4)))
  g = jnp.moveaxis(g, -2, 0).reshape(g.shape[-2], -1)
  return jnp.sqrt(jnp.sum(g * g, axis=1))


def channel_norms(grads: PyTree, costs: NetworkCosts,
                  paths: Sequence[str] | None = None) -> dict[str, jax.Array]:
  """``{path: (C_in,) channel gradient norms}`` for the charged layers (or ``paths``)."""
  paths = [l.path for l in costs.convs] if paths is None else paths
  return {p: channel_norm(sel.at_path(grads, p), costs[p]) for p in paths}


def init(costs: NetworkCosts) -> dict[str, dict[str, jax.Array]]:
  """An empty accumulator: per-channel and per-layer norm sums for every charged layer."""
  return {"channel": {l.path: jnp.zeros((l.in_channels,), jnp.float32) for l in costs.convs},
          "layer": {l.path: jnp.zeros((), jnp.float32) for l in costs.convs}}


def accumulate(state: dict, grads: PyTree, costs: NetworkCosts) -> dict:
  """Add one step's channel norms (Eq. 6) and layer Frobenius norms to the accumulator (pure)."""
  return accumulate_norms(state, channel_norms(grads, costs, list(state["channel"])))


def accumulate_norms(state: dict, norms: Mapping[str, jax.Array]) -> dict:
  """``accumulate`` from one step's per-channel norms; a layer's norm is their root sum of squares."""
  return {"channel": {p: state["channel"][p] + n for p, n in norms.items()},
          "layer": {p: state["layer"][p] + jnp.sqrt(jnp.sum(n * n)) for p, n in norms.items()}}


def rgn(channel: Mapping[str, Any], costs: NetworkCosts) -> dict[str, np.ndarray]:
  """Eq. 7: per-channel reweighted gradient norms."""
  return {p: np.asarray(n) / costs[p].memory for p, n in channel.items()}


def layer_rgn(channel: Mapping[str, Any], costs: NetworkCosts) -> dict[str, float]:
  """Eq. 8: per-layer sum of channel RGNs."""
  return {p: float(np.sum(v)) for p, v in rgn(channel, costs).items()}


def lara(layer: Mapping[str, Any], costs: NetworkCosts) -> dict[str, float]:
  """Eq. 9: layer gradient norm over the layer's whole memory cost."""
  return {p: float(n) / costs[p].layer_memory for p, n in layer.items()}


def ranked(scores: Mapping[str, float]) -> list[str]:
  """Layer paths by decreasing score (ties keep forward order)."""
  return sorted(scores, key=lambda p: -scores[p])


def top_k_share(scores: Mapping[str, float], share: float = paper.TOPK_SHARE) -> list[str]:
  """TraDy's rule: the smallest top-K prefix holding ``share`` of the total score."""
  order = ranked(scores)
  total = sum(scores.values())
  if total <= 0:
    raise ValueError("all layer scores are zero: accumulate gradients before ranking")
  csum = np.cumsum([scores[p] for p in order])
  k = int(np.searchsorted(csum, share * total - 1e-12 * total)) + 1
  return order[:min(k, len(order))]


def top_k_alpha(scores: Mapping[str, float], costs: NetworkCosts, budget: int,
                alpha: float = paper.ALPHA_OPT) -> list[str]:
  """MeDyate's rule (Eq. 10): the smallest K with ``alpha_K = B_mem / M_K <= alpha``."""
  order = ranked(scores)
  memory = 0
  for k, p in enumerate(order, 1):
    memory += costs[p].layer_memory
    if budget / memory <= alpha:
      return order[:k]
  return order
