"""torchvision / timm checkpoints of ResNet and MobileNetV2: their state-dict keys, and conversion.

Both libraries name ResNet layers alike (``conv1``, ``layerS.B.convJ``, ``downsample``, ``fc``);
MobileNetV2 differs (torchvision ``features.i``, timm ``conv_stem`` / ``blocks.s.j`` per stage).
``convert_generic`` turns such a state dict into ``(module, params)`` with BatchNorm folded (or
kept) and the checkpoint's ImageNet input normalisation folded into the first conv, so that every
model reads ``[-1, 1]`` inputs (method-spec 8).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from trady_jax.models import mobilenetv2, resnet
from trady_jax.models.convert import (IMAGENET_MEAN, IMAGENET_STD, ConvKeys, DenseKeys,
                                      convert_state_dict, fold_input_norm)
from trady_jax.models.mcunet import NetSpec


def resnet_keys(model: resnet.ResNet) -> dict:
  """``{module path: ConvKeys | DenseKeys}`` for torchvision / timm ResNet state dicts."""
  out = {"conv1": ConvKeys("conv1.weight", "bn1")}
  for s, n in enumerate(model.stage_sizes):
    for b in range(n):
      path, key = f"layer{s + 1}_{b}", f"layer{s + 1}.{b}"
      for j in range(1, 4 if model.bottleneck else 3):
        out[f"{path}/conv{j}"] = ConvKeys(f"{key}.conv{j}.weight", f"{key}.bn{j}")
      if b == 0 and (s > 0 or model.bottleneck):
        out[f"{path}/downsample"] = ConvKeys(f"{key}.downsample.0.weight", f"{key}.downsample.1")
  out["classifier"] = DenseKeys("fc.weight", "fc.bias")
  return out


def mobilenetv2_torchvision_keys(spec: NetSpec) -> dict:
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


def mobilenetv2_timm_keys(spec: NetSpec) -> dict:
  """``{module path: keys}`` of timm ``mobilenetv2_*`` state dicts (blocks grouped per stage)."""
  out = {"first_conv": ConvKeys("conv_stem.weight", "bn1")}
  stage_of = [(s, j) for s, (_, _, n, _) in enumerate(mobilenetv2.SETTINGS) for j in range(n)]
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


def mobilenetv2_keys(spec: NetSpec, state_dict: Mapping[str, object]) -> dict:
  """The torchvision or timm key map, whichever layout ``state_dict`` has."""
  if "features.0.0.weight" in state_dict:
    return mobilenetv2_torchvision_keys(spec)
  if "conv_stem.weight" in state_dict:
    return mobilenetv2_timm_keys(spec)
  raise ValueError("not a torchvision (features.0.0.weight) or timm (conv_stem.weight) "
                   f"MobileNetV2 state dict; first keys: {list(state_dict)[:4]}")


def convert_generic(name: str, state_dict: dict, num_classes: int = 1000,
                    input_stats: Any = (IMAGENET_MEAN, IMAGENET_STD), *,
                    keep_bn: bool = False):
  """``(module, params)`` of a torchvision / timm ResNet or MobileNetV2 state dict (numpy arrays).

  ``input_stats``: the checkpoint's input ``(mean, std)``, folded into the first conv so that the
  model reads ``[-1, 1]`` inputs; None keeps the first conv as is. ``keep_bn``: BatchNorm kept
  (``convert.convert_state_dict``), the input's constant term then joins the first running mean.
  """
  if name == "mobilenetv2":
    module, first = mobilenetv2.mobilenetv2(num_classes), "first_conv"
    key_map = mobilenetv2_keys(module.spec, state_dict)
  else:
    module, first = resnet.resnet(name, num_classes), "conv1"
    key_map = resnet_keys(module)
  params = convert_state_dict(state_dict, key_map, keep_bn=keep_bn)
  if input_stats is not None:
    p = params[first]
    if keep_bn:
      p["kernel"], shift = fold_input_norm(p["kernel"], 0.0, *input_stats)
      p["bn"]["mean"] = (p["bn"]["mean"] - shift).astype(np.float32)
    else:
      p["kernel"], p["bias"] = fold_input_norm(p["kernel"], p["bias"], *input_stats)
  return module, params
