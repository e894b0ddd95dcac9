"""Flax NNX layers driven by a selection: ``SelectiveConv`` and ``SelectiveDense`` for NNX models.

The NNX twins of ``layers``: each holds its ``kernel`` / ``bias`` as ``nnx.Param`` and its
selection leaves as a ``Selection`` variable (``None``: a plain layer), and runs the Linen layer's
pure function, so the backward pass is the same ``ops.selective_conv`` / ``ops.selective_dense``
(only ``x[..., idx]`` stored, paper Eq. 2).

The rest of the library sees an NNX model through its parameters as a pure dict, ``params(model)``:
``selection.build``, the samplers and ``sparse_update`` work on that tree as on Linen params;
``costs.trace(model)`` and ``steps.make_train_step(model, tx)`` accept the model itself;
``forward(model)`` is its pure ``(params, selection, x) -> y``; ``assign(model, params)`` writes
trained parameters back.

>>> import jax, jax.numpy as jnp
>>> from flax import nnx
>>> from trady_jax import selection as sel
>>> conv = SelectiveConv(3, 4, (3, 3), rngs=nnx.Rngs(0))
>>> p = params(conv)
>>> s = sel.build(p, {"kernel": sel.Channels(jnp.array([0, 2]))})
>>> g = jax.grad(lambda p: forward(conv)(p, s, jnp.ones((1, 8, 8, 3))).sum())(p)
>>> [int(jnp.abs(g["kernel"][:, :, c]).sum() > 0) for c in range(3)], float(g["bias"].sum())
([1, 0, 1], 0.0)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from trady_jax import layers
from trady_jax.costs import LayerCall

PyTree = Any
# NNX normalisation layers: scale / shift trained whole, not charged (``costs.NORMALIZATION``).
NORMALIZATION = (nnx.BatchNorm, nnx.LayerNorm, nnx.GroupNorm, nnx.RMSNorm)
_CALLS: list[list] = []  # active ``trace_calls`` recorders


class Selection(nnx.Variable):
  """A layer's selection leaves, ``{'kernel': marker, 'bias': marker}`` (``selection``), or
  ``None``: no selection, a plain fully differentiable layer."""


class _Selective(nnx.Module):
  """Parameters and selection of one layer; ``_linen()`` is the Linen layer that computes it."""

  def _linen(self):
    raise NotImplementedError

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel.get_value()
    chex.assert_axis_dimension(x, -1, kernel.shape[-2] * getattr(self, "feature_group_count", 1))
    variables = {"params": {"kernel": kernel}}
    if self.bias is not None:
      variables["params"]["bias"] = self.bias.get_value()
    if self.selection.get_value() is not None:
      variables["selection"] = self.selection.get_value()
    linen = self._linen()
    y = linen.apply(variables, x)
    for calls in _CALLS:
      calls.append((self, linen, tuple(x.shape), tuple(y.shape)))
    return y


class SelectiveConv(_Selective):
  """2-D convolution (NHWC, HWIO kernel) whose trained input channels come from its ``Selection``
  (``layers.SelectiveConv``, BatchNorm folded into the bias; a following ``nnx.BatchNorm`` is a
  layer of its own, uncharged)."""

  def __init__(self, in_features: int, out_features: int,
               kernel_size: Sequence[int] = (3, 3), strides: Sequence[int] = (1, 1),
               padding: Any = "SAME_TORCH", feature_group_count: int = 1, use_bias: bool = True,
               *, kernel_init: Callable = nnx.initializers.lecun_normal(), rngs: nnx.Rngs):
    g = feature_group_count
    if in_features % g or out_features % g:
      raise ValueError(f"{in_features} input / {out_features} output channels are not divisible "
                       f"by feature_group_count={g}")
    self.features, self.kernel_size, self.strides = out_features, tuple(kernel_size), tuple(strides)
    self.padding, self.feature_group_count = padding, g
    self.kernel = nnx.Param(kernel_init(rngs.params(),
                                        (*self.kernel_size, in_features // g, out_features)))
    self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else None
    self.selection = Selection(None)

  def _linen(self) -> layers.SelectiveConv:
    return layers.SelectiveConv(self.features, self.kernel_size, self.strides, self.padding,
                                self.feature_group_count, self.bias is not None)


class SelectiveDense(_Selective):
  """Dense layer ``x @ W + b`` whose trained input features come from its ``Selection``
  (``charged``: as ``layers.SelectiveDense``; ``False`` for a classifier head)."""

  def __init__(self, in_features: int, out_features: int, use_bias: bool = True, *,
               kernel_init: Callable = nnx.initializers.lecun_normal(), charged: bool = True,
               rngs: nnx.Rngs):
    self.features, self.charged = out_features, charged
    self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features)))
    self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else None
    self.selection = Selection(None)

  def _linen(self) -> layers.SelectiveDense:
    return layers.SelectiveDense(self.features, self.bias is not None, charged=self.charged)


def params(model: nnx.Module) -> dict:
  """The model's ``nnx.Param`` values as a pure dict: the tree selections mirror.

  >>> params(SelectiveDense(2, 3, rngs=nnx.Rngs(0)))["kernel"].shape
  (2, 3)
  """
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _at(tree: PyTree, path: tuple) -> PyTree:
  for key in path:
    tree = tree[key]
  return tree


def assign(model: nnx.Module, new_params: PyTree, selection: PyTree | None = ...) -> None:
  """Write ``new_params`` (a ``params(model)`` tree) into the model, in place; with
  ``selection`` also every selective layer's ``Selection`` (``None``: plain layers).

  >>> dense = SelectiveDense(2, 3, rngs=nnx.Rngs(0))
  >>> assign(dense, {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)})
  >>> dense(jnp.ones((1, 2))).tolist()
  [[2.0, 2.0, 2.0]]
  """
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Param):
      node.set_value(_at(new_params, path))
    elif isinstance(node, _Selective) and selection is not ...:
      node.selection.set_value(None if selection is None else _at(selection, path))


def forward(model: nnx.Module) -> Callable[[PyTree, PyTree | None, jax.Array], jax.Array]:
  """The pure function ``(params, selection, x) -> model(x)`` of an NNX model (``selection``
  ``None``: plain autodiff everywhere), for ``jax.grad`` / ``jax.jit``. The model is not
  changed: an ``nnx.BatchNorm`` in training mode updates its statistics in a copy only, so run
  it with ``use_running_average=True`` (the papers' folded BatchNorm).

  >>> dense = SelectiveDense(2, 3, rngs=nnx.Rngs(0))
  >>> p = {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}
  >>> forward(dense)(p, None, jnp.ones((1, 2))).tolist()
  [[3.0, 3.0, 3.0]]
  """
  graphdef, state = nnx.split(model)

  def apply(p: PyTree, selection: PyTree | None, x: jax.Array) -> jax.Array:
    m = nnx.merge(graphdef, jax.tree.map(lambda v: v, state))  # Variables of this trace
    assign(m, p, selection)
    return m(x)

  return apply


def trace_calls(model: nnx.Module, x: jax.ShapeDtypeStruct, **call_kwargs
                ) -> tuple[list[LayerCall], dict[str, Any]]:
  """Selective layer calls (``jax.eval_shape`` of the model) and parameter owners, for
  ``costs.trace``."""
  graphdef, state = nnx.split(model)
  calls, found = [], []

  def run(state, x):
    m = nnx.merge(graphdef, state)
    names = {id(n): "/".join(map(str, p)) for p, n in nnx.iter_graph(m)
             if isinstance(n, _Selective)}
    _CALLS.append(found)
    try:
      m(x, **call_kwargs)
    finally:
      _CALLS.remove(found)
    calls.extend(LayerCall(names[id(n)] + "/kernel", isinstance(n, SelectiveConv), linen, xs, ys)
                 for n, linen, xs, ys in found)

  jax.eval_shape(run, state, x)
  nodes = dict(nnx.iter_graph(model))
  owners = {"/".join(map(str, p)): nodes[p[:-1]] for p, n in nnx.iter_graph(model)
            if isinstance(n, nnx.Param)}
  return calls, owners
