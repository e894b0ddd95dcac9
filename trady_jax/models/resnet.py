"""ResNet-18 / ResNet-50 (torchvision layout, v1.5: stride on the 3x3 conv) from selective layers.

Every conv is a ``layers.SelectiveConv``; ``ResNet.bn`` folds BatchNorm into its bias
(``convert.fold_bn``) or keeps a real BN after it (``batchnorm``). Convs are created in
torchvision module order (stem ``conv1``, then per block ``conv1``, ``conv2``, [``conv3``],
[``downsample``]), which is the conv index order of the cost model. ``formats.torchvision`` maps
each layer to its torchvision / timm state-dict keys.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from trady_jax import layers, ops, prefix

STAGES = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False),
          "resnet50": ((3, 4, 6, 3), True), "resnet101": ((3, 4, 23, 3), True)}


def _conv(features: int, k: int, stride: int, name: str, bn: str) -> layers.SelectiveConv:
  return layers.SelectiveConv(features, (k, k), (stride, stride), bn=bn, name=name)


class ResBlock(nn.Module):
  """Basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 with 4x expansion) residual block."""
  planes: int
  stride: int = 1
  bottleneck: bool = False
  bn: str = "folded"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_ch, bn = self.planes * (4 if self.bottleneck else 1), self.bn
    if self.bottleneck:
      y = ops.relu(_conv(self.planes, 1, 1, "conv1", bn)(x))
      y = ops.relu(_conv(self.planes, 3, self.stride, "conv2", bn)(y))
      y = _conv(out_ch, 1, 1, "conv3", bn)(y)
    else:
      y = ops.relu(_conv(self.planes, 3, self.stride, "conv1", bn)(x))
      y = _conv(out_ch, 3, 1, "conv2", bn)(y)
    if self.stride != 1 or x.shape[-1] != out_ch:
      x = _conv(out_ch, 1, self.stride, "downsample", bn)(x)
    return ops.relu(y + x)


class ResNet(nn.Module):
  """conv1 7x7/2 -> max pool 3x3/2 -> layer1..4 -> global average pool -> classifier.

  Inputs are NHWC in [-1, 1] (mean = std = 0.5); ImageNet-normalised checkpoints are adapted by
  folding the input normalisation into ``conv1`` (``convert.fold_input_norm``).

  Stages (``prefix.apply``): 0 is the stem (``conv1`` + max pool), then one per residual block in
  order (``layer1_0`` is stage 1), then the head (pool, classifier); ``start`` / ``stop`` as in
  ``MCUNet``.
  """
  stage_sizes: tuple[int, ...]
  bottleneck: bool = False
  num_classes: int = 1000
  width: int = 64
  bn: str = "folded"

  @nn.nowrap
  def block_names(self) -> list[tuple[str, int, int]]:
    """``(name, stage s, block b)`` of the residual blocks in forward order."""
    return [(f"layer{s + 1}_{b}", s, b) for s, n in enumerate(self.stage_sizes) for b in range(n)]

  @nn.compact
  def __call__(self, x: jax.Array, pooled: bool = False, *, start: int = 0,
               stop: int | None = None) -> jax.Array:
    names = self.block_names()
    stem, blocks, head = prefix.stage_plan(start, stop, len(names))
    if stem:
      x = ops.relu(_conv(self.width, 7, 2, "conv1", self.bn)(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for i in blocks:
      name, s, b = names[i]
      x = ResBlock(self.width * 2**s, 2 if (b == 0 and s > 0) else 1, self.bottleneck, self.bn,
                   name=name)(x)
    if not head:
      return x
    return layers.classifier_head(x, self.num_classes, pooled=pooled)

  @nn.nowrap
  def stage_of(self, path: str) -> int:
    """The stage of a parameter path (``'layer1_0/conv2/kernel'`` -> 1)."""
    return prefix.stage_of_path(path, "conv1", [name for name, _, _ in self.block_names()])


def resnet(name: str, num_classes: int = 1000) -> ResNet:
  """``ResNet`` for ``'resnet18' | 'resnet34' | 'resnet50' | 'resnet101'``."""
  if name not in STAGES:
    raise KeyError(f"unknown ResNet {name!r}; known: {sorted(STAGES)}")
  stages, bottleneck = STAGES[name]
  return ResNet(stages, bottleneck, num_classes)
