"""Vision Transformer (ViT, Dosovitskiy et al.) whose every linear layer is selective.

Patch embedding (a ``SelectiveConv``, kernel = stride = patch, no padding), a class token and
learned position embeddings (``layers.Learned``, uncharged), pre-LayerNorm blocks
(``attention.SelfAttention`` with a fused ``qkv`` projection, ``attention.MLP``), a final norm and
the classifier on the class token. Each charged layer's input feature ``c`` costs ``F_out``
weights plus one stored activation per token (the linear reading of Eq. 3, method-spec 1.2); the
patch embedding is a conv charged as in Eq. 3; the classifier is not charged.

``formats.hf_vision`` maps Hugging Face (``ViTForImageClassification``) and timm state dicts here.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from trady_jax import layers
from trady_jax.models.transformer.attention import MLP, SelfAttention


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Shape of a ViT.

  Attributes:
    num_classes: classifier outputs.
    image_size: input resolution (square); fixes the position-embedding grid.
    patch_size: side of a patch (the patch conv's kernel and stride).
    hidden: token width.
    depth: transformer blocks.
    num_heads: attention heads.
    mlp_hidden: hidden width of each block's MLP.
    layer_norm_eps: 1e-12 in Hugging Face's checkpoints, 1e-6 in timm's.
    fused_qkv: one ``qkv`` projection (the block input stored once, timm's layout).
    recompute: every block's attention and MLP recompute their projections in the backward pass
      (``SelfAttention.recompute``, ``MLP.recompute``: exact; less kept, more FLOPs).
  """
  num_classes: int
  image_size: int = 224
  patch_size: int = 16
  hidden: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_hidden: int = 3072
  layer_norm_eps: float = 1e-12
  fused_qkv: bool = True
  recompute: bool = False

  @property
  def grid(self) -> int:
    """Patches along each side."""
    return self.image_size // self.patch_size


class ViTBlock(nn.Module):
  """``x + attn(attn_norm(x))``, then ``x + mlp(mlp_norm(x))``."""
  num_heads: int
  mlp_hidden: int
  epsilon: float
  fused_qkv: bool = True
  recompute: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    norm = lambda name: layers.LayerNorm(self.epsilon, name=name)(x, parts=True)
    x = x + SelfAttention(self.num_heads, self.fused_qkv, recompute=self.recompute,
                          name="attn")(norm("attn_norm"))
    return x + MLP(self.mlp_hidden, recompute=self.recompute, name="mlp")(norm("mlp_norm"))


class ViT(nn.Module):
  """ViT classifier on NHWC images of ``config.image_size``; logits ``(N, num_classes)``."""
  config: ViTConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    p = cfg.patch_size
    x = layers.SelectiveConv(cfg.hidden, (p, p), (p, p), padding="VALID", name="patch_embed")(x)
    n, gh, gw, c = x.shape
    if (gh, gw) != (cfg.grid, cfg.grid):
      raise ValueError(f"ViT built for {cfg.image_size}x{cfg.image_size} images ({cfg.grid}x"
                       f"{cfg.grid} patches) got a {gh}x{gw} patch grid; convert the position "
                       "embeddings to this resolution (hf_vision image_size=)")
    cls = jnp.broadcast_to(layers.Learned((1, 1, c), name="cls_token")(), (n, 1, c))
    x = jnp.concatenate([cls.astype(x.dtype), x.reshape(n, gh * gw, c)], axis=1)
    x = x + layers.Learned((1, 1 + gh * gw, c), name="pos_embed")()
    for i in range(cfg.depth):
      x = ViTBlock(cfg.num_heads, cfg.mlp_hidden, cfg.layer_norm_eps, cfg.fused_qkv,
                   cfg.recompute, name=f"block_{i}")(x)
    x = layers.LayerNorm(cfg.layer_norm_eps, name="final_norm")(x)
    return layers.SelectiveDense(cfg.num_classes, name="classifier", charged=False)(x[:, 0])


def vit_b16(num_classes: int, image_size: int = 224, *, layer_norm_eps: float = 1e-12,
            fused_qkv: bool = True) -> ViT:
  """ViT-B/16: width 768, 12 blocks of 12 heads, MLP 3072, 16x16 patches."""
  return ViT(ViTConfig(num_classes, image_size, layer_norm_eps=layer_norm_eps,
                       fused_qkv=fused_qkv))
