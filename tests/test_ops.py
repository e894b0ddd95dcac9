"""Selective kernels against plain autodiff: selected-channel gradients equal dense ones."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trady_jax import ops
from trady_jax.selection import PAD
from trady_jax.layers import explicit_padding

CASES = {
    # name: (kernel (kh, kw), C_in, C_out, groups, strides, padding)
    "regular_3x3_s1": ((3, 3), 6, 5, 1, (1, 1), "SAME_TORCH"),
    "regular_3x3_s2": ((3, 3), 6, 5, 1, (2, 2), "SAME_TORCH"),
    "regular_5x5_s2_asym": ((5, 5), 4, 3, 1, (2, 2), ((1, 2), (2, 1))),
    "pointwise": ((1, 1), 8, 7, 1, (1, 1), "VALID"),
    "pointwise_s2": ((1, 1), 8, 7, 1, (2, 2), "VALID"),
    "depthwise_3x3_s1": ((3, 3), 6, 6, 6, (1, 1), "SAME_TORCH"),
    "depthwise_5x5_s2": ((5, 5), 6, 6, 6, (2, 2), "SAME_TORCH"),
    "depthwise_mult2_s2": ((3, 3), 4, 8, 4, (2, 2), "SAME_TORCH"),
}


def _setup(name):
  ks, cin, cout, g, strides, pad = CASES[name]
  kx, kw, kc = jax.random.split(jax.random.key(zlib.crc32(name.encode())), 3)
  x = jax.random.normal(kx, (2, 9, 11, cin))
  w = jax.random.normal(kw, (*ks, cin // g, cout))
  padding = explicit_padding(ks, pad)
  out = ops.conv2d(x, w, strides, padding, g)
  cot = jax.random.normal(kc, out.shape)
  return x, w, cot, strides, padding, g


@pytest.mark.parametrize("name", sorted(CASES))
def test_selected_conv_grads_equal_dense(name):
  x, w, cot, strides, padding, g = _setup(name)
  cin = x.shape[-1]
  idx = jnp.array([cin - 1, 0, 2], jnp.int32)  # unsorted on purpose

  dense = jax.grad(lambda x, w: jnp.sum(ops.conv2d(x, w, strides, padding, g) * cot),
                   argnums=(0, 1))(x, w)
  sparse = jax.jit(jax.grad(
      lambda x, w, i: jnp.sum(ops.selective_conv(x, w, i, strides, padding, g) * cot),
      argnums=(0, 1)))(x, w, idx)

  np.testing.assert_allclose(sparse[0], dense[0], rtol=1e-5, atol=1e-5)  # input grad: exact path
  mult = w.shape[-1] // cin if g > 1 else 1
  if g > 1:  # depthwise: input channel c owns output channels c*mult .. c*mult+mult-1
    out = (np.asarray(idx)[:, None] * mult + np.arange(mult)).ravel()
    sel_sparse, sel_dense = sparse[1][..., out], dense[1][..., out]
    rest = np.delete(np.asarray(sparse[1]), out, axis=-1)
  else:
    sel_sparse, sel_dense = sparse[1][:, :, idx, :], dense[1][:, :, idx, :]
    rest = np.delete(np.asarray(sparse[1]), np.asarray(idx), axis=-2)
  np.testing.assert_allclose(sel_sparse, sel_dense, rtol=1e-5, atol=1e-5)
  assert np.all(rest == 0), "unselected channels must get an exact zero gradient"


@pytest.mark.parametrize("output", [False, True])
def test_selected_dense_grads_equal_dense(output):
  """Input features (TraDy) or output features (Velocity's neurons) of a dense kernel."""
  kx, kw, kc = jax.random.split(jax.random.key(3), 3)
  x, w = jax.random.normal(kx, (4, 3, 10)), jax.random.normal(kw, (10, 6))
  cot = jax.random.normal(kc, (4, 3, 6))
  idx = jnp.array([5, 1, 4], jnp.int32)
  op, axis = (ops.output_selective_dense, 1) if output else (ops.selective_dense, 0)
  dense = jax.grad(lambda x, w: jnp.sum((x @ w) * cot), argnums=(0, 1))(x, w)
  sparse = jax.grad(lambda x, w: jnp.sum(op(x, w, idx) * cot), argnums=(0, 1))(x, w)
  np.testing.assert_allclose(sparse[0], dense[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jnp.take(sparse[1], idx, axis), jnp.take(dense[1], idx, axis),
                             rtol=1e-5, atol=1e-5)
  assert np.all(np.delete(np.asarray(sparse[1]), np.asarray(idx), axis=axis) == 0)


def test_empty_selection_gives_zero_kernel_grad_and_exact_input_grad():
  x, w, cot, strides, padding, g = _setup("depthwise_3x3_s1")
  idx = jnp.zeros((0,), jnp.int32)
  gx, gw = jax.grad(lambda x, w: jnp.sum(ops.selective_conv(x, w, idx, strides, padding, g) * cot),
                    argnums=(0, 1))(x, w)
  dx = jax.grad(lambda x: jnp.sum(ops.conv2d(x, w, strides, padding, g) * cot))(x)
  np.testing.assert_allclose(gx, dx, rtol=1e-5, atol=1e-5)
  assert not np.any(gw)


def test_only_selected_channels_are_saved_for_backward():
  x, w, cot, strides, padding, g = _setup("regular_3x3_s1")
  idx = jnp.array([1, 3], jnp.int32)
  f = lambda x, w: ops.selective_conv(x, w, idx, strides, padding, g)
  residuals = jax.vjp(f, x, w)[1]
  shapes = [tuple(leaf.shape) for leaf in jax.tree.leaves(residuals)]
  assert (2, 9, 11, 2) in shapes and x.shape not in shapes


def test_grouped_conv_is_a_clear_error():
  x = jnp.ones((1, 5, 5, 4))
  w = jnp.ones((3, 3, 2, 4))
  with pytest.raises(NotImplementedError, match="groups=2"):
    jax.grad(lambda w: ops.selective_conv(x, w, jnp.array([0], jnp.int32), (1, 1),
                                          ((1, 1), (1, 1)), 2).sum())(w)


@pytest.mark.parametrize("fn, ref", [(ops.relu6, lambda x: jnp.clip(x, 0, 6)),
                                     (ops.relu, jax.nn.relu)])
def test_mask_activations_match_autodiff(fn, ref):
  x = jnp.linspace(-3, 9, 101)
  np.testing.assert_array_equal(fn(x), ref(x))
  np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(fn(x) * x))(x),
                                jax.grad(lambda x: jnp.sum(ref(x) * x))(x))


