"""A tiny MobileNet-style CNN for tests, notebooks and runs without pretrained weights."""

from __future__ import annotations

import flax.linen as nn
import jax

from trady_jax import layers, ops


class TinyCNN(nn.Module):
  """Stem conv, two inverted-residual blocks (pointwise, depthwise, pointwise), pooled classifier.

  Attributes:
    num_classes: classifier outputs.
    width: channels of the stem and block outputs.
    expand: inverted-residual expansion ratio.
  """
  num_classes: int = 10
  width: int = 8
  expand: int = 3
  bn: str = "folded"  # batchnorm.MODES

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    bn = self.bn
    x = ops.relu6(layers.SelectiveConv(self.width, (3, 3), (2, 2), bn=bn, name="first_conv")(x))
    for i, stride in enumerate((1, 2)):
      h = self.width * self.expand
      y = ops.relu6(layers.SelectiveConv(h, (1, 1), bn=bn, name=f"blocks_{i}_pointwise1")(x))
      y = ops.relu6(layers.SelectiveConv(h, (3, 3), (stride, stride), feature_group_count=h,
                                         bn=bn, name=f"blocks_{i}_depthwise")(y))
      y = layers.SelectiveConv(self.width, (1, 1), bn=bn, name=f"blocks_{i}_pointwise2")(y)
      x = x + y if stride == 1 else y
    return layers.SelectiveDense(self.num_classes, name="classifier", charged=False)(layers.global_avg_pool(x))
