"""Flax (Linen) layers driven by a selection: ``SelectiveConv`` and ``SelectiveDense``.

Each layer reads its own leaves of the optional ``'selection'`` variable collection, which mirrors
``'params'``:

    model.apply({'params': params, 'selection': selection}, x)

* no ``'selection'`` collection: a plain, fully differentiable layer (inference, full fine-tuning);
* ``Channels``: the kernel goes through ``ops.selective_conv`` / ``ops.selective_dense``, which
  store only ``x[..., idx]`` and compute the kernel gradient only for those channels;
* ``OutputChannels``: ``ops.output_selective_conv`` / ``ops.output_selective_dense`` (the whole
  input stored, the kernel gradient of the selected output channels only);
* ``FROZEN``: the parameter is wrapped in ``stop_gradient``; the layer still passes the input
  gradient on (which needs only the kernel), and stores no input activation;
* ``ALL``: trained whole, plain autodiff.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from trady_jax import batchnorm, ops
from trady_jax import selection as sel

Initializer = Callable[..., jax.Array]


def _gate(module: nn.Module, name: str, value: jax.Array) -> tuple[jax.Array, Any]:
  """The parameter as the layer should use it, and its selection leaf (None: no selection)."""
  if not module.has_variable("selection", name):
    return value, None
  s = module.get_variable("selection", name)
  if isinstance(s, (sel.AllChannels, sel.Channels)):
    return value, s
  return jax.lax.stop_gradient(value), s


def explicit_padding(kernel_size: Sequence[int], padding) -> ops.Padding:
  """``'SAME_TORCH'`` (symmetric ``k // 2``, PyTorch's convention), an int, or explicit pairs."""
  if padding == "SAME_TORCH":
    return tuple((k // 2, k // 2) for k in kernel_size)
  if isinstance(padding, int):
    return tuple((padding, padding) for _ in kernel_size)
  if padding == "VALID":
    return tuple((0, 0) for _ in kernel_size)
  return tuple(tuple(int(v) for v in p) for p in padding)


class SelectiveConv(nn.Module):
  """2-D convolution (NHWC, HWIO kernel) whose trained input channels come from the selection.

  Attributes:
    features: output channels.
    kernel_size: ``(kh, kw)``.
    strides: ``(sh, sw)``.
    padding: ``'SAME_TORCH'`` (symmetric ``k // 2``), ``'VALID'``, an int, or explicit pairs.
    feature_group_count: 1, or the input channel count for a depthwise convolution.
    use_bias: add a bias (BatchNorm folded into conv + bias, as in the pretrained MCU nets).
    bn: ``batchnorm.MODES``: ``'folded'`` (the bias above), or a ``batchnorm.BatchNorm`` named
      ``bn`` after the conv (``'train'`` / ``'shift'``), whose shift replaces the conv bias.
  """
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  padding: Any = "SAME_TORCH"
  feature_group_count: int = 1
  use_bias: bool = True
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()
  bn: str = "folded"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c_in = x.shape[-1]
    g = self.feature_group_count
    if c_in % g or self.features % g:
      raise ValueError(f"{self.name}: {c_in} input / {self.features} output channels are not "
                       f"divisible by feature_group_count={g}")
    kshape = (*self.kernel_size, c_in // g, self.features)
    kernel, s = _gate(self, "kernel", self.param("kernel", self.kernel_init, kshape))
    strides = tuple(self.strides)
    padding = explicit_padding(self.kernel_size, self.padding)
    if isinstance(s, sel.OutputChannels):
      y = ops.output_selective_conv(x, kernel, s.idx, strides, padding, g)
    elif isinstance(s, sel.Channels):
      y = ops.selective_conv(x, kernel, s.idx, strides, padding, g)
    else:
      y = ops.conv2d(x, kernel, strides, padding, g)
    if batchnorm.check_mode(self.bn) != "folded":
      return batchnorm.BatchNorm(self.bn, name="bn")(y)
    if self.use_bias:
      bias, _ = _gate(self, "bias", self.param("bias", self.bias_init, (self.features,)))
      y = y + bias
    return y


class SelectiveDense(nn.Module):
  """Dense layer ``x @ W + b`` (``W``: ``(F_in, F_out)``, over the last axis of ``x``) whose
  trained input features come from the selection.

  Attributes:
    features: output features.
    use_bias: add a bias (never charged).
    charged: its input features count towards ``B_mem`` (``costs``): ``F_out`` weights plus one
      stored activation per token each, the linear-layer reading of Eq. 3. ``False`` for a
      classifier head, which every strategy trains whole and the papers do not charge.
  """
  features: int
  use_bias: bool = True
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()
  charged: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel, s = _gate(self, "kernel",
                      self.param("kernel", self.kernel_init, (x.shape[-1], self.features)))
    if isinstance(s, sel.OutputChannels):
      y = ops.output_selective_dense(x, kernel, s.idx)
    elif isinstance(s, sel.Channels):
      y = ops.selective_dense(x, kernel, s.idx)
    else:
      y = x @ kernel
    if self.use_bias:
      bias, _ = _gate(self, "bias", self.param("bias", self.bias_init, (self.features,)))
      y = y + bias
    return y


class Embed(nn.Module):
  """A lookup table ``embedding[ids]`` (token, position or segment embeddings).

  Not charged, as every parameter outside the linear / conv layers; trained whole without a
  selection (full fine-tuning) and frozen under one (its leaf is ``FROZEN`` unless a strategy's
  ``trainable`` names it): ``stop_gradient`` then keeps autodiff from building its
  ``(num_embeddings, features)`` gradient.
  """
  num_embeddings: int
  features: int
  embedding_init: Initializer = nn.initializers.normal(0.02)

  @nn.compact
  def __call__(self, ids: jax.Array) -> jax.Array:
    table, _ = _gate(self, "embedding", self.param(
        "embedding", self.embedding_init, (self.num_embeddings, self.features)))
    return jnp.take(table, ids, axis=0)


class Learned(nn.Module):
  """One learned tensor ``value`` of ``shape`` (a class token, position embeddings, a relative
  position bias table): uncharged and gated as ``Embed``. Call it with no argument."""
  shape: tuple[int, ...]
  init: Initializer = nn.initializers.truncated_normal(0.02)

  @nn.compact
  def __call__(self) -> jax.Array:
    value, _ = _gate(self, "value", self.param("value", self.init, tuple(self.shape)))
    return value


class Normalized(NamedTuple):
  """A layer norm's output in parts, ``x_hat * scale + bias`` (``output()``), as ``LayerNorm``
  returns it with ``parts=True``. A sublayer that recomputes its projections in the backward pass
  (``attention.recompute_through``) takes these parts and applies the affine map inside its
  recomputation: it then keeps the norm's ``x_hat``, which the norm's backward keeps anyway,
  instead of a second copy of the same activations (the norm's output)."""
  x_hat: jax.Array
  scale: jax.Array
  bias: jax.Array

  def output(self) -> jax.Array:
    """The norm's output."""
    return self.x_hat * self.scale + self.bias


class LayerNorm(nn.Module):
  """Layer normalisation over the last axis, ``(x - mean) / sqrt(var + epsilon) * scale + bias``,
  whose scale and shift are gated like every other leaf: trained whole without a selection,
  and under one only where a strategy's ``trainable`` names them (not charged either way). A
  frozen norm passes its input gradient on without building a scale / shift gradient, so the
  backward pass stops at the shallowest trained layer (``nn.LayerNorm`` would pull it to the
  first norm of the network). ``parts=True`` returns the output as ``Normalized`` parts."""
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array, *, parts: bool = False) -> jax.Array | Normalized:
    c = x.shape[-1]
    scale, _ = _gate(self, "scale", self.param("scale", nn.initializers.ones_init(), (c,)))
    bias, _ = _gate(self, "bias", self.param("bias", nn.initializers.zeros_init(), (c,)))
    out = Normalized(normalize(x, self.epsilon), scale, bias)
    return out if parts else out.output()


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
  """``normalize(x) * scale + bias``: the backward keeps ``x_hat`` (shared by the scale gradient
  and ``normalize``'s backward) and ``1 / sqrt(var + epsilon)``."""
  return normalize(x, epsilon) * scale + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def normalize(x: jax.Array, epsilon: float) -> jax.Array:
  """``x_hat = (x - mean) / sqrt(var + epsilon)`` over the last axis.

  The backward keeps ``x_hat`` and ``r = 1 / sqrt(var + epsilon)`` (one value per token) and
  computes ``dx = r * (g - mean(g) - x_hat * mean(g * x_hat))``: one ``x``-sized residual where
  autodiff keeps two (the centred input and ``x_hat``)."""
  return _normalize_fwd(x, epsilon)[0]


def _normalize_fwd(x, epsilon):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  centred = x - mean
  r = jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + epsilon)
  x_hat = centred * r
  return x_hat, (x_hat, r)


def _normalize_bwd(epsilon, residuals, g):
  x_hat, r = residuals
  return (r * (g - jnp.mean(g, axis=-1, keepdims=True)
               - x_hat * jnp.mean(g * x_hat, axis=-1, keepdims=True)),)


normalize.defvjp(_normalize_fwd, _normalize_bwd)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Mean over the spatial axes of an NHWC tensor."""
  return jnp.mean(x, axis=(1, 2))


def classifier_head(x: jax.Array, num_classes: int, *, pooled: bool = False) -> jax.Array:
  """Global average pooling, then the classifier (a ``SelectiveDense`` named ``classifier``,
  always trained); ``pooled=True`` returns the pooled features. Call it inside a module's
  ``__call__``: the classifier becomes that module's submodule."""
  x = global_avg_pool(x)
  return x if pooled else SelectiveDense(num_classes, name="classifier", charged=False)(x)
