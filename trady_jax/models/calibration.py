"""BatchNorm restored in BN-folded networks (the int8 MCU weights) by calibration on images.

A folded conv computes ``z = conv(x; W_f) + b_f``. The restored layer computes
``BN(conv(x; W))`` with ``W = s * W_f`` per output channel and

    running_mean = s * mu,   running_var = s^2 * v,   scale = sqrt(running_var + eps) / s,
    bias = b_f + mu,

where ``mu`` and ``v`` are the mean and variance of ``conv(x; W_f)`` measured on calibration
images (the folded network's own activations, so one pass gives every layer's statistics). For
any ``s > 0`` the restored network in evaluation mode is the folded one (exact in real
arithmetic); in training mode the batch statistics of images like the calibration ones are close
to the running ones, so it starts from the same function.

The free choice is ``s``, and it matters: under train-mode BN the conv kernel is scale
invariant, so ``s`` sets each channel's effective learning rate (about ``lr / s^2`` relative to
the folded kernel) and its gradient norm (the channel norms TraDy ranks and MeDyate samples). We
take ``s = 1 / sqrt(v)`` (``unit_variance=True``): the conv output has unit variance on the
calibration data, as a BN layer expects of its input, and ``scale ~ sqrt(v)``, ``bias ~`` the mean
of the folded pre-activation: O(1) per-channel affine parameters like the fp32 zoo networks', with
the channel's magnitude in the BN scale rather than in the kernel, as in a network trained with
BN. ``s = 1`` (``unit_variance=False``) keeps the int8 kernels as they are. When the fp32 zoo
weights are available they are loaded with their own BN (``convert.convert_state_dict(...,
keep_bn=True)``) and no calibration happens.
"""

from __future__ import annotations

from typing import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trady_jax import costs as costs_lib
from trady_jax import layers

PyTree = dict


def _conv_moments(module: nn.Module, params: PyTree, x: jax.Array, center: dict | None) -> dict:
  """``{path: (mean(y - c), mean((y - c)^2))}`` per channel of every ``SelectiveConv`` output
  ``y`` on batch ``x``; ``c`` is ``center[path]`` (0 when ``center`` is None)."""
  out = {}

  def interceptor(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    m = context.module
    if context.method_name == "__call__" and isinstance(m, layers.SelectiveConv):
      path = "/".join(m.path)
      d = y - (0.0 if center is None else center[path])
      out[path] = (jnp.mean(d, (0, 1, 2)), jnp.mean(jnp.square(d), (0, 1, 2)))
    return y

  with nn.intercept_methods(interceptor):
    module.apply({"params": params}, x)
  return out


def conv_statistics(module: nn.Module, params: PyTree, images: Iterable[np.ndarray]) -> dict:
  """``{conv path: (mean, variance)}`` of every conv output (bias included) over ``images``
  (batches of NHWC arrays), in float64 and in two passes (centred second moments)."""
  batches = [jnp.asarray(b, jnp.float32) for b in images]
  if not batches:
    raise ValueError("calibration needs at least one batch of images")
  run = jax.jit(_conv_moments, static_argnums=0)
  weights = np.asarray([b.shape[0] for b in batches], np.float64) / sum(b.shape[0] for b in batches)

  def average(center, which):
    total = {}
    for w, b in zip(weights, batches):
      for p, m in run(module, params, b, center).items():
        total[p] = total.get(p, 0.0) + w * np.asarray(m[which], np.float64)
    return total

  mean = average(None, 0)
  var = average({p: jnp.asarray(m, jnp.float32) for p, m in mean.items()}, 1)
  return {p: (mean[p], var[p]) for p in mean}


def restore_bn(module: nn.Module, params: PyTree, images: Iterable[np.ndarray], *,
               mode: str = "train", unit_variance: bool = True, eps: float = 1e-5,
               ) -> tuple[nn.Module, PyTree, PyTree]:
  """``(bn_module, params, batch_stats)`` of a BN-folded ``module`` (``bn='folded'``) with
  BatchNorm restored after every conv that has one in ``module.replace(bn=mode)``.

  ``images``: calibration batches (training images, no augmentation). ``unit_variance``: the
  choice of ``s`` (module docstring). Convs without a BN (SE convs) and the classifier are kept.
  """
  bn_module = module.clone(bn=mode)
  stats = conv_statistics(module, params, images)
  costs = costs_lib.trace(bn_module, (1, 32, 32, 3))
  out_params = jax.tree.map(np.asarray, params)
  batch_stats: dict = {}
  for l in costs.convs:
    if not l.has_bn:
      continue
    path = l.path.removesuffix("/kernel")
    *parents, name = path.split("/")
    node, snode = out_params, batch_stats
    for q in parents:
      node, snode = node[q], snode.setdefault(q, {})
    folded = node[name]
    kernel, b_f = np.asarray(folded["kernel"], np.float64), np.asarray(folded["bias"], np.float64)
    z_mean, v = stats[path]
    mu = z_mean - b_f  # mean of conv(x; W_f), the conv without its bias
    s = np.ones_like(v)
    if unit_variance:
      live = v > 1e-10  # a dead (constant) channel keeps its kernel
      s = np.where(live, 1.0 / np.sqrt(np.where(live, v, 1.0)), 1.0)
    rvar = s * s * v
    node[name] = {"kernel": (kernel * s).astype(np.float32),
                  "bn": {"scale": (np.sqrt(rvar + eps) / s).astype(np.float32),
                         "bias": (b_f + mu).astype(np.float32)}}
    snode[name] = {"bn": {"mean": (s * mu).astype(np.float32),
                          "var": rvar.astype(np.float32)}}
  return bn_module, out_params, batch_stats


def head_input_bn(module: nn.Module) -> str | None:
  """Path of the BN whose output the classifier reads through nothing but the average pool
  (an MCUNet ending in a linear bottleneck without shortcut and without feature-mix conv), or
  None when an activation, a shortcut or another layer comes in between."""
  spec = getattr(module, "spec", None)
  if spec is None or spec.feature_mix is not None or not spec.blocks:
    return None
  last = spec.blocks[-1]
  if last.shortcut is not False or last.pointwise2.act is not None:
    return None
  return f"blocks_{len(spec.blocks) - 1}/pointwise2"


def standardize_head_input(module: nn.Module, params: PyTree) -> tuple[PyTree, str | None]:
  """``(params, path)``: the BN feeding a fresh classifier set to scale 1, shift 0.

  That BN's output reaches the classifier only through the (linear) average pool, so the change
  is a per-channel affine map ``f = scale * f' + shift`` of the pooled features, which any new
  linear classifier absorbs: no pretrained information is lost. It fixes the new classifier's
  curvature: on the int8 mbv2-w0.35 body the restored features have ``|f|^2 ~ 360`` (their mean
  dominates) and the classifier's top Hessian eigenvalue at a zero head is ~24, over the
  ``2 / 0.125 = 16`` SGD at lr 0.125 tolerates (it oscillates); on standardised features it is
  ~0.3. The fp32 zoo networks end in feature-mix conv + BN + ReLU6 and are left as they are.
  """
  path = head_input_bn(module)
  if path is None:
    return params, None
  *parents, name = path.split("/")
  node = params
  for q in parents:
    node = node[q]
  bn = node[name]["bn"]
  bn["scale"], bn["bias"] = np.ones_like(bn["scale"]), np.zeros_like(bn["bias"])
  return params, path
