"""Depthwise formulations against ``lax.conv_general_dilated``: forward, input and kernel gradients."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from trady_jax import depthwise, ops, pointwise, xla
from trady_jax.layers import explicit_padding

# Every kernel size, stride and multiplier the models use, symmetric and asymmetric padding,
# odd and even spatial sizes.
SHAPES = [
    # (kernel, stride, multiplier, padding, (H, W))
    (3, 1, 1, "SAME_TORCH", (9, 11)),
    (3, 2, 1, "SAME_TORCH", (9, 11)),
    (3, 2, 1, "SAME_TORCH", (8, 8)),
    (5, 1, 1, "SAME_TORCH", (10, 7)),
    (5, 2, 1, "SAME_TORCH", (11, 11)),
    (7, 1, 1, "SAME_TORCH", (9, 9)),
    (7, 2, 1, "SAME_TORCH", (12, 10)),
    (3, 2, 2, "SAME_TORCH", (9, 11)),
    (3, 1, 1, ((0, 1), (1, 0)), (8, 9)),
    (5, 2, 1, ((1, 2), (2, 1)), (9, 11)),
    (3, 1, 1, "VALID", (7, 9)),
]
IDS = [f"k{k}_s{s}_m{m}_{'asym' if isinstance(p, tuple) else p}_{h}x{w}"
       for k, s, m, p, (h, w) in SHAPES]


def _case(i, c=5, n=3):
  k, s, m, pad, (h, w) = SHAPES[i]
  kx, kw, kg = jax.random.split(jax.random.key(i), 3)
  x = jax.random.normal(kx, (n, h, w, c))
  kernel = jax.random.normal(kw, (k, k, 1, c * m))
  padding = explicit_padding((k, k), pad)
  ref = lax.conv_general_dilated(x, kernel, (s, s), padding, feature_group_count=c,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
  g = jax.random.normal(kg, ref.shape)
  return x, kernel, (s, s), padding, ref, g


def _reference_grads(x, kernel, strides, padding, g):
  f = lambda x, w: jnp.sum(lax.conv_general_dilated(
      x, w, strides, padding, feature_group_count=x.shape[-1],
      dimension_numbers=("NHWC", "HWIO", "NHWC")) * g)
  return jax.grad(f, argnums=(0, 1))(x, kernel)


@pytest.mark.parametrize("formulation", ["shifted", "sliced", "xla"])
@pytest.mark.parametrize("i", range(len(SHAPES)), ids=IDS)
def test_forward_and_gradients_equal_xla_conv(i, formulation):
  x, kernel, strides, padding, ref, g = _case(i)
  with depthwise.formulation(formulation):
    y = jax.jit(lambda x, w: depthwise.conv(x, w, strides, padding))(x, kernel)
    dx, dw = jax.jit(jax.grad(lambda x, w: jnp.sum(depthwise.conv(x, w, strides, padding) * g),
                              argnums=(0, 1)))(x, kernel)
  rdx, rdw = _reference_grads(x, kernel, strides, padding, g)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, rdx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, rdw, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("i", [0, 1, 4, 7], ids=[IDS[j] for j in (0, 1, 4, 7)])
def test_weight_grad_in_batch_chunks_equals_whole(i, monkeypatch):
  x, kernel, strides, padding, _, g = _case(i, n=6)
  hw = kernel.shape[:2]
  with depthwise.formulation("shifted"):
    monkeypatch.setitem(depthwise.CHUNK_BYTES, "cpu", None)
    whole = depthwise.weight_grad(x, g, hw, strides, padding)
    monkeypatch.setitem(depthwise.CHUNK_BYTES, "cpu", (x[0].size + g[0].size) * 4 * 2)
    dw = lambda x, g: depthwise.weight_grad(x, g, hw, strides, padding)
    assert "scan" in str(jax.make_jaxpr(dw)(x, g)), "small chunks must split the batch"
    chunked = dw(x, g)
  _, rdw = _reference_grads(x, kernel, strides, padding, g)
  np.testing.assert_allclose(whole, rdw, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-4)


def test_forward_and_weight_grad_temp_is_at_most_one_padded_copy():
  x = jnp.ones((16, 24, 24, 8))
  kernel = jnp.ones((3, 3, 1, 8))
  padding = ((1, 1), (1, 1))
  padded = 16 * 26 * 26 * 8 * 4
  with depthwise.formulation("shifted"):
    fwd = xla.compiled_stats(lambda x: depthwise.conv(x, kernel, (1, 1), padding), x)
    dw = xla.compiled_stats(lambda x: depthwise.weight_grad(x, x, (3, 3), (1, 1), padding), x)
  assert fwd["temp_bytes"] <= padded, fwd
  with depthwise.formulation("sliced"):  # reads the input in place: no padded copy at all
    sliced = xla.compiled_stats(lambda x: depthwise.conv(x, kernel, (1, 1), padding), x)
  assert sliced["temp_bytes"] < padded // 8, sliced
  partial_sums = 9 * 24 * 8 * 4  # per tap, one row of sums per output column
  assert dw["temp_bytes"] <= padded + 2 * partial_sums, dw  # the products are never stored


def test_chunk_is_a_divisor_within_the_byte_limit(monkeypatch):
  monkeypatch.setitem(depthwise.CHUNK_BYTES, jax.default_backend(), 1000)
  for n, per in itertools.product([1, 6, 7, 32], [1, 90, 300, 2000]):
    c = depthwise._chunk(n, per)
    assert n % c == 0 and (c == 1 or c * per <= 1000)


def test_selective_conv_uses_the_fast_formulation_and_stays_exact():
  x, kernel, strides, padding, _, g = _case(1, c=6)
  idx = jnp.array([5, 0, 2], jnp.int32)
  grads = {}
  for name in ("shifted", "sliced", "xla"):
    with depthwise.formulation(name):
      f = jax.jit(jax.grad(lambda x, w: jnp.sum(
          ops.selective_conv(x, w, idx, strides, padding, x.shape[-1]) * g), argnums=(0, 1)))
      grads[name] = f(x, kernel)
      hlo = f.lower(x, kernel).as_text()
    # The shifted formulation has no grouped convolution left in the program.
    assert ("feature_group_count" in hlo) == (name == "xla")
  for name in ("shifted", "sliced"):
    for a, b in zip(grads[name], grads["xla"]):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("module", [depthwise, pointwise], ids=["depthwise", "pointwise"])
def test_bad_formulation_names_are_refused(module, monkeypatch):
  kind = module.__name__.rsplit(".", 1)[-1]
  with pytest.raises(ValueError, match=f"unknown {kind} formulation"):
    with module.formulation("fast"):
      pass
  monkeypatch.setenv(f"TRADY_JAX_{kind.upper()}", "cudnn")
  with pytest.raises(ValueError, match=f"TRADY_JAX_{kind.upper()}"):
    module.active_formulation()
  monkeypatch.setenv(f"TRADY_JAX_{kind.upper()}", "xla")
  assert module.active_formulation() == "xla"


def test_forward_without_backward_has_its_own_formulation(monkeypatch):
  x, kernel, strides, padding, ref, _ = _case(0)
  table = {"forward": "xla", "frozen_forward": "shifted"}
  monkeypatch.setitem(depthwise.FORMULATIONS, jax.default_backend(), table)
  f = lambda x: depthwise.conv(x, kernel, strides, padding)
  assert "feature_group_count" in jax.jit(f).lower(x).as_text()
  with depthwise.no_backward():
    g = lambda x: depthwise.conv(x, kernel, strides, padding)  # jit caches by function
    assert "feature_group_count" not in jax.jit(g).lower(x).as_text()
    np.testing.assert_allclose(jax.jit(g)(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("formulation", ["sliced", "xla"])
def test_a_frozen_kernel_keeps_no_input_and_passes_the_exact_input_gradient(formulation):
  x, kernel, strides, padding, _, g = _case(1)
  f = lambda x, w: jnp.sum(depthwise.conv(x * 3.0, w, strides, padding) * g)
  with depthwise.formulation(formulation):
    frozen = lambda x: f(x, lax.stop_gradient(kernel))
    kept = xla.residual_bytes(frozen, x)["float_activations"]
    trained = xla.residual_bytes(lambda p: f(*p), (x, kernel))["float_activations"]
    dx = jax.jit(jax.grad(frozen))(x)
  assert trained - kept == x.size * 4  # the layer input (x * 3) is kept only to train the kernel
  rdx, _ = _reference_grads(x * 3.0, kernel, strides, padding, g)
  np.testing.assert_allclose(dx, 3.0 * rdx, rtol=1e-5, atol=1e-4)