def test_relu_masks_are_bit_packed_and_plain_mode_saves_floats():
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 16)) * 4
  res = jax.tree.leaves(jax.vjp(ops.relu6, x)[1])
  assert [(r.dtype, r.shape) for r in res] == [(jnp.uint8, (2, 4, 4, 2))]  # 16 channels -> 2 bytes
  with ops.plain_activations():
    g_plain = jax.grad(lambda x: jnp.sum(ops.relu6(x) ** 2))(x)
    res_plain = jax.tree.leaves(jax.vjp(ops.relu6, x)[1])
  assert all(r.dtype != jnp.uint8 for r in res_plain)
  np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(ops.relu6(x) ** 2))(x), g_plain)


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_channel_grads_equal_dense(name):
  """Velocity's unit: ``dW[..., out_idx]`` equals dense autodiff there, zero elsewhere; a PAD
  slot trains nothing; ``dL/dx`` is exact."""
  x, w, cot, strides, padding, g = _setup(name)
  cout = w.shape[-1]
  idx = jnp.array([cout - 1, 0, 2, PAD], jnp.int32)
  dense = jax.grad(lambda x, w: jnp.sum(ops.conv2d(x, w, strides, padding, g) * cot),
                   argnums=(0, 1))(x, w)
  sparse = jax.jit(jax.grad(
      lambda x, w, i: jnp.sum(ops.output_selective_conv(x, w, i, strides, padding, g) * cot),
      argnums=(0, 1)))(x, w, idx)
  np.testing.assert_allclose(sparse[0], dense[0], rtol=1e-5, atol=1e-5)
  out = np.array([cout - 1, 0, 2])
  np.testing.assert_allclose(sparse[1][..., out], dense[1][..., out], rtol=1e-5, atol=1e-5)
  assert np.all(np.delete(np.asarray(sparse[1]), out, axis=-1) == 0)
