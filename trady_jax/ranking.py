"""Channel and layer importance: gradient norms, RGN, LaRa, and the top-K layer rules.

* channel gradient norm (Eq. 6): ``||(dL/dW_i)_c||_2``, the L2 norm of kernel slice ``c``;
* reweighted gradient norm (Eq. 7): ``RGN_c = ||(dL/dW_i)_c||_2 / (C^W_c + C^A_c)``;
* layer RGN (Eq. 8): ``sum_c RGN_c``;
* LaRa (Eq. 9): ``||dL/dW_i||_2 / sum_c (C^W_c + C^A_c)``.

Accumulation over training steps ("cumulative" norms, which the papers leave open) is the sum over
steps of the per-step norms, for channels and for whole layers alike.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from trady_jax import selection as sel
from trady_jax.costs import LayerCost, NetworkCosts

PyTree = Any


def channel_norm(kernel_grad: jax.Array, layer: LayerCost) -> jax.Array:
  """Eq. 6 for every input channel of one layer: ``(C_in,)`` L2 norms of the kernel slices."""
  shape = ((*layer.kernel_size, layer.in_channels // layer.groups, layer.out_channels)
           if layer.charged else (layer.in_channels, layer.out_channels))
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


def top_k_share(scores: Mapping[str, float], share: float = 0.97) -> list[str]:
  """TraDy's rule: the smallest top-K prefix holding ``share`` of the total score."""
  order = ranked(scores)
  total = sum(scores.values())
  if total <= 0:
    raise ValueError("all layer scores are zero: accumulate gradients before ranking")
  csum = np.cumsum([scores[p] for p in order])
  k = int(np.searchsorted(csum, share * total - 1e-12 * total)) + 1
  return order[:min(k, len(order))]


def top_k_alpha(scores: Mapping[str, float], costs: NetworkCosts, budget: int,
                alpha: float = 0.2) -> list[str]:
  """MeDyate's rule (Eq. 10): the smallest K with ``alpha_K = B_mem / M_K <= alpha``."""
  order = ranked(scores)
  memory = 0
  for k, p in enumerate(order, 1):
    memory += costs[p].layer_memory
    if budget / memory <= alpha:
      return order[:k]
  return order


def save(path: str | Path, state: Mapping, costs: NetworkCosts, **meta) -> None:
  """Write an accumulated ranking (norm sums, RGN and LaRa per layer) as JSON."""
  chan = {p: np.asarray(v).tolist() for p, v in state["channel"].items()}
  layer = {p: float(v) for p, v in state["layer"].items()}
  doc = {"meta": meta, "channel": chan, "layer": layer,
         "layer_rgn": layer_rgn(state["channel"], costs), "lara": lara(state["layer"], costs)}
  Path(path).write_text(json.dumps(doc, indent=1))


def network_key(weights: str, bn: str, random_init_layers=()) -> dict:
  """What a ranking was computed on, for its ``meta``: the weights file (name and SHA-256 of its
  content), the BN mode and the layers not from those weights; ``check_network`` compares it with a
  run's network."""
  digest = ""
  if weights and Path(weights).is_file():
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
  return {"weights": Path(weights).name if weights else "", "weights_sha256": digest, "bn": bn,
          "random_init_layers": list(random_init_layers)}


def stale(doc: Mapping, key: Mapping) -> list[str]:
  """The fields of ``network_key`` in which the ranking's network differs from ``key``'s
  (a ranking written before the key was recorded differs in all of them)."""
  meta = doc.get("meta", {})
  return [k for k, v in key.items() if meta.get(k) != v]


class RankingMismatch(ValueError):
  """A ranking computed on another network than the one a run trains."""


def check_network(doc: Mapping, key: Mapping, *, source: str = "ranking") -> list[str]:
  """Refuse a ranking of another network; return the notes a run should print.

  The papers rank the layers of the network they fine-tune (TraDy Sec. 3.3, MeDyate Sec. 3.4), so
  a ranking whose weights (content hash) or randomly initialised layers differ from the run's is an
  error (``RankingMismatch``): rank this network with ``experiments/rank_layers.py``. Differences
  that keep the network (the BN mode of the ranking run) are notes. A run without pretrained
  weights (``key['weights'] == ''``) has no network a ranking could come from: any ranking is
  used with a note saying so.
  """
  diff = stale(doc, key)
  if not key.get("weights"):
    return [f"{source} of pretrained weights {doc.get('meta', {}).get('weights', '?')!r} used "
            "on a randomly initialised network"] if diff else []
  wrong = [k for k in ("weights", "weights_sha256", "random_init_layers") if k in diff]
  if wrong:
    meta = doc.get("meta", {})
    what = ", ".join(f"{k}: {meta.get(k)!r} vs {key[k]!r}" for k in wrong)
    raise RankingMismatch(f"{source} was computed on another network ({what}); rank this one "
                          "with `python experiments/rank_layers.py")
  return [f"{source} was ranked with --bn {doc['meta'].get('bn')}, this run uses --bn "
          f"{key['bn']}"] if "bn" in diff else []


def load(path: str | Path, costs: NetworkCosts | None = None) -> dict:
  """Read a ranking written by ``save``; with ``costs``, check it names every conv of the model.

  A ranking of the papers' architecture used on a network built without some of its layers (the
  int8 mbv2-w0.35 / proxyless-w0.3 have no feature-mix conv) keeps the layers the network has;
  ``doc['dropped']`` lists the others.
  """
  try:
    doc = json.loads(Path(path).read_text())
    layers = set(doc["layer_rgn"])
  except (OSError, ValueError, KeyError) as e:
    raise ValueError(f"{path}: not a trady_jax ranking file ({e})") from e
  if costs is None:
    return doc
  have = {l.path for l in costs.convs}
  if not have <= layers:
    raise ValueError(f"{path}: ranking layers do not match the model's conv layers "
                     f"(missing {sorted(have - layers)[:3]})")
  if layers != have:
    doc = {k: ({p: x for p, x in v.items() if p in have}
               if k in ("channel", "layer", "layer_rgn", "lara") else v) for k, v in doc.items()}
    doc["dropped"] = sorted(layers - have)
  return doc
