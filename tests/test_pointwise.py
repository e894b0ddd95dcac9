"""Pointwise formulations against ``lax.conv_general_dilated``: forward, input and kernel gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from trady_jax import ops, pointwise, xla

# (stride, padding, (H, W)): unit and strided, odd and even sizes, and a padded 1x1 (XLA's path).
SHAPES = [(1, ((0, 0), (0, 0)), (9, 11)), (2, ((0, 0), (0, 0)), (9, 11)),
          (2, ((0, 0), (0, 0)), (8, 8)), (3, ((0, 0), (0, 0)), (10, 7)),
          (1, ((1, 0), (0, 1)), (6, 5))]
IDS = [f"s{s}_{'pad' if p[0] != (0, 0) else 'nopad'}_{h}x{w}" for s, p, (h, w) in SHAPES]


def _case(i, c_in=6, c_out=10, n=3):
  s, padding, (h, w) = SHAPES[i]
  kx, kw, kg = jax.random.split(jax.random.key(i), 3)
  x = jax.random.normal(kx, (n, h, w, c_in))
  kernel = jax.random.normal(kw, (1, 1, c_in, c_out))
  conv = lambda x, w: lax.conv_general_dilated(x, w, (s, s), padding,
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
  g = jax.random.normal(kg, conv(x, kernel).shape)
  ref = jax.grad(lambda x, w: jnp.sum(conv(x, w) * g), argnums=(0, 1))(x, kernel)
  return x, kernel, (s, s), padding, g, conv(x, kernel), ref


@pytest.mark.parametrize("formulation", ["dot", "xla"])
@pytest.mark.parametrize("i", range(len(SHAPES)), ids=IDS)
def test_forward_and_gradients_equal_xla_conv(i, formulation):
  x, kernel, strides, padding, g, y_ref, (rdx, rdw) = _case(i)
  with pointwise.formulation(formulation):
    f = lambda x, w: pointwise.conv(x, w, strides, padding)
    y = jax.jit(f)(x, kernel)
    dx, dw = jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w) * g), argnums=(0, 1)))(x, kernel)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, rdx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, rdw, rtol=1e-5, atol=1e-4)


def test_gradients_are_matrix_products_not_convolutions():
  x, kernel, strides, padding, g, _, _ = _case(1)
  for name, convs, dots in (("dot", 0, 2), ("xla", 2, 0)):  # (the forward is dead code here)
    grad = lambda x, w: jax.grad(lambda x, w: jnp.sum(  # a fresh function: jit caches by function
        pointwise.conv(x, w, strides, padding) * g), argnums=(0, 1))(x, kernel)
    with pointwise.formulation(name):
      hlo = jax.jit(grad).lower(x, kernel).as_text()
    assert (hlo.count("stablehlo.convolution"), hlo.count("stablehlo.dot_general")) == (convs, dots)


@pytest.mark.parametrize("i", [0, 1], ids=IDS[:2])
def test_selective_and_output_selective_conv_stay_exact(i):
  x, kernel, strides, padding, g, _, (rdx, rdw) = _case(i)
  idx = jnp.array([4, 0, 2], jnp.int32)
  out_idx = jnp.array([9, 3], jnp.int32)
  for name in ("dot", "xla"):
    with pointwise.formulation(name):
      sel = jax.jit(jax.grad(lambda x, w: jnp.sum(
          ops.selective_conv(x, w, idx, strides, padding, 1) * g), argnums=(0, 1)))(x, kernel)
      out = jax.jit(jax.grad(lambda x, w: jnp.sum(
          ops.output_selective_conv(x, w, out_idx, strides, padding, 1) * g),
                             argnums=(0, 1)))(x, kernel)
    for dx, dw, keep in ((*sel, (slice(None), slice(None), idx, slice(None))),
                         (*out, (Ellipsis, out_idx))):
      np.testing.assert_allclose(dx, rdx, rtol=1e-5, atol=1e-5)
      mask = np.zeros(kernel.shape, bool)
      mask[keep] = True
      np.testing.assert_allclose(dw, np.where(mask, rdw, 0.0), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("formulation", ["dot", "xla"])
def test_a_frozen_kernel_keeps_no_input(formulation):
  x, kernel, strides, padding, g, _, (rdx, _) = _case(1)
  f = lambda x, w: jnp.sum(pointwise.conv(x * 3.0, w, strides, padding) * g)
  with pointwise.formulation(formulation):
    frozen = lambda x: f(x, lax.stop_gradient(kernel))
    kept = xla.residual_bytes(frozen, x)["float_activations"]
    trained = xla.residual_bytes(lambda p: f(*p), (x, kernel))["float_activations"]
    dx = jax.jit(jax.grad(frozen))(x)
  assert trained - kept == x.size * 4  # the layer input (x * 3) is kept only to train the kernel
  np.testing.assert_allclose(dx, 3.0 * rdx, rtol=1e-5, atol=1e-4)

