"""Full-width MobileNetV2 (Sandler et al. 2018) as an ``mcunet.MCUNet``.

It is the same inverted-residual network family as mbv2-w0.35, so it shares the builder:
first conv 3->32/2, 17 blocks (t, c, n, s table below), 1x1 feature-mix conv 320->1280 (ReLU6),
pooled linear classifier. torchvision / timm checkpoints: ``formats.torchvision``.
"""

from __future__ import annotations

from trady_jax.models.mcunet import Block, Conv, MCUNet, NetSpec

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8) -> int:
  """torchvision's ``_make_divisible``: round to a multiple, never more than 10 % down."""
  new = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * v else new


def mobilenetv2_spec(width: float = 1.0) -> NetSpec:
  """NetSpec of torchvision's ``mobilenet_v2(width_mult=width)``."""
  cin = make_divisible(32 * width)
  first, blocks = Conv(3, cin, 3, 2, act="relu6"), []
  for t, c, n, s in SETTINGS:
    cout = make_divisible(c * width)
    for i in range(n):
      stride, hid = s if i == 0 else 1, int(round(cin * t))
      pw1 = Conv(cin, hid, act="relu6") if t != 1 else None
      blocks.append(Block(Conv(hid, hid, 3, stride, hid, "relu6"), Conv(hid, cout), pw1,
                          shortcut=stride == 1 and cin == cout))
      cin = cout
  mix = Conv(cin, make_divisible(1280 * max(1.0, width)), act="relu6")
  return NetSpec(first, tuple(blocks), mix, 1000, 224)


def mobilenetv2(num_classes: int = 1000, width: float = 1.0) -> MCUNet:
  """The Flax module."""
  return MCUNet(mobilenetv2_spec(width), num_classes)
