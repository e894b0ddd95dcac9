"""The same network in PyTorch, with the same weights: the peer that ``bench_step.py --peer torch``
times.

``torch_model(model, params)`` builds a ``torch.nn.Module`` from a Flax ``mcunet.MCUNet`` (the MCU
nets and full-width MobileNetV2) or ``resnet.ResNet`` and copies the parameters into it (HWIO ->
OIHW kernels). Convs carry a bias (BatchNorm folded, as in the Flax models), activations are the
same; inputs are NCHW. ``sgd_step(net, lr)`` is PyTorch's plain full fine-tuning step (cross-entropy,
SGD). torch is an optional extra, imported only here and only when called.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from trady_jax.models import mcunet, resnet


def available() -> bool:
  """Whether torch can be imported."""
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


def _torch():
  try:
    import torch
  except ImportError as err:
    raise ImportError("the PyTorch peer needs torch (an optional extra: pip install torch)") from err
  return torch


@functools.cache
def _modules() -> SimpleNamespace:
  """The torch module classes (defined once torch is imported)."""
  torch = _torch()
  nn, F = torch.nn, torch.nn.functional
  acts = {"relu6": F.relu6, "relu": F.relu, None: lambda x: x}

  class ConvAct(nn.Conv2d):
    """Conv with bias and ``k // 2`` padding (``layers.SelectiveConv``), then its activation."""

    def __init__(self, c: mcunet.Conv):
      super().__init__(c.in_channels, c.out_channels, c.kernel_size, c.stride,
                       c.kernel_size // 2, groups=c.groups)
      self.act = acts[c.act]

    def forward(self, x):
      return self.act(super().forward(x))

  class InvertedResidual(nn.Module):
    """``mcunet.InvertedResidual``: the same submodule names."""

    def __init__(self, b: mcunet.Block):
      super().__init__()
      self.b = b
      named = {"pointwise1": b.pointwise1, "depthwise": b.depthwise, "pointwise2": b.pointwise2,
               "se_reduce": b.se and b.se[0], "se_expand": b.se and b.se[1],
               "shortcut": b.shortcut if isinstance(b.shortcut, mcunet.Conv) else None}
      for name, c in named.items():
        if c is not None:
          self.add_module(name, ConvAct(c))

    def forward(self, x):
      b, y = self.b, x
      if b.pointwise1 is not None:
        y = self.pointwise1(y)
      y = self.depthwise(y)
      if b.se is not None:
        g = self.se_reduce(y.mean((2, 3), keepdim=True))
        y = y * (F.relu6(self.se_expand(g) + 3.0) / 6.0)
      y = self.pointwise2(y)
      if isinstance(b.shortcut, mcunet.Conv):
        return y + self.shortcut(x)
      return y + x if b.shortcut else y

  class MCUNet(nn.Module):
    """``mcunet.MCUNet``: first_conv, blocks_i, [feature_mix], pool, classifier."""

    def __init__(self, spec: mcunet.NetSpec, num_classes: int):
      super().__init__()
      self.first_conv = ConvAct(spec.first_conv)
      self.blocks = [InvertedResidual(b) for b in spec.blocks]
      for i, b in enumerate(self.blocks):
        self.add_module(f"blocks_{i}", b)
      self.feature_mix = ConvAct(spec.feature_mix) if spec.feature_mix else None
      self.classifier = nn.Linear(spec.features, num_classes)

    def forward(self, x):
      x = self.first_conv(x)
      for b in self.blocks:
        x = b(x)
      if self.feature_mix is not None:
        x = self.feature_mix(x)
      return self.classifier(x.mean((2, 3)))

  def conv(cin, cout, k, stride, act=None):
    return ConvAct(mcunet.Conv(cin, cout, k, stride, act=act))

  class ResBlock(nn.Module):
    """``resnet.ResBlock``: conv1, conv2, [conv3], [downsample]."""

    def __init__(self, cin: int, planes: int, stride: int, bottleneck: bool):
      super().__init__()
      cout = planes * (4 if bottleneck else 1)
      if bottleneck:
        self.conv1 = conv(cin, planes, 1, 1, "relu")
        self.conv2 = conv(planes, planes, 3, stride, "relu")
        self.conv3 = conv(planes, cout, 1, 1)
      else:
        self.conv1 = conv(cin, planes, 3, stride, "relu")
        self.conv2 = conv(planes, cout, 3, 1)
      self.downsample = conv(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
      y = self.conv2(self.conv1(x))
      y = self.conv3(y) if hasattr(self, "conv3") else y
      return F.relu(y + (x if self.downsample is None else self.downsample(x)))

  class ResNet(nn.Module):
    """``resnet.ResNet``: conv1, max pool, layer<s>_<b>, pool, classifier."""

    def __init__(self, m: resnet.ResNet):
      super().__init__()
      self.conv1 = conv(3, m.width, 7, 2, "relu")
      self.blocks, cin = [], m.width
      for name, s, b in m.block_names():
        block = ResBlock(cin, m.width * 2**s, 2 if (b == 0 and s > 0) else 1, m.bottleneck)
        self.add_module(name, block)
        self.blocks.append(block)
        cin = m.width * 2**s * (4 if m.bottleneck else 1)
      self.classifier = nn.Linear(cin, m.num_classes)

    def forward(self, x):
      x = F.max_pool2d(self.conv1(x), 3, 2, 1)
      for b in self.blocks:
        x = b(x)
      return self.classifier(x.mean((2, 3)))

  return SimpleNamespace(MCUNet=MCUNet, ResNet=ResNet)


def torch_model(model: Any, params: Any):
  """A ``torch.nn.Module`` computing ``model.apply({'params': params}, x)`` on NCHW ``x``."""
  if getattr(model, "bn", "folded") != "folded":
    raise NotImplementedError(f"the PyTorch peer is the folded form (conv + bias); got bn="
                              f"{model.bn!r}")
  classes = _modules()
  if isinstance(model, mcunet.MCUNet):
    net = classes.MCUNet(model.spec, model.num_classes)
  elif isinstance(model, resnet.ResNet):
    net = classes.ResNet(model)
  else:
    raise NotImplementedError(f"no PyTorch peer for {type(model).__name__}; supported: MCUNet "
                              "(mbv2-w0.35, mcunet-in1, proxyless-w0.3, mobilenetv2) and ResNet")
  load_params(net, params)
  return net


def load_params(net, params: Any) -> None:
  """Copy Flax ``params`` into ``net``, whose modules have the same names (``a/b/kernel`` ->
  ``a.b.weight``): conv kernels HWIO -> OIHW, dense ``(in, out)`` -> ``(out, in)``."""
  torch = _torch()
  import jax
  state = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [str(getattr(k, "key", k)) for k in path]
    a = np.array(leaf, np.float32)  # a writable copy
    if names[-1] == "kernel":
      a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T
    key = ".".join(names[:-1] + [{"kernel": "weight"}.get(names[-1], names[-1])])
    state[key] = torch.from_numpy(np.ascontiguousarray(a))
  own = net.state_dict()
  if set(state) != set(own):
    raise ValueError(f"parameters do not match the PyTorch peer: only in Flax "
                     f"{sorted(set(state) - set(own))[:5]}, only in torch "
                     f"{sorted(set(own) - set(state))[:5]}")
  for k, v in state.items():
    if tuple(v.shape) != tuple(own[k].shape):
      raise ValueError(f"{k}: Flax shape {tuple(v.shape)} vs torch {tuple(own[k].shape)}")
  net.load_state_dict(state)


def to_nchw(images: Any):
  """NHWC array -> NCHW float32 torch tensor."""
  x = np.asarray(images, np.float32).transpose(0, 3, 1, 2)
  return _torch().from_numpy(np.ascontiguousarray(x))


def sgd_step(net, lr: float = 0.01) -> Callable:
  """``step(x, y) -> loss``: full fine-tuning, forward + cross-entropy + backward + SGD update."""
  torch = _torch()
  opt = torch.optim.SGD(net.parameters(), lr=lr)

  def step(x, y):
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())

  return step


def timed_full_step(model, params, batch, jax_steps: dict, repeats: int) -> dict:
  """``peer`` entries: PyTorch's full fine-tuning step and its forward pass (no gradients) on the
  same network, weights and batch, timed in rounds interleaved with ``jax_steps`` (zero-argument
  calls, re-timed beside them)."""
  if not available():
    print("peer torch: skipped, torch is not installed (optional: pip install torch)", flush=True)
    return {"torch": "not installed"}
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  try:
    net = torch_model(model, params)
  except NotImplementedError as err:  # e.g. BN layers, or a model family it does not build
    print(f"peer torch: skipped, {err}", flush=True)
    return {"torch": f"unsupported: {err}"}
  x = to_nchw(batch["image"])
  y = torch.from_numpy(np.asarray(batch["label"], np.int64))
  ref = np.asarray(model.apply({"params": params}, batch["image"]))
  with torch.no_grad():
    diff = float(np.abs(net(x).numpy() - ref).max())
  if diff > 1e-3 * max(1.0, float(np.abs(ref).max())):
    raise SystemExit(f"the PyTorch peer is not the same network: logits differ by {diff:.3g}")
  step = sgd_step(net, 0.01)

  def forward():
    with torch.no_grad():
      return net(x)

  from trady_jax import xla
  times = xla.interleaved_median_times({**jax_steps, "torch": lambda: step(x, y),
                                        "torch_forward": forward}, repeats=repeats, warmup=2)
  step_s, forward_s = times.pop("torch"), times.pop("torch_forward")
  print(f"  torch: full step {step_s:.3f} s, forward {forward_s:.3f} s  ({torch.__version__}, "
        f"{torch.get_num_threads()} "
        f"threads; logits match the Flax model to {diff:.1e}); interleaved with it: "
        + ", ".join(f"{k} {v:.3f} s" for k, v in times.items()), flush=True)
  return {"torch_full_step_s": step_s, "torch_forward_s": forward_s,
          "torch_version": torch.__version__,
          "torch_threads": torch.get_num_threads(), "torch_logits_max_abs_diff": diff,
          "interleaved_step_s": times}
