"""Full-width MobileNetV2 (Sandler et al. 2018) as an ``mcunet.MCUNet``, torchvision / timm keys.

It is the same inverted-residual network family as mbv2-w0.35, so it shares the builder:
first conv 3->32/2, 17 blocks (t, c, n, s table below), 1x1 feature-mix conv 320->1280 (ReLU6),
pooled linear classifier. BatchNorm is folded at load (``weights.convert_state_dict``).
"""

from __future__ import annotations

from typing import Mapping

from trady_jax.models.mcunet import Block, Conv, MCUNet, NetSpec
from trady_jax.models.weights import ConvKeys, DenseKeys

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


def torchvision_key_map(spec: NetSpec) -> dict:
  """``{module path: keys}`` of ``torchvision.models.mobilenet_v2`` state dicts."""
  out = {"first_conv": ConvKeys("features.0.0.weight", "features.0.1")}
  for i, b in enumerate(spec.blocks):
    p, q = f"blocks_{i}", f"features.{i + 1}.conv"
    j = 0
    if b.pointwise1 is not None:
      out[f"{p}/pointwise1"], j = ConvKeys(f"{q}.0.0.weight", f"{q}.0.1"), 1
    out[f"{p}/depthwise"] = ConvKeys(f"{q}.{j}.0.weight", f"{q}.{j}.1")
    out[f"{p}/pointwise2"] = ConvKeys(f"{q}.{j + 1}.weight", f"{q}.{j + 2}")
  n = len(spec.blocks) + 1
  out["feature_mix"] = ConvKeys(f"features.{n}.0.weight", f"features.{n}.1")
  out["classifier"] = DenseKeys("classifier.1.weight", "classifier.1.bias")
  return out


def timm_key_map(spec: NetSpec) -> dict:
  """``{module path: keys}`` of timm ``mobilenetv2_*`` state dicts (blocks grouped per stage)."""
  out = {"first_conv": ConvKeys("conv_stem.weight", "bn1")}
  stage_of = [(s, j) for s, (_, _, n, _) in enumerate(SETTINGS) for j in range(n)]
  if len(stage_of) != len(spec.blocks):
    raise ValueError(f"timm layout needs {len(stage_of)} blocks, the spec has {len(spec.blocks)}")
  for i, b in enumerate(spec.blocks):
    p, q = f"blocks_{i}", "blocks.%d.%d" % stage_of[i]
    if b.pointwise1 is None:  # timm DepthwiseSeparableConv
      out[f"{p}/depthwise"] = ConvKeys(f"{q}.conv_dw.weight", f"{q}.bn1")
      out[f"{p}/pointwise2"] = ConvKeys(f"{q}.conv_pw.weight", f"{q}.bn2")
      continue
    out[f"{p}/pointwise1"] = ConvKeys(f"{q}.conv_pw.weight", f"{q}.bn1")
    out[f"{p}/depthwise"] = ConvKeys(f"{q}.conv_dw.weight", f"{q}.bn2")
    out[f"{p}/pointwise2"] = ConvKeys(f"{q}.conv_pwl.weight", f"{q}.bn3")
  out["feature_mix"] = ConvKeys("conv_head.weight", "bn2")
  out["classifier"] = DenseKeys("classifier.weight", "classifier.bias")
  return out


def key_map(spec: NetSpec, state_dict: Mapping[str, object]) -> dict:
  """The torchvision or timm key map, whichever layout ``state_dict`` has."""
  if "features.0.0.weight" in state_dict:
    return torchvision_key_map(spec)
  if "conv_stem.weight" in state_dict:
    return timm_key_map(spec)
  raise ValueError("not a torchvision (features.0.0.weight) or timm (conv_stem.weight) "
                   f"MobileNetV2 state dict; first keys: {list(state_dict)[:4]}")
