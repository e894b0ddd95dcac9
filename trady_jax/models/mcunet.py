"""MCUNet-family networks (mbv2-w0.35, mcunet-in1, proxyless-w0.3) from an architecture description.

Two description formats are read (method-spec section 8):

* the MIT tiny-training format (``../shared/weights/*.json`` and the arch-only copies in ``arch/``):
  ``first_conv``, ``blocks[i].{pointwise1, depthwise, pointwise2, residual, se}``, ``feature_mix``,
  ``classifier``; activations are implicit in each conv's int8 output range;
* the MCUNet model-zoo ``ProxylessNASNets`` config (``<zoo id>.json``) with explicit ``act_func``.

Both become a ``NetSpec``, and ``MCUNet(spec, num_classes)`` is a Flax module whose convs are
``layers.SelectiveConv`` created in MIT conv order (first_conv, then per block pointwise1,
depthwise, [SE reduce, expand], pointwise2, [shortcut conv], ..., feature_mix), the order behind
the Sparse Update ``manual_weight_idx`` (method-spec 7.3). ``MCUNet.bn`` decides BatchNorm:
folded into every conv's bias, or a real BN after each conv (``batchnorm``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from trady_jax import layers, ops, prefix

ARCH_DIR = Path(__file__).with_name("arch")
ACTIVATIONS = {"relu6": ops.relu6, "relu": ops.relu, None: lambda x: x}


@dataclasses.dataclass(frozen=True)
class Conv:
  """One conv (+ folded BN) and the activation after it (``'relu6'``, ``'relu'`` or None)."""
  in_channels: int
  out_channels: int
  kernel_size: int = 1
  stride: int = 1
  groups: int = 1
  act: str | None = None


@dataclasses.dataclass(frozen=True)
class Block:
  """Inverted residual: [pointwise1] -> depthwise -> [SE] -> pointwise2 (+ shortcut).

  ``shortcut`` is False (none), True (identity) or a ``Conv`` (projection shortcut).
  ``se`` is ``(reduce, expand)`` 1x1 convs with bias (ReLU, then a hard-sigmoid gate).
  """
  depthwise: Conv
  pointwise2: Conv
  pointwise1: Conv | None = None
  se: tuple[Conv, Conv] | None = None
  shortcut: Conv | bool = False


@dataclasses.dataclass(frozen=True)
class NetSpec:
  """The whole network; ``head_classes`` is the size of the pretrained (ImageNet) head."""
  first_conv: Conv
  blocks: tuple[Block, ...]
  feature_mix: Conv | None = None
  head_classes: int = 1000
  resolution: int = 128
  added_feature_mix: bool = False

  @property
  def features(self) -> int:
    """Channels of the pooled features the classifier reads."""
    last = self.feature_mix or self.blocks[-1].pointwise2
    return last.out_channels

  def convs(self) -> list[tuple[str, Conv]]:
    """``(module path, Conv)`` for every conv in forward (MIT index) order."""
    out = [("first_conv", self.first_conv)]
    for i, b in enumerate(self.blocks):
      named = [("pointwise1", b.pointwise1), ("depthwise", b.depthwise)]
      named += list(zip(("se_reduce", "se_expand"), b.se or ()))
      named += [("pointwise2", b.pointwise2)]
      named += [("shortcut", b.shortcut)] if isinstance(b.shortcut, Conv) else []
      out += [(f"blocks_{i}/{n}", c) for n, c in named if c is not None]
    if self.feature_mix is not None:
      out.append(("feature_mix", self.feature_mix))
    return out


def _conv(c: Conv, name: str, x: jax.Array, bn: str = "folded") -> jax.Array:
  k, s = c.kernel_size, c.stride
  y = layers.SelectiveConv(c.out_channels, (k, k), (s, s), feature_group_count=c.groups,
                           bn=bn, name=name)(x)
  return ACTIVATIONS[c.act](y)


class InvertedResidual(nn.Module):
  """One ``Block``; submodules are named ``pointwise1``, ``depthwise``, ``pointwise2``, ..."""
  block: Block
  bn: str = "folded"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, y, bn = self.block, x, self.bn
    if b.pointwise1 is not None:
      y = _conv(b.pointwise1, "pointwise1", y, bn)
    y = _conv(b.depthwise, "depthwise", y, bn)
    if b.se is not None:  # SE convs have a real bias and no BN (MCUNet SEModule)
      g = _conv(b.se[0], "se_reduce", jnp.mean(y, axis=(1, 2), keepdims=True))
      y = y * (ops.relu6(_conv(b.se[1], "se_expand", g) + 3.0) / 6.0)
    y = _conv(b.pointwise2, "pointwise2", y, bn)
    if isinstance(b.shortcut, Conv):
      return y + _conv(b.shortcut, "shortcut", x, bn)
    return y + x if b.shortcut else y


class MCUNet(nn.Module):
  """first_conv -> blocks -> [feature_mix] -> global average pool -> classifier.

  Inputs are NHWC floats normalised with mean = std = 0.5 (range [-1, 1]).
  ``__call__(x, pooled=True)`` returns the pooled features instead of the logits.

  Stages, for running part of the network (``prefix.apply``): stage 0 is ``first_conv``, stage
  ``i + 1`` is ``blocks_i`` and the last stage, ``len(blocks) + 1``, is the head (feature_mix,
  pool, classifier). ``__call__(x, start=i, stop=j)`` runs stages ``[i, j)`` only: ``x`` is then
  the feature map entering stage ``i``, and the result the one leaving stage ``j - 1``.

  ``bn``: ``batchnorm.MODES``; ``'folded'`` (conv + bias, the int8 form) or a BN after each conv.
  """
  spec: NetSpec
  num_classes: int = 1000
  bn: str = "folded"

  @nn.compact
  def __call__(self, x: jax.Array, pooled: bool = False, *, start: int = 0,
               stop: int | None = None) -> jax.Array:
    s = self.spec
    stem, blocks, head = prefix.stage_plan(start, stop, len(s.blocks))
    if stem:
      x = _conv(s.first_conv, "first_conv", x, self.bn)
    for i in blocks:
      x = InvertedResidual(s.blocks[i], self.bn, name=f"blocks_{i}")(x)
    if not head:
      return x
    if s.feature_mix is not None:
      x = _conv(s.feature_mix, "feature_mix", x, self.bn)
    x = layers.global_avg_pool(x)
    if pooled:
      return x
    return layers.SelectiveDense(self.num_classes, name="classifier")(x)

  @nn.nowrap
  def stage_of(self, path: str) -> int:
    """The stage of a parameter path (``'blocks_3/depthwise/kernel'`` -> 4)."""
    return prefix.stage_of_path(path, "first_conv",
                                [f"blocks_{i}" for i in range(len(self.spec.blocks))])


# ----------------------------------------------------------------------------------------------
# MIT tiny-training description (int8 json) -> NetSpec

def activation_from_range(q: Mapping[str, Any], tol: float = 0.05) -> str | None:
  """ReLU6 / ReLU / linear from an int8 conv's output range.

  The range is ``[(-128 - y_zero) * y_scale, (127 - y_zero) * y_scale]`` (weights README).

  ``y_zero = -128`` clamps at 0: ReLU6 when the upper end is at most 6 (calibration may clip
  lower), plain ReLU beyond; any other zero point is a linear output (e.g. ``pointwise2``).
  """
  if "y_zero" not in q or "y_scale" not in q:
    raise ValueError(f"quantisation parameters lack y_zero / y_scale: {sorted(q)}")
  if int(q["y_zero"]) != -128:
    return None
  return "relu6" if 255 * float(q["y_scale"]) <= 6 + tol else "relu"


def _conv_from_entry(e: Mapping[str, Any], where: str) -> Conv:
  try:
    k = e["kernel_size"]
    act = e.get("act") or activation_from_range(e["params"])
    k = int(k[0] if isinstance(k, list) else k)
    return Conv(int(e["in_channel"]), int(e["out_channel"]), k, int(e["stride"]), int(e["groups"]),
                None if act == "none" else act)
  except (KeyError, TypeError, ValueError) as err:
    raise ValueError(f"malformed conv description at {where}: {err!r}") from err


def iter_entries(desc: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
  """``(module path, description entry)`` of every conv and of the classifier, in forward order."""
  yield "first_conv", desc["first_conv"]
  for i, b in enumerate(desc["blocks"]):
    se = b.get("se") or {}
    res = b.get("residual")
    for name, e in (("pointwise1", b.get("pointwise1")), ("depthwise", b.get("depthwise")),
                    ("se_reduce", se.get("reduce")), ("se_expand", se.get("expand")),
                    ("pointwise2", b.get("pointwise2")),
                    ("shortcut", res if res and "kernel_size" in res else None)):
      if e is not None:
        yield f"blocks_{i}/{name}", e
  if desc.get("feature_mix") is not None:
    yield "feature_mix", desc["feature_mix"]
  yield "classifier", desc["classifier"]


def spec_from_description(desc: Mapping[str, Any], *, feature_mix: int | None = None) -> NetSpec:
  """NetSpec of a tiny-training description; ``feature_mix`` adds a ``C -> feature_mix`` 1x1 ReLU6
  conv when the description has none (the zoo models' final conv, method-spec 0.3).

  A malformed or inconsistent description (see ``check_spec``) is a ``ValueError``."""
  try:
    spec = _parse_description(desc, feature_mix)
  except (KeyError, TypeError, AttributeError, IndexError) as err:
    raise ValueError(f"malformed architecture description: {err!r}") from err
  head = desc["classifier"]
  return check_spec(spec, head.get("in_channel") if isinstance(head, Mapping) else None)


def _parse_description(desc: Mapping[str, Any], feature_mix: int | None) -> NetSpec:
  if not isinstance(desc, Mapping):
    raise TypeError(f"the description is a {type(desc).__name__}, not a JSON object")
  missing = {"first_conv", "blocks", "classifier"} - set(desc)
  if missing:
    raise ValueError(f"architecture description lacks {sorted(missing)}")
  blocks = []
  for i, b in enumerate(desc["blocks"]):
    c = {k: _conv_from_entry(b[k], f"blocks[{i}].{k}") if b.get(k) else None
         for k in ("pointwise1", "depthwise", "pointwise2")}
    if c["depthwise"] is None or c["pointwise2"] is None:
      raise ValueError(f"blocks[{i}] needs a depthwise and a pointwise2 conv")
    se = b.get("se")
    se = (_conv_from_entry(se["reduce"], f"blocks[{i}].se.reduce"),
          _conv_from_entry(se["expand"], f"blocks[{i}].se.expand")) if se else None
    res = b.get("residual")
    shortcut = _conv_from_entry(res, f"blocks[{i}].residual") if res and "kernel_size" in res \
        else res is not None
    blocks.append(Block(c["depthwise"], c["pointwise2"], c["pointwise1"], se, shortcut))
  fm, added = desc.get("feature_mix"), False
  fm = _conv_from_entry(fm, "feature_mix") if fm else None
  if fm is None and feature_mix:
    fm, added = Conv(blocks[-1].pointwise2.out_channels, int(feature_mix), act="relu6"), True
  first = desc["first_conv"]
  return NetSpec(_conv_from_entry(first, "first_conv"), tuple(blocks), fm,
                 int(desc["classifier"]["out_channel"]), int(first.get("in_shape", 128)), added)


MAX_CHANNELS, MAX_KERNEL, MAX_STRIDE = 1 << 14, 11, 4  # plausible conv sizes (check_spec)


def check_spec(spec: NetSpec, head_in: int | None = None) -> NetSpec:
  """``spec``, after checking that every conv has plausible sizes and reads the channels the one
  before it gives (RGB input; ``head_in``: the classifier's input channels, when described)."""
  def fail(path, why):
    raise ValueError(f"inconsistent architecture description at {path}: {why}")

  def reads(path, c, channels):
    if c.in_channels != channels:
      fail(path, f"reads {c.in_channels} channels but gets {channels}")
    return c.out_channels

  for path, c in spec.convs():
    sizes = (c.in_channels, c.out_channels, c.kernel_size, c.stride, c.groups)
    if (not all(type(v) is int for v in sizes) or not 1 <= c.in_channels <= MAX_CHANNELS
        or not 1 <= c.out_channels <= MAX_CHANNELS or not 1 <= c.kernel_size <= MAX_KERNEL
        or not 1 <= c.stride <= MAX_STRIDE or c.groups < 1 or c.in_channels % c.groups
        or c.out_channels % c.groups or c.act not in ACTIVATIONS):
      fail(path, f"implausible conv {c}")
  if not 1 <= spec.head_classes <= 1 << 20 or not 1 <= spec.resolution <= 1 << 13:
    fail("classifier", f"{spec.head_classes} classes at resolution {spec.resolution}")
  if not spec.blocks:
    fail("blocks", "no blocks")
  x = reads("first_conv", spec.first_conv, 3)
  for i, b in enumerate(spec.blocks):
    p, y = f"blocks_{i}", x
    if b.pointwise1 is not None:
      y = reads(f"{p}/pointwise1", b.pointwise1, y)
    if not b.depthwise.groups == b.depthwise.out_channels == reads(f"{p}/depthwise", b.depthwise, y):
      fail(f"{p}/depthwise", f"not depthwise: {b.depthwise}")
    if b.se is not None and (reads(f"{p}/se_expand", b.se[1], reads(f"{p}/se_reduce", b.se[0], y))
                             != y):
      fail(f"{p}/se_expand", f"gives {b.se[1].out_channels} channels, the gate needs {y}")
    out = reads(f"{p}/pointwise2", b.pointwise2, y)
    if isinstance(b.shortcut, Conv) and reads(f"{p}/shortcut", b.shortcut, x) != out:
      fail(f"{p}/shortcut", f"gives {b.shortcut.out_channels} channels, the block {out}")
    strided = any(c is not None and c.stride != 1 for c in (b.pointwise1, b.depthwise, b.pointwise2))
    if b.shortcut is True and (out != x or strided):
      fail(p, f"identity shortcut from {x} channels to {out}{' with a stride' if strided else ''}")
    x = out
  features = reads("feature_mix", spec.feature_mix, x) if spec.feature_mix is not None else x
  if head_in is not None and head_in != (x if spec.added_feature_mix else features):
    fail("classifier", f"reads {head_in} channels but gets "
         f"{x if spec.added_feature_mix else features}")
  return spec


def strip_arrays(desc: Any) -> Any:
  """The description without its array references (what ``arch/*.json`` ship)."""
  if isinstance(desc, dict):
    return {k: strip_arrays(v) for k, v in desc.items()
            if not (isinstance(v, dict) and "array" in v)}
  if isinstance(desc, list):
    return [strip_arrays(v) for v in desc]
  return desc


def load_arch(name: str) -> dict:
  """The shipped arch-only description ``arch/<name>.json``."""
  path = ARCH_DIR / f"{name}.json"
  if not path.is_file():
    known = sorted(p.stem for p in ARCH_DIR.glob("*.json"))
    raise FileNotFoundError(f"no shipped architecture {name!r} in {ARCH_DIR}; known: {known}")
  from trady_jax.models.weights import read_json
  return read_json(path)


# ----------------------------------------------------------------------------------------------
# MCUNet model-zoo config (fp32 ``<zoo id>.json`` + ``.pth`` with BatchNorm) -> NetSpec, key map

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
# older ``blocks.i.mobile_inverted_conv.`` (``weights.normalise_keys(sd, ZOO_RENAMES)``).
ZOO_RENAMES = ((r"^blocks\.(\d+)\.conv\.", r"blocks.\1.mobile_inverted_conv."),)


def zoo_key_map(spec: NetSpec) -> dict:
  """``{module path: weights.ConvKeys | DenseKeys}`` into a zoo state dict (keys normalised with
  ``ZOO_RENAMES``)."""
  from trady_jax.models.weights import ConvKeys, DenseKeys
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
