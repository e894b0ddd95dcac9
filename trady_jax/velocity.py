"""WACV-24 Velocity: NEq velocities of output neurons, under a weight-only budget.

The predecessor paper (method-spec 6) updates conv *output* channels (neurons) ranked by NEq
(Bragagnolo et al. 2022) velocity, measured between epochs on ``HELD_OUT`` images taken out of the
training split (``split_dataset(val_len=10)`` in its code):

* Eq. 1, similarity: ``phi^t_i = sum_x sum_n yhat^t_{i,x,n} yhat^{t-1}_{i,x,n}``, where
  ``yhat_{i,x} = y_{i,x} / ||y_{i,x}||`` is neuron ``i``'s output map on image ``x`` normalised
  over its positions ``n`` (a zero map stays zero);
* Eq. 2-3: ``dphi^t = phi^t - phi^{t-1}``, velocity ``v^t = dphi^t - mu v^{t-1}``, ``mu = MU``
  (``velocity_mu: 0.5``); ``phi^0 = v^0 = 0``, so ``v^1 = phi^1``;
* Eq. 5-7: neurons by decreasing ``|v_i| / C^w_i`` (velocity per parameter, ``C^w_i`` the
  neuron's weights ``kh kw C_in / g``), added while the running weight count stays within the
  budget (``allocation.fill_rule``);
* the first epoch, with no velocity yet, takes random neurons to the budget (the code's random
  initialisation).

The budget charges weights only, as the papers do for Velocity ("taking the weight component of
the budget"); the TraDy table's Velocity rows correspond to the weight part of the SU scheme
(``scheme_weight_budget``: 22,410 parameters beside B_mem = 27,946 on mbv2-w0.35). A trained
neuron needs the layer's whole input in the backward pass (``ops.output_selective_conv``):
``usage`` reports that input as stored activations, so ``units`` is the memory Velocity really
uses and ``charged_units`` what its budget counts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trady_jax import layers
from trady_jax import selection as sel
from trady_jax.costs import LayerCost, NetworkCosts

PyTree = Any
HELD_OUT = 10  # images held out of the training split for the NEq measurements
MU = 0.5       # NEq momentum mu_eq (Eq. 3)


@dataclasses.dataclass(frozen=True)
class OutputCost(LayerCost):
  """A conv layer costed per *output* channel, for the samplers: ``in_channels`` counts the
  layer's neurons (its output channels), ``weight`` is one neuron's parameter count, ``activation``
  is 0 (the budget is weight-only) and ``macs`` one neuron's weight-gradient MACs."""

  def channels(self, idx) -> sel.OutputChannels:
    return sel.OutputChannels(idx=jnp.asarray(idx, jnp.int32))


