"""MCUNet-family networks (mbv2-w0.35, mcunet-in1, proxyless-w0.3) built from a ``NetSpec``.

A ``NetSpec`` (first conv, inverted-residual ``Block``s, optional feature-mix conv) is read from
the MIT int8 description (``formats.int8``) or the MCUNet model-zoo config (``formats.zoo``) and
checked by ``check_spec`` (method-spec 8). ``MCUNet(spec, num_classes)`` is a Flax module whose
convs are ``layers.SelectiveConv`` created in MIT conv order (first_conv, then per block
pointwise1, depthwise, [SE reduce, expand], pointwise2, [shortcut conv], ..., feature_mix), the
order behind the Sparse Update ``manual_weight_idx`` (method-spec 7.3). ``MCUNet.bn`` decides
BatchNorm: folded into every conv's bias, or a real BN after each conv (``batchnorm``).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from trady_jax import layers, ops, prefix

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
    return layers.classifier_head(x, self.num_classes, pooled=pooled)

  @nn.nowrap
  def stage_of(self, path: str) -> int:
    """The stage of a parameter path (``'blocks_3/depthwise/kernel'`` -> 4)."""
    return prefix.stage_of_path(path, "first_conv",
                                [f"blocks_{i}" for i in range(len(self.spec.blocks))])


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
