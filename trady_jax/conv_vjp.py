"""A convolution whose VJP keeps its input only when its kernel is trained.

Autodiff of ``y = conv(x, W)`` needs ``x`` for one thing alone, the kernel gradient (paper Eq. 2);
the input gradient needs only ``W``. ``with_gradients`` wraps a forward function and the two
gradient functions of one convolution formulation (``depthwise``, ``pointwise``) in a
``jax.custom_vjp`` with symbolic zeros: a trained kernel keeps ``x`` and ``W``, as autodiff of
``lax.conv_general_dilated`` does, and a frozen kernel (no gradient asked of it, e.g. under
``stop_gradient``) keeps ``W`` alone, so a frozen layer on the gradient path holds no activation.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

Forward = Callable[..., jax.Array]  # (x, kernel, strides, padding) -> y
InputGrad = Callable[..., jax.Array]  # (g, kernel, x_shape, strides, padding) -> dL/dx
WeightGrad = Callable[..., jax.Array]  # (x, g, kernel, strides, padding) -> dL/dW


def with_gradients(forward: Forward, input_grad: InputGrad, weight_grad: WeightGrad) -> Forward:
  """``forward(x, kernel, strides, padding)`` differentiated by ``input_grad`` and ``weight_grad``
  (``strides`` and ``padding`` static and hashable)."""

  @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
  def conv(x, kernel, strides, padding):
    return forward(x, kernel, strides, padding)

  def conv_fwd(x, kernel, strides, padding):
    # symbolic_zeros: x and kernel arrive as CustomVJPPrimal(value, perturbed)
    y = forward(x.value, kernel.value, strides, padding)
    # a frozen kernel: no x, only its shape (an empty array of one example's shape and dtype)
    keep_x = x.value if kernel.perturbed else jnp.empty((0, *x.value.shape[1:]), x.value.dtype)
    return y, (keep_x, kernel.value)

  def conv_bwd(strides, padding, residuals, g):
    x, kernel = residuals
    x_shape = (g.shape[0], *x.shape[1:])
    if isinstance(g, jax.custom_derivatives.SymbolicZero):
      return jnp.zeros(x_shape, x.dtype), jnp.zeros_like(kernel)
    dw = (jnp.zeros_like(kernel) if x.shape[0] == 0
          else weight_grad(x, g, kernel, strides, padding))
    return input_grad(g, kernel, x_shape, strides, padding), dw

  conv.defvjp(conv_fwd, conv_bwd, symbolic_zeros=True)
  return functools.wraps(forward)(conv)