def output_cost(l: LayerCost) -> OutputCost:
  """``l`` costed per output channel: ``C^w_i = kh kw C_in / g`` (depthwise ``kh kw``)."""
  per_neuron = l.kernel_size[0] * l.kernel_size[1] * (l.in_channels // l.groups)
  fields = {f.name: getattr(l, f.name) for f in dataclasses.fields(l)}
  return OutputCost(**{**fields, "in_channels": l.out_channels, "weight": per_neuron,
                       "activation": 0, "macs": per_neuron * l.out_hw[0] * l.out_hw[1]})


def output_costs(costs: NetworkCosts) -> NetworkCosts:
  """Every conv layer of ``costs`` as an ``OutputCost`` (the pool of Velocity's sampler)."""
  return NetworkCosts(tuple(output_cost(l) for l in costs.convs))


def usage(selection: PyTree, costs: NetworkCosts) -> dict[str, float]:
  """``NetworkCosts.usage`` for an output-channel selection, with the whole input of every layer
  that trains a neuron counted as stored activations (``charged_units``: the weights alone)."""
  w = a = m = 0
  for path, k in sel.counts(selection).items():
    l = costs[path]
    if k and l.charged:
      o = output_cost(l)
      w, m, a = w + k * o.weight, m + k * o.macs, a + l.activation * l.in_channels
  t = costs.totals()
  return {"units": w + a, "charged_units": w, "weights": w, "activations": a, "macs": m,
          "weight_sparsity": 1 - w / t["weights"], "activation_sparsity": 1 - a / t["activations"],
          "flops_saved": 1 - m / t["macs"]}


def scheme_weight_budget(arch: str, scheme: int, net: NetworkCosts) -> int:
  """The weights of MIT SU scheme ``scheme`` of ``arch``: Velocity's budget beside that scheme's
  ``B_mem`` in the papers' tables (the WACV code's values, method-spec 3: 22,410 / 55,920 /
  81,792 parameters for mbv2-w0.35's schemes 1 / 3 / 5)."""
  from trady_jax.models import schemes  # local: the models package is heavy
  return int(net.usage(schemes.scheme_counts(arch, scheme, net))["weights"])


def held_out(source, n: int = HELD_OUT, *, seed: int = 0):
  """``(training rest, held-out n images)`` of a training source, the held-out ones at random."""
  from trady_jax.data.folder import Subset  # local: the data package imports grain
  if len(source) <= n:
    raise ValueError(f"{len(source)} training images leave none after holding out {n}")
  order = np.random.default_rng([seed, 0x7e1]).permutation(len(source))
  return Subset(source, np.sort(order[n:])), Subset(source, np.sort(order[:n]))


def normalized_outputs(model: nn.Module, variables: PyTree, images: jax.Array
                       ) -> dict[str, jax.Array]:
  """``{kernel path: yhat (N, H*W, C)}``: every charged layer's output maps on ``images`` (a dense
  layer's: ``(N, tokens, C)``), each normalised over its positions (Eq. 1's ``yhat``)."""
  out = {}

  def interceptor(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    m = context.module
    if context.method_name == "__call__" and (isinstance(m, layers.SelectiveConv) or (
        isinstance(m, layers.SelectiveDense) and m.charged)):
      y2 = y.reshape(y.shape[0], -1, y.shape[-1]).astype(jnp.float32)
      norm = jnp.sqrt(jnp.sum(y2 * y2, axis=1, keepdims=True))
      out["/".join(context.module.path) + "/kernel"] = jnp.where(
          norm > 0, y2 / jnp.where(norm > 0, norm, 1), 0)
    return y

  with nn.intercept_methods(interceptor):
    model.apply(variables, images)
  return out


def init_state(paths: Sequence[str], shapes: Mapping[str, Sequence[int]]) -> dict:
  """No measurement yet: previous outputs, ``phi`` and ``v`` (flat over ``paths``' neurons) zero."""
  units = sum(shapes[p][-1] for p in paths)
  return {"outputs": [jnp.zeros(shapes[p], jnp.float32) for p in paths],
          "phi": jnp.zeros((units,), jnp.float32), "velocity": jnp.zeros((units,), jnp.float32),
          "measured": jnp.zeros((), jnp.int32)}


def update(state: dict, outputs: Sequence[jax.Array], mu: float = MU) -> dict:
  """One NEq measurement (Eq. 1-3) from the normalised outputs of the current network.

  The first measurement only stores the outputs; from the second on ``phi`` is the similarity
  to the previous outputs and ``v = (phi - phi_prev) - mu v_prev``.
  """
  phi = jnp.concatenate([jnp.sum(y * prev, axis=(0, 1))
                         for y, prev in zip(outputs, state["outputs"])])
  first = state["measured"] == 0
  velocity = (phi - state["phi"]) - mu * state["velocity"]
  return {"outputs": list(outputs), "phi": jnp.where(first, state["phi"], phi),
          "velocity": jnp.where(first, state["velocity"], velocity),
          "measured": state["measured"] + 1}


def scores(state: dict, pool: Sequence[LayerCost]) -> jax.Array:
  """Eq. 7: ``|v_i| / C^w_i`` over the pool's neurons (highest first is Velocity's order)."""
  cost = jnp.concatenate([jnp.full((l.in_channels,), l.weight, jnp.float32) for l in pool])
  return jnp.abs(state["velocity"]) / cost


class NEq:
  """NEq measurements of a model on fixed held-out images, for ``selector.Selector``.

  ``template``: the model's variables (``params``, and ``batch_stats`` with BatchNorm), for
  shapes; ``images()`` gives the held-out images, loaded on first use.
  """

  def __init__(self, model: nn.Module, paths: Sequence[str], images: Callable[[], Any],
               template: PyTree):
    self.model, self.paths, self._images, self._x = model, list(paths), images, None
    self.template = template
    self._measure = jax.jit(lambda v, x: [normalized_outputs(model, v, x)[p] for p in self.paths])

  @property
  def images(self) -> jax.Array:
    if self._x is None:  # images as float32; a text model's token ids as they are
      x = jnp.asarray(self._images())
      self._x = x if jnp.issubdtype(x.dtype, jnp.integer) else x.astype(jnp.float32)
    return self._x

  def init_state(self) -> dict:
    shapes = jax.eval_shape(lambda v, x: normalized_outputs(self.model, v, x), self.template,
                            jax.ShapeDtypeStruct(self.images.shape, self.images.dtype))
    return init_state(self.paths, {p: s.shape for p, s in shapes.items()})

  def observe(self, state: dict, variables: PyTree) -> dict:
    """``update`` with the outputs of the network ``variables`` on the held-out images."""
    return update(state, self._measure(variables, self.images))


def from_source(model: nn.Module, costs: NetworkCosts, source, batches: Callable, params: PyTree,
                batch_stats: PyTree | None = None, *, seed: int = 0) -> NEq:
  """``NEq`` of every conv layer on the images of ``source`` (the test transform, one batch)."""
  images = lambda: next(iter(batches(source, len(source), train=False, seed=seed, epoch=0)))["image"]
  template = {"params": params} if batch_stats is None else {"params": params,
                                                               "batch_stats": batch_stats}
  return NEq(model, [l.path for l in costs.convs], images, template)
