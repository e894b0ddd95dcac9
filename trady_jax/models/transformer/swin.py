"""Swin Transformer (Liu et al.) whose every linear layer is selective.

A 4x4 patch embedding (``SelectiveConv``) and its norm; stages of blocks with (shifted) window
attention, a learned relative position bias per block (``layers.Learned``, uncharged) and the
shifted-window mask, added to the window logits of ``attention.SelfAttention``; patch merging
between stages (norm, then a charged ``SelectiveDense`` reduction without bias); a final norm,
global average pooling and the classifier. Windows follow Hugging Face's ``SwinLayer``: a feature
map that is not a multiple of the window is zero-padded (right, bottom) after the norm; where the
map is no larger than the window, the window shrinks to it and is not shifted.

Each charged layer's input feature ``c`` costs ``F_out`` weights plus one stored activation per
token (the linear reading of Eq. 3, method-spec 1.2): the window attention sees
``(N, windows, window tokens, C)``, so a sample's tokens are all its (padded) positions.
``formats.hf_vision`` maps Hugging Face (``SwinForImageClassification``) and timm state dicts.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trady_jax import layers
from trady_jax.models.transformer.attention import MLP, SelfAttention

# The patch-embedding and patch-merging norms use PyTorch's default epsilon in both layouts.
EMBED_NORM_EPS = 1e-5
# Logit bias between tokens of different regions of a shifted window (the original Swin's).
MASKED = -100.0


@dataclasses.dataclass(frozen=True)
class SwinConfig:
  """Shape of a Swin Transformer.

  Attributes:
    num_classes: classifier outputs.
    image_size: input resolution (square); with ``window_size`` it fixes each stage's window and
      so the relative-position table shapes.
    patch_size: side of a patch (the embedding conv's kernel and stride).
    embed_dim: width of the first stage (doubled by each patch merging).
    depths: blocks per stage.
    num_heads: attention heads per stage.
    window_size: side of an attention window.
    mlp_ratio: MLP hidden width over the block width.
    layer_norm_eps: epsilon of the block and final norms.
    fused_qkv: one ``qkv`` projection (the block input stored once, timm's layout).
    recompute: every block's attention and MLP recompute their projections in the backward pass
      (``SelfAttention.recompute``, ``MLP.recompute``: exact; less kept, more FLOPs).
  """
  num_classes: int
  image_size: int = 224
  patch_size: int = 4
  embed_dim: int = 96
  depths: tuple[int, ...] = (2, 2, 6, 2)
  num_heads: tuple[int, ...] = (3, 6, 12, 24)
  window_size: int = 7
  mlp_ratio: float = 4.0
  layer_norm_eps: float = 1e-5
  fused_qkv: bool = True
  recompute: bool = False

  def stage_windows(self) -> tuple[int, ...]:
    """The window side each stage uses at ``image_size`` (shrunk to small feature maps)."""
    side, out = -(-self.image_size // self.patch_size), []
    for _ in self.depths:
      out.append(window_and_shift(side, side, self.window_size)[0])
      side = -(-side // 2)
    return tuple(out)


def window_and_shift(height: int, width: int, window: int) -> tuple[int, int]:
  """``(window, shift)`` of a shifted block on a ``height x width`` map (Hugging Face's rule):
  a map no larger than the window is one window, never shifted."""
  if min(height, width) <= window:
    return min(height, width), 0
  return window, window // 2


def relative_position_index(window: int) -> np.ndarray:
  """``(T, T)`` row of the ``((2w-1)^2, heads)`` bias table for each token pair of a window."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
  """``(windows, 1, T, T)`` logit bias: ``MASKED`` between tokens that a cyclic shift of
  ``shift`` brought together from different regions of the padded ``height x width`` map."""
  def regions(n):
    i = np.arange(n)
    return (i >= n - window).astype(int) + (i >= n - shift)
  img = (regions(height)[:, None] * 3 + regions(width)[None, :])[None, :, :, None]
  m = partition(img, window)[0, ..., 0]  # (windows, T)
  return np.where(m[:, None, :] != m[:, :, None], MASKED, 0.0).astype(np.float32)[:, None]


def partition(x, window: int):
  """``(N, H, W, C)`` -> ``(N, windows, window * window, C)``, windows in row-major order."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, (h // window) * (w // window), window * window, c)


def unpartition(x: jax.Array, window: int, height: int, width: int) -> jax.Array:
  """Inverse of ``partition`` for a ``height x width`` map."""
  n, c = x.shape[0], x.shape[-1]
  x = x.reshape(n, height // window, width // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, height, width, c)


class SwinBlock(nn.Module):
  """``x + window_attn(attn_norm(x))``, then ``x + mlp(mlp_norm(x))`` on an NHWC map.

  ``window`` / ``shift``: as ``window_and_shift`` gives for the map (the caller decides).
  """
  num_heads: int
  window: int
  shift: int
  mlp_hidden: int
  epsilon: float
  fused_qkv: bool = True
  recompute: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    ws, s = self.window, self.shift
    ph, pw = (-h) % ws, (-w) % ws

    def into_windows(y):
      y = jnp.pad(y, ((0, 0), (0, ph), (0, pw), (0, 0)))
      return partition(jnp.roll(y, (-s, -s), axis=(1, 2)) if s else y, ws)

    table = layers.Learned(((2 * ws - 1) ** 2, self.num_heads), name="relative_position_bias")()
    bias = jnp.transpose(table[relative_position_index(ws)], (2, 0, 1))  # (heads, T, T)
    if s:
      bias = bias + shifted_window_mask(h + ph, w + pw, ws, s)
    attention = SelfAttention(self.num_heads, self.fused_qkv, recompute=self.recompute, name="attn")
    y = attention(layers.LayerNorm(self.epsilon, name="attn_norm")(x, parts=True), bias,
                  into=into_windows)
    y = unpartition(y, ws, h + ph, w + pw)
    if s:
      y = jnp.roll(y, (s, s), axis=(1, 2))
    x = x + y[:, :h, :w]
    mlp = MLP(self.mlp_hidden, recompute=self.recompute, name="mlp")
    return x + mlp(layers.LayerNorm(self.epsilon, name="mlp_norm")(x, parts=True))


class PatchMerging(nn.Module):
  """2x2 neighbours concatenated (zero-padded to even sides), ``norm``, then a charged
  ``reduction`` ``4C -> 2C`` without bias."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    x = jnp.pad(x, ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0)))
    x = jnp.concatenate([x[:, r::2, q::2] for q in range(2) for r in range(2)], axis=-1)
    x = layers.LayerNorm(EMBED_NORM_EPS, name="norm")(x)
    return layers.SelectiveDense(2 * c, use_bias=False, name="reduction")(x)


class Swin(nn.Module):
  """Swin classifier on NHWC images; logits ``(N, num_classes)``."""
  config: SwinConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    p = cfg.patch_size
    x = jnp.pad(x, ((0, 0), (0, (-x.shape[1]) % p), (0, (-x.shape[2]) % p), (0, 0)))
    x = layers.SelectiveConv(cfg.embed_dim, (p, p), (p, p), padding="VALID", name="patch_embed")(x)
    x = layers.LayerNorm(EMBED_NORM_EPS, name="patch_norm")(x)
    for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
      for j in range(depth):
        window, shift = window_and_shift(x.shape[1], x.shape[2], cfg.window_size)
        x = SwinBlock(heads, window, shift if j % 2 else 0, int(cfg.mlp_ratio * x.shape[-1]),
                      cfg.layer_norm_eps, cfg.fused_qkv, cfg.recompute,
                      name=f"stage_{i}_block_{j}")(x)
      if i < len(cfg.depths) - 1:
        x = PatchMerging(name=f"merge_{i}")(x)
    x = layers.LayerNorm(cfg.layer_norm_eps, name="final_norm")(x)
    return layers.classifier_head(x, cfg.num_classes)


def swin_t(num_classes: int, image_size: int = 224, *, fused_qkv: bool = True) -> Swin:
  """Swin-T: width 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24), window 7, MLP ratio 4."""
  return Swin(SwinConfig(num_classes, image_size, fused_qkv=fused_qkv))
