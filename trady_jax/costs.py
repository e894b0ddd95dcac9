"""The memory model (paper Eq. 3-4), read off the model itself.

For input channel ``c`` of a layer with kernel ``(kh, kw, C_in / g, C_out)``, input ``H x W`` and
output ``H' x W'``, per sample:

* weight cost      ``C^W_c = (C_out / g) * kh * kw``   (``C_out*k*k``; depthwise ``k*k``);
* activation cost  ``C^A_c = H * W``;
* space            ``(Theta_space)_c = C^W_c + C^A_c``                         (Eq. 3);
* time             ``(Theta_time)_c = kh * kw * (C_out / g) * H' * W'``        (Eq. 4, dW MACs).

For input feature ``c`` of a dense (linear) layer with kernel ``(F_in, F_out)`` applied to ``T``
tokens per sample (a transformer's sequence or patches; 1 for a pooled vector), the natural
reading of Eq. 3-4 for linear layers (method-spec 1.2, not stated by the papers):

* ``C^W_c = F_out``,  ``C^A_c = T``,  ``(Theta_time)_c = F_out * T``.

A budget ``B_mem`` is a count of tensor elements (units): the sum of ``Theta_space`` over the
selected channels of charged layers: every conv, and every ``SelectiveDense`` but a classifier
head (``charged=False``). Biases, BatchNorm / LayerNorm scale and shift and the classifier are
not charged, as in the papers. Shapes come from ``jax.eval_shape`` of the
model (Linen or NNX), never from hand-written tables; a parametrised layer that is neither
selective nor a normalisation layer is refused (``check_accounted``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from trady_jax import batchnorm, layers, ops
from trady_jax import selection as sel


@dataclasses.dataclass(frozen=True)
class LayerCost:
  """Per-input-channel costs of one selective layer (per sample).

  Attributes:
    path: the kernel's leaf path in the params, e.g. ``'blocks_3/depthwise/kernel'``.
    index: position among charged layers in forward order, ``-1`` for an uncharged one.
    kind: ``'conv' | 'pointwise' | 'depthwise' | 'grouped' | 'dense'``.
    in_channels, out_channels, groups: channel shape of the layer.
    kernel_size, stride: spatial hyper-parameters (``(1, 1)`` for dense).
    in_hw, out_hw: spatial input / output size (dense: tokens per sample, 1).
    weight, activation, macs: ``C^W_c``, ``C^A_c`` and ``(Theta_time)_c`` of one input channel.
    charged: counts towards ``B_mem`` (convs, dense layers) or not (a classifier head).
    has_bn: a BatchNorm layer follows it (``SelectiveConv.bn`` not ``'folded'``); never charged.
  """
  path: str
  index: int
  kind: str
  in_channels: int
  out_channels: int
  groups: int
  kernel_size: tuple[int, int]
  stride: tuple[int, int]
  in_hw: tuple[int, int]
  out_hw: tuple[int, int]
  weight: int
  activation: int
  macs: int
  charged: bool
  has_bn: bool = False

  @property
  def memory(self) -> int:
    """``(Theta_space)_c``: units to train one input channel (Eq. 3)."""
    return self.weight + self.activation

  @property
  def layer_memory(self) -> int:
    """Units to train the whole layer."""
    return self.memory * self.in_channels

  def channels(self, idx) -> sel.Channels:
    """A ``Channels`` selection leaf for this kernel."""
    depthwise = self.kind == "depthwise"
    return sel.Channels(idx=jnp.asarray(idx, jnp.int32), axis=-1 if depthwise else -2,
                        multiplier=self.out_channels // self.in_channels if depthwise else 1)


@dataclasses.dataclass(frozen=True)
class NetworkCosts:
  """All selective layers of a model in forward order, with aggregate helpers."""
  layers: tuple[LayerCost, ...]

  @property
  def charged(self) -> tuple[LayerCost, ...]:
    """The layers ``B_mem`` charges, in forward order (the pool every strategy draws from)."""
    return tuple(l for l in self.layers if l.charged)

  @property
  def convs(self) -> tuple[LayerCost, ...]:
    """``charged``, by the name it has in a CNN (its convolutions)."""
    return self.charged

  def head_weights(self) -> int:
    """Weights of the uncharged layers (the classifier head), which full fine-tuning also trains."""
    return sum(l.weight * l.in_channels for l in self.layers if not l.charged)

  def __getitem__(self, path: str) -> LayerCost:
    for l in self.layers:
      if l.path == path:
        return l
    raise KeyError(f"unknown layer {path!r}; known: {[l.path for l in self.layers]}")

  def totals(self) -> dict[str, int]:
    """Whole-network ``weights``, ``activations``, ``total`` units and dW ``macs`` (charged layers)."""
    w = sum(l.weight * l.in_channels for l in self.convs)
    a = sum(l.activation * l.in_channels for l in self.convs)
    m = sum(l.macs * l.in_channels for l in self.convs)
    return {"weights": w, "activations": a, "total": w + a, "macs": m}

  def usage(self, counts: Mapping[str, int]) -> dict[str, float]:
    """Budget use and efficiency of a selection given as ``{path: selected channels}``.

    Returns (method-spec 4.2):
      units, weights, activations, macs: totals over the selected channels of charged layers;
      weight_sparsity = 1 - sum_S C^W / sum_all C^W;
      activation_sparsity = 1 - sum_S C^A / sum_all C^A;
      flops_saved = 1 - sum_S Theta_time / sum_all Theta_time.

    >>> from trady_jax.models.tiny import TinyCNN
    >>> c = trace(TinyCNN(num_classes=5), (1, 32, 32, 3))
    >>> c.totals()["total"], c["first_conv/kernel"].memory  # 8*3*3 + 32*32 per channel
    (28552, 1096)
    >>> u = c.usage({"first_conv/kernel": 3})
    >>> u["units"], round(u["activation_sparsity"], 3)
    (3288, 0.887)
    """
    w = a = m = 0
    for path, k in counts.items():
      l = self[path]
      if not l.charged:
        continue
      if k > l.in_channels:
        raise ValueError(f"{path}: {k} channels selected of {l.in_channels}")
      w, a, m = w + k * l.weight, a + k * l.activation, m + k * l.macs
    t = self.totals()
    return {"units": w + a, "weights": w, "activations": a, "macs": m,
            "weight_sparsity": 1 - w / t["weights"],
            "activation_sparsity": 1 - a / t["activations"],
            "flops_saved": 1 - m / t["macs"]}

  def table(self) -> str:
    """A per-layer text table (index, path, kind, shapes, per-channel and layer costs)."""
    head = (f"{'#':>3} {'layer':<34} {'kind':<9} {'Cin':>5} {'Cout':>5} {'k':>3} {'s':>2} "
            f"{'HxW in':>9} {'C^W':>6} {'C^A':>6} {'layer mem':>10} {'dW MACs/ch':>11}")
    rows = [head, "-" * len(head)]
    for l in self.layers:
      rows.append(
          f"{l.index if l.charged else '-':>3} {l.path.removesuffix('/kernel'):<34} {l.kind:<9} "
          f"{l.in_channels:>5} {l.out_channels:>5} {l.kernel_size[0]:>3} {l.stride[0]:>2} "
          f"{'%dx%d' % l.in_hw:>9} {l.weight:>6} {l.activation:>6} "
          f"{l.layer_memory if l.charged else 0:>10} {l.macs:>11}")
    t = self.totals()
    rows.append(f"charged layers: {len(self.convs)}  weights: {t['weights']:,}  "
                f"activations: {t['activations']:,}  total: {t['total']:,} units  "
                f"dW MACs: {t['macs']:,}")
    return "\n".join(rows)


def to_bytes(weights: int, activations: int, *, batch: int = 1, dtype: Any = jnp.float32) -> int:
  """Bytes to hold ``weights`` weight units and ``activations`` per-sample units for a batch.

  >>> to_bytes(10, 5, batch=32)  # (10 + 5 * 32) float32 values
  680
  """
  return int((weights + activations * batch) * jnp.dtype(dtype).itemsize)


# Normalisation layers: their scale / shift are trained whole and not charged (the papers charge
# conv weights and activations only, method-spec 1.2; ``selection.ALWAYS``).
NORMALIZATION = (batchnorm.BatchNorm, nn.BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm,
                 layers.LayerNorm)
# Lookup tables and learned tensors (embeddings, class tokens, relative position biases): not
# charged, frozen under a selection (``layers.Embed``, ``layers.Learned``).
UNCHARGED = NORMALIZATION + (layers.Embed, layers.Learned)


class LayerCall(NamedTuple):
  """One call of a selective layer seen while tracing shapes.

  ``layer`` carries the hyper-parameters (``features``, and for convs ``kernel_size``, ``strides``,
  ``feature_group_count``, ``bn``); ``conv``: a ``SelectiveConv`` (else a ``SelectiveDense``).
  """
  path: str
  conv: bool
  layer: Any
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]


def check_accounted(calls: Sequence[LayerCall], owners: Mapping[str, Any],
                    normalization: tuple[type, ...] = UNCHARGED) -> None:
  """Refuse a model with a parameter that no selective, normalisation or embedding layer owns.

  ``owners``: ``{parameter leaf path: the module holding it}``. A plain ``nn.Conv`` / ``nn.Dense``
  would compute its weight gradient and store its input whatever the selection, outside ``B_mem``.
  """
  selective = {c.path.removesuffix("kernel") for c in calls}
  for path, module in owners.items():
    owner = path[:path.rfind("/") + 1]
    if owner not in selective and not isinstance(module, normalization):
      raise ValueError(
          f"{path}: a parameter of {type(module).__name__} {owner.rstrip('/')!r}, which the memory "
          "model cannot charge; use trady_jax.layers.SelectiveConv / SelectiveDense (NNX: "
          "trady_jax.nnx_layers) for convolution and dense layers, or a normalisation layer "
          f"({', '.join(sorted({n.__name__ for n in normalization}))})")


def _linen_calls(model: nn.Module, x: jax.ShapeDtypeStruct,
                 **apply_kwargs) -> tuple[list[LayerCall], dict[str, Any]]:
  """Selective layer calls and parameter owners of a Linen model (``jax.eval_shape`` of init)."""
  calls, modules, roots = [], {}, []

  def interceptor(next_fun, args, kwargs, context):
    m = context.module
    if not roots:  # the first call intercepted is the model's own
      roots.append(m.scope.root)
    out = next_fun(*args, **kwargs)
    if m.scope.root is not roots[0]:  # a layer applied apart (a recomputation), not the model's
      return out
    modules["/".join(m.path)] = m
    if context.method_name == "__call__" and isinstance(
        m, (layers.SelectiveConv, layers.SelectiveDense)):
      calls.append(LayerCall("/".join(m.path) + "/kernel", isinstance(m, layers.SelectiveConv), m,
                             tuple(args[0].shape), tuple(out.shape)))
    return out

  with nn.intercept_methods(interceptor):
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **apply_kwargs), x)
  owners = {p: modules[p.rpartition("/")[0]]
            for p in sel.leaf_paths(variables.get("params", {}))}
  return calls, owners


def trace(model, input_shape: Sequence[int] | jax.ShapeDtypeStruct = (1, 128, 128, 3), *,
          input_dtype: Any = jnp.float32,
          **apply_kwargs) -> NetworkCosts:
  """Costs of every ``SelectiveConv`` / ``SelectiveDense`` in ``model`` for inputs of ``input_shape``
  (``input_dtype``: ``jnp.int32`` for a text model's token ids), or of one
  ``jax.ShapeDtypeStruct`` (``models.registry.example_input``).

  ``model``: a Linen module, or a Flax NNX module built from ``trady_jax.nnx_layers``. Only shapes
  are traced (``jax.eval_shape``): nothing is computed. Every other parameter must belong to a
  normalisation layer (``NORMALIZATION``: trained whole, not charged); a model with any other
  parametrised layer (a plain ``nn.Conv``) is refused, so no budget leaves a layer out.

  >>> from trady_jax.models.tiny import TinyCNN
  >>> c = trace(TinyCNN(num_classes=5), (1, 32, 32, 3))
  >>> c.convs[0].path, c.convs[0].weight, c.convs[0].activation  # C^W_c = 8*3*3, C^A_c = 32*32
  ('first_conv/kernel', 72, 1024)
  >>> class Plain(nn.Module):
  ...   @nn.compact
  ...   def __call__(self, x):
  ...     return layers.SelectiveDense(2, name="head")(nn.Conv(4, (3, 3), name="stem")(x))
  >>> trace(Plain(), (1, 8, 8, 3))
  Traceback (most recent call last):
  ValueError: stem/bias: a parameter of Conv 'stem', which the memory model cannot charge; ...
  """
  x = input_shape if isinstance(input_shape, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct(
      tuple(input_shape), input_dtype)
  if isinstance(model, nnx.Module):
    from trady_jax import nnx_layers  # local: nnx_layers' cost needs only this dispatch
    calls, owners = nnx_layers.trace_calls(model, x, **apply_kwargs)
    check_accounted(calls, owners, UNCHARGED + nnx_layers.NORMALIZATION)
  else:
    calls, owners = _linen_calls(model, x, **apply_kwargs)
    check_accounted(calls, owners)
  if not calls:
    raise ValueError("the model has no SelectiveConv / SelectiveDense layer to cost")
  return NetworkCosts(tuple(_layer_costs(calls)))


def _layer_costs(calls: Sequence[LayerCall]) -> list[LayerCost]:
  """Eq. 3-4 per input channel of each traced layer, charged layers numbered in forward order."""
  costs, conv_index = [], 0
  for path, conv, m, xs, ys in calls:
    if conv:
      g, (kh, kw) = m.feature_group_count, tuple(m.kernel_size)
      cin, cout = xs[-1], m.features
      kind = ops.conv_kind((kh, kw, cin // g, cout), g)
      in_hw, out_hw = (xs[1], xs[2]), (ys[1], ys[2])
      w = (cout // g) * kh * kw
      costs.append(LayerCost(path, conv_index, kind, cin, cout, g, (kh, kw), tuple(m.strides),
                             in_hw, out_hw, w, in_hw[0] * in_hw[1], w * out_hw[0] * out_hw[1],
                             True, m.bn != "folded"))
      conv_index += 1
    else:
      tokens = int(np.prod(xs[1:-1])) if len(xs) > 2 else 1
      cout, charged = m.features, bool(m.charged)
      costs.append(LayerCost(path, conv_index if charged else -1, "dense", xs[-1], cout, 1,
                             (1, 1), (1, 1), (tokens, 1), (tokens, 1), cout, tokens,
                             cout * tokens, charged))
      conv_index += charged
  return costs
