"""BatchNorm after each conv, in the run-level mode ``--bn`` (``MODES``).

* ``'folded'``: no BN layer; the conv has a bias (BN folded into conv + bias), the int8 MCU
  deployment form;
* ``'train'``: the papers' protocol (PyTorch ``model.train()``): batch statistics in the forward
  pass, running statistics updated (momentum 0.1, unbiased variance, as PyTorch), scale and shift
  trained for every strategy and not charged to the budget (method-spec 1.2: BN is outside the
  memory model);
* ``'shift'``: batch statistics in the forward pass, treated as constants in the backward; scale
  frozen, shift trained. The layer is then affine with constant coefficients: its backward stores
  no activation.

Evaluation (``'batch_stats'`` not mutable) uses the running statistics in both BN modes.

Memory the papers never count: in ``'train'`` mode the backward pass of a BN needs its normalised
input ``x_hat`` (``dscale = sum(g x_hat)``, ``dx`` uses it too), one float per element of the conv
output, for every BN on the gradient path; since the shift of the first BN is trained, that is every
BN of the network. ``normalize`` is a ``custom_vjp`` that keeps exactly that tensor (and per-channel
vectors), the cheapest exact form: ``bn_bytes`` counts it.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

MODES = ("folded", "train", "shift")


def check_mode(mode: str) -> str:
  if mode not in MODES:
    raise ValueError(f"unknown BatchNorm mode {mode!r}; use one of {MODES}")
  return mode


def _moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-channel mean and biased variance over all axes but the last (two passes, exact)."""
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  return mean, jnp.mean(jnp.square(x - mean), axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float):
  """Train-mode BN ``(scale * (x - mean) / sqrt(var + eps) + bias, mean, var)`` with batch
  statistics; the backward keeps only ``x_hat`` (mean and var carry no gradient: they feed the
  running statistics only)."""
  return _normalize_fwd(x, scale, bias, eps)[0]


def _normalize_fwd(x, scale, bias, eps):
  mean, var = _moments(x)
  inv = jax.lax.rsqrt(var + eps)
  xhat = (x - mean) * inv
  return (xhat * scale + bias, mean, var), (xhat, inv * scale)


def _normalize_bwd(eps, res, cotangents):
  xhat, gain = res
  g = cotangents[0]
  axes = tuple(range(g.ndim - 1))
  dbias = jnp.sum(g, axes)
  dscale = jnp.sum(g * xhat, axes)
  n = g.size // g.shape[-1]
  dx = gain * (g - (dbias + xhat * dscale) / n)
  return dx, dscale, dbias


normalize.defvjp(_normalize_fwd, _normalize_bwd)


class BatchNorm(nn.Module):
  """BatchNorm over the last axis in ``mode`` ``'train'`` or ``'shift'`` (see the module doc).

  Params ``scale``, ``bias``; ``'batch_stats'`` ``mean``, ``var`` (PyTorch's running statistics).
  Batch statistics are used when ``'batch_stats'`` is mutable (``model.apply(..., mutable=
  ['batch_stats'])``, training), running statistics otherwise (evaluation).
  """
  mode: str = "train"
  momentum: float = 0.1  # PyTorch convention: new = (1 - momentum) * old + momentum * batch
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones_init(), (c,))
    bias = self.param("bias", nn.initializers.zeros_init(), (c,))
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
    if not self.is_mutable_collection("batch_stats"):
      return (x - ra_mean.value) * (scale * jax.lax.rsqrt(ra_var.value + self.epsilon)) + bias
    if check_mode(self.mode) == "train":
      y, mean, var = normalize(x, scale, bias, self.epsilon)
    else:  # 'shift'
      mean, var = jax.lax.stop_gradient(_moments(x))
      gain = jax.lax.stop_gradient(scale) * jax.lax.rsqrt(var + self.epsilon)
      y = (x - mean) * gain + bias
    if not self.is_initializing():
      n = x.size // c
      m = self.momentum
      ra_mean.value = (1 - m) * ra_mean.value + m * mean
      ra_var.value = (1 - m) * ra_var.value + m * var * (n / max(n - 1, 1))
    return y


def stored_bytes(costs, mode: str, batch: int, dtype_bytes: int = 4) -> int:
  """Bytes the BN backward keeps for a batch: ``x_hat`` of every BN in ``'train'`` mode (all of
  them are on the gradient path, the first BN's shift being trained), nothing otherwise.

  ``costs``: the ``NetworkCosts`` of the model; a BN follows every conv except those without one
  (``has_bn``: the SE convs of mcunet-in1).
  """
  if check_mode(mode) != "train":
    return 0
  return sum(batch * l.out_channels * l.out_hw[0] * l.out_hw[1] * dtype_bytes
             for l in costs.convs if l.has_bn)
