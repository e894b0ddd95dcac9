"""Multi-head self-attention and the MLP of a transformer block, every projection selective.

Each projection is a charged ``layers.SelectiveDense``: its input feature ``c`` costs ``F_out``
weights plus one stored activation per token (``costs``; the linear reading of Eq. 3). With
separate ``query`` / ``key`` / ``value`` projections (Hugging Face's layout) the block input is
stored once per projection that selects from it; a fused ``qkv`` projection (timm's layout) stores
it once, at ``3 * C`` weights per feature.

Beside those inputs, a transformer's backward pass needs what its frozen blocks keep: LayerNorm's
centred inputs, ``q``, ``k``, ``v``, the softmax output (``heads * T`` per token) and GELU's input
(``4C`` per token). Two exact recomputations shrink that:

* ``SelfAttention.recompute_softmax`` (default on): the attention core keeps only ``q, k, v`` and
  recomputes ``softmax(q k^T / sqrt(d) + bias)`` in the backward pass (``2 T^2 C`` MACs per
  sample, about 1 % of a BERT-base block);
* ``MLP.recompute``: ``gelu(fc1(x))`` keeps only ``x`` and recomputes ``fc1`` (``4 C^2`` MACs per
  token, a third of the block's forward) instead of keeping the ``4C``-wide GELU input.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from trady_jax.layers import SelectiveDense


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
  """The exact (erf) GELU of BERT, ViT and Swin, ``x * Phi(x)``. Its backward keeps ``x`` alone and
  recomputes ``gelu'(x) = Phi(x) + x * phi(x)``; autodiff of ``nn.gelu`` keeps three
  ``x``-sized intermediates."""
  return nn.gelu(x, approximate=False)


def _gelu_fwd(x):
  return gelu(x), x


def _gelu_bwd(x, g):
  xf = x.astype(jnp.float32)
  cdf = 0.5 * (1.0 + jax.lax.erf(xf * (1 / math.sqrt(2))))
  pdf = jnp.exp(-0.5 * xf * xf) * (1 / math.sqrt(2 * math.pi))
  return ((g * (cdf + xf * pdf)).astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


def padding_bias(mask: jax.Array, dtype=jnp.float32) -> jax.Array:
  """``(N, T)`` boolean key mask (True: a real token) -> an additive ``(N, 1, 1, T)`` logit bias,
  the most negative float where masked (as Hugging Face's eager attention)."""
  return jnp.where(mask, 0.0, jnp.finfo(dtype).min).astype(dtype)[:, None, None, :]


class SelfAttention(nn.Module):
  """``softmax(q k^T / sqrt(d) + bias) v``, then the output projection ``out``.

  Attributes:
    num_heads: heads; the width ``C`` must be a multiple.
    fused_qkv: one ``qkv`` projection ``(C, 3C)`` laid out ``[q | k | v]`` (timm), else
      ``query`` / ``key`` / ``value`` (Hugging Face).
    use_bias: projection biases.
    recompute_softmax: keep ``q, k, v`` and recompute the attention weights in the backward pass.
  """
  num_heads: int
  fused_qkv: bool = False
  use_bias: bool = True
  recompute_softmax: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """``x``: ``(..., T, C)``; ``bias``: added to the ``(..., heads, T, T)`` logits (padding,
    relative positions, window masks)."""
    c = x.shape[-1]
    if c % self.num_heads:
      raise ValueError(f"{self.name}: width {c} is not a multiple of {self.num_heads} heads")
    d = c // self.num_heads
    if self.fused_qkv:
      q, k, v = jnp.split(SelectiveDense(3 * c, self.use_bias, name="qkv")(x), 3, axis=-1)
    else:
      q, k, v = (SelectiveDense(c, self.use_bias, name=n)(x) for n in ("query", "key", "value"))
    split = lambda t: t.reshape(*t.shape[:-1], self.num_heads, d)
    core = attention_core
    if self.recompute_softmax:
      core = jax.checkpoint(attention_core, policy=jax.checkpoint_policies.nothing_saveable)
    out = core(split(q), split(k), split(v), bias).reshape(x.shape)
    return SelectiveDense(c, self.use_bias, name="out")(out)


def attention_core(q: jax.Array, k: jax.Array, v: jax.Array,
                   bias: jax.Array | None = None) -> jax.Array:
  """``softmax(q k^T / sqrt(d) + bias) v`` per head: ``q, k, v`` ``(..., T, heads, d)``, ``bias``
  broadcastable to ``(..., heads, T, T)``; the softmax in float32."""
  logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(q.shape[-1])
  if bias is not None:
    logits = logits + bias
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  return jnp.einsum("...hqk,...khd->...qhd", weights, v)


class MLP(nn.Module):
  """``fc2(activation(fc1(x)))``, hidden width ``hidden``; ``recompute``: keep ``x`` and recompute
  ``activation(fc1(x))`` in the backward pass (exact; see the module docstring)."""
  hidden: int
  activation: Callable[[jax.Array], jax.Array] = gelu
  recompute: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    activation = self.activation
    expand = lambda fc1, x: activation(fc1(x))
    if self.recompute:
      expand = nn.checkpoint(expand, policy=jax.checkpoint_policies.nothing_saveable)
    h = expand(SelectiveDense(self.hidden, name="fc1"), x)
    return SelectiveDense(x.shape[-1], name="fc2")(h)
