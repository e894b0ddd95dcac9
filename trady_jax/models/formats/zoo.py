"""MCUNet model-zoo fp32 networks: ``ProxylessNASNets`` config (``<zoo id>.json``) -> ``NetSpec``.

The config is the zoo's ``build_from_config`` layout (``first_conv``, ``blocks[i]`` with a
``mobile_inverted_conv`` and an optional ``shortcut``, ``feature_mix_layer``, ``classifier``),
activations explicit in ``act_func``; the ``.pth`` state dict keeps its BatchNorm, and
``zoo_key_map`` names the keys of every layer for ``convert.convert_state_dict`` (method-spec 8).
"""

from __future__ import annotations

from typing import Any, Mapping

from trady_jax.models.convert import ConvKeys, DenseKeys
from trady_jax.models.mcunet import Block, Conv, NetSpec, check_spec


def _zoo_conv(c: Mapping[str, Any]) -> Conv:
  if c.get("name") != "ConvLayer":
    raise ValueError(f"unsupported zoo layer {c.get('name')!r} (expected ConvLayer)")
  return Conv(c["in_channels"], c["out_channels"], c["kernel_size"], c.get("stride", 1),
              c.get("groups", 1), c.get("act_func"))


def spec_from_zoo_config(cfg: Mapping[str, Any]) -> NetSpec:
  """NetSpec of an MCUNet model-zoo ``ProxylessNASNets`` config (``build_from_config`` layout);
  a malformed or inconsistent config (see ``check_spec``) is a ``ValueError``."""
  try:
    spec = _parse_zoo_config(cfg)
    head_in = cfg["classifier"].get("in_features")
  except (KeyError, TypeError, AttributeError, IndexError) as err:
    raise ValueError(f"malformed model-zoo config: {err!r}") from err
  return check_spec(spec, head_in)


def _parse_zoo_config(cfg: Mapping[str, Any]) -> NetSpec:
  blocks = []
  for i, b in enumerate(cfg["blocks"]):
    m = b.get("mobile_inverted_conv") or b.get("conv")
    if not m or m.get("name") != "MBInvertedConvLayer":
      raise ValueError(f"blocks[{i}]: unsupported block {m and m.get('name')!r}")
    cin, cout, act = m["in_channels"], m["out_channels"], m.get("act_func", "relu6")
    mid = m.get("mid_channels") or round(cin * m["expand_ratio"])
    pw1 = Conv(cin, mid, act=act) if m["expand_ratio"] != 1 else None
    se = None
    if m.get("use_se"):
      v = mid // 4  # MCUNet SEModule: make_divisible(mid // 4, 8)
      red = max(8, int(v + 4) // 8 * 8)
      red += 8 if red < 0.9 * v else 0
      se = (Conv(mid, red, act="relu"), Conv(red, mid))
    sc = b.get("shortcut")
    shortcut = _zoo_conv(sc) if sc and sc.get("name") == "ConvLayer" else sc is not None
    blocks.append(Block(Conv(mid, mid, m["kernel_size"], m["stride"], mid, act),
                        Conv(mid, cout), pw1, se, shortcut))
  fm = cfg.get("feature_mix_layer")
  return NetSpec(_zoo_conv(cfg["first_conv"]), tuple(blocks), _zoo_conv(fm) if fm else None,
                 cfg["classifier"]["out_features"], cfg.get("resolution", 128))


# Zoo checkpoints saved after the OFA refactor name blocks ``blocks.i.conv.``; read them as the
# older ``blocks.i.mobile_inverted_conv.`` (``files.normalise_keys(sd, ZOO_RENAMES)``).
ZOO_RENAMES = ((r"^blocks\.(\d+)\.conv\.", r"blocks.\1.mobile_inverted_conv."),)


def zoo_key_map(spec: NetSpec) -> dict:
  """``{module path: ConvKeys | DenseKeys}`` into a zoo state dict (keys normalised with
  ``ZOO_RENAMES``)."""
  torch = {"first_conv": "first_conv", "feature_mix": "feature_mix_layer",
           "pointwise1": "mobile_inverted_conv.inverted_bottleneck",
           "depthwise": "mobile_inverted_conv.depth_conv",
           "pointwise2": "mobile_inverted_conv.point_linear", "shortcut": "shortcut"}
  out = {}
  for path, _ in spec.convs():
    block, _, name = path.rpartition("/")
    prefix = f"blocks.{block.split('_')[1]}." if block else ""
    if name.startswith("se_"):
      key = f"{prefix}mobile_inverted_conv.depth_conv.se.fc.{name[3:]}"
      out[path] = ConvKeys(f"{key}.weight", None, f"{key}.bias")
    else:
      out[path] = ConvKeys(f"{prefix}{torch[name]}.conv.weight", f"{prefix}{torch[name]}.bn")
  out["classifier"] = DenseKeys("classifier.linear.weight", "classifier.linear.bias")
  return out
