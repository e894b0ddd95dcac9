"""Pointwise (1x1) convolution gradients as matrix products, where the backend runs those faster.

A 1x1 convolution with stride ``s`` and no padding is a matrix product over the pixels it reads::

    y[n, i, j, :] = x[n, i*s, j*s, :] @ W[0, 0]        (M = N*H_out*W_out rows, C_in x C_out)

and its gradients are the two other products of the same matrices (paper Eq. 2 for the kernel)::

    dL/dx[rows] = dL/dy @ W[0, 0]^T        dL/dW[0, 0] = x[rows]^T @ dL/dy.

The kernel gradient is a product with a huge contraction (``M`` = 131,072 rows for the first
layers of MobileNetV2 at batch 32, 128x128) and tiny outputs (``C_in x C_out``, e.g. 8 x 48).
XLA's CPU backend lowers the gradient of a 1x1 ``lax.conv_general_dilated`` to a generic
convolution that runs it 3x slower than the same contraction as a 2-D ``dot_general``
(mbv2-w0.35, batch 32, 34 pointwise layers summed: 47 vs 16 ms; the 4-D ``einsum`` over
``n, h, w`` sits between, 28 ms), and the input gradient about 20 % slower
(``experiments/profile_layers.py --pointwise``). ``conv`` keeps XLA's convolution for the
forward pass and computes both gradients as 2-D products (``conv_vjp.with_gradients``: what it
keeps is what autodiff of the convolution keeps, ``x`` only when the kernel is trained);
``ops.selective_conv`` calls ``input_grad`` and ``weight_grad`` directly.

``FORMULATIONS`` holds the measured choice per backend (backends not measured keep XLA's
convolution); ``formulation(name)`` overrides it for code traced in a ``with`` block and the
``TRADY_JAX_POINTWISE`` environment variable (``xla`` | ``dot``) for a process.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from trady_jax import conv_vjp, formulations

Padding = tuple[tuple[int, int], ...]

FORMULATION_NAMES = ("xla", "dot")
FORMULATIONS = {"cpu": "dot"}
DEFAULT = "xla"
_CHOICE = formulations.Choice("pointwise", FORMULATION_NAMES, "TRADY_JAX_POINTWISE")


def formulation(name: str) -> contextlib.AbstractContextManager:
  """Use pointwise formulation ``name`` ('xla' or 'dot') for code traced in this block."""
  return _CHOICE.override(name)


def active_formulation() -> str:
  """The formulation for code traced now: the innermost ``formulation`` block, else
  ``$TRADY_JAX_POINTWISE``, else the backend's measured choice (read at trace time, as
  ``depthwise.active_formulation``)."""
  return _CHOICE.active(FORMULATIONS.get(jax.default_backend(), DEFAULT))


def _xla_conv(x, kernel, strides, padding):
  return lax.conv_general_dilated(x, kernel, tuple(strides), padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _rows(x: jax.Array, strides: Sequence[int]) -> jax.Array:
  """The pixels a strided 1x1 convolution reads, as an ``(M, C)`` matrix."""
  sh, sw = strides
  if (sh, sw) != (1, 1):
    x = x[:, ::sh, ::sw, :]
  return x.reshape(-1, x.shape[-1])


def _contract_rows(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a^T @ b`` for ``(M, p)`` and ``(M, q)``: one 2-D ``dot_general`` over the rows."""
  return lax.dot_general(a, b, (((0,), (0,)), ((), ())))


def input_grad(g: jax.Array, kernel: jax.Array, x_shape: Sequence[int],
               strides: Sequence[int], padding: Padding) -> jax.Array:
  """``dL/dx`` of a 1x1 convolution from its output cotangent ``g`` (needs only the kernel)."""
  if active_formulation() == "xla" or _padded(padding):
    aval = jax.ShapeDtypeStruct(tuple(x_shape), g.dtype)
    (dx,) = jax.linear_transpose(lambda x: _xla_conv(x, kernel, strides, padding), aval)(g)
    return dx
  n, ho, wo, c_out = g.shape
  dx = (g.reshape(-1, c_out) @ kernel.reshape(-1, c_out).T).reshape(n, ho, wo, -1)
  sh, sw = strides
  if (sh, sw) == (1, 1):
    return dx
  h, w = x_shape[1:3]  # the pixels a stride skips get no gradient
  return lax.pad(dx, jnp.zeros((), dx.dtype), ((0, 0, 0), (0, h - (ho - 1) * sh - 1, sh - 1),
                                               (0, w - (wo - 1) * sw - 1, sw - 1), (0, 0, 0)))


def weight_grad(x: jax.Array, g: jax.Array, strides: Sequence[int],
                padding: Padding) -> jax.Array:
  """``dL/dW`` ``(1, 1, C, C_out)`` of a 1x1 convolution from its input ``x`` and cotangent ``g``.

  ``x`` may hold only some input channels (the selected ones, paper Eq. 2): the result is then
  the kernel gradient of those channels alone.
  """
  c_in, c_out = x.shape[-1], g.shape[-1]
  if active_formulation() == "xla" or _padded(padding):
    aval = jax.ShapeDtypeStruct((1, 1, c_in, c_out), g.dtype)
    (dw,) = jax.linear_transpose(lambda w: _xla_conv(x, w, strides, padding), aval)(g)
    return dw
  return _contract_rows(_rows(x, strides), g.reshape(-1, c_out)).reshape(1, 1, c_in, c_out)


def _padded(padding: Padding) -> bool:
  return any(tuple(p) != (0, 0) for p in padding)


def conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding) -> jax.Array:
  """1x1 convolution of NHWC ``x`` with a ``(1, 1, C_in, C_out)`` kernel, differentiated in the
  active formulation (``xla``: plain autodiff of XLA's convolution)."""
  if active_formulation() == "xla" or _padded(padding):
    return _xla_conv(x, kernel, strides, padding)
  return _dot_grad_conv(x, kernel, tuple(strides), padding)


# XLA's 1x1 convolution whose gradients are matrix products. The forward stays XLA's convolution:
# XLA:CPU writes an elementwise consumer (bias, ReLU6) in place over its output, which it does not
# over a reshaped matrix product (one more activation-sized buffer at the selective step's peak:
# mbv2-w0.35, batch 32, budget 27,946, 12.1 instead of 9.5 MiB). It keeps ``x`` and the kernel,
# as autodiff of the convolution does, and for a frozen kernel the kernel alone.
_dot_grad_conv = conv_vjp.with_gradients(
    _xla_conv, input_grad,
    lambda x, g, kernel, strides, padding: weight_grad(x, g, strides, padding))
