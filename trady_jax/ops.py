"""Selective convolution and dense kernels: the backward pass keeps only ``x[..., idx]``.

For a layer ``y = conv(x, W)`` the weight gradient of input channel ``c`` is (paper Eq. 2)

    dL/dW[:, :, c, :] = conv_weight_grad(x[..., c], dL/dy),

so it needs only that channel's slice of the input. ``selective_conv`` and ``selective_dense``
are ``jax.custom_vjp`` functions whose forward pass saves, as residuals, exactly

    x[..., idx]  (the selected input channels)  +  idx  +  the kernel (a parameter, already live),

and whose backward pass computes

* the weight gradient only for the selected channels (``k*k*C_out*H_out*W_out`` MACs per channel,
  ``k*k*H_out*W_out`` for depthwise; paper Eq. 4), scattered into a kernel-shaped array;
* the full input gradient ``dL/dx`` (it needs only the kernel), so deeper selected layers get theirs.

Channel indices are ordinary array arguments with a static length: new values never recompile.
An out-of-range index (``selection.PAD``) is an unused slot of a padded index array: its saved
activation is zeros (``_gather``) and its weight gradient is dropped by the scatter, so the
gradients of the other channels are those of the exact-length array.
Static layer hyper-parameters (strides, padding, groups) are hashable ``nondiff_argnums``.

``relu6`` / ``relu`` keep a bit-packed mask (1 bit per element) for their backward instead of a
float copy of their input (32 bits), which matters on the frozen part of the gradient path.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from trady_jax import depthwise, pointwise

Padding = tuple[tuple[int, int], ...]

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def conv2d(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Padding,
           groups: int) -> jax.Array:
  """Plain NHWC/HWIO grouped convolution (the forward of every conv layer).

  Depthwise convolutions run in ``depthwise``'s formulation for the backend (shifted
  multiply-adds on CPU, where XLA's grouped convolution is slow), pointwise ones in
  ``pointwise``'s (gradients as matrix products on CPU); every other kind in XLA's.
  """
  kind = conv_kind(kernel.shape, groups)
  if kind == "depthwise":
    return depthwise.conv(x, kernel, tuple(strides), padding)
  if kind == "pointwise":
    return pointwise.conv(x, kernel, tuple(strides), padding)
  return lax.conv_general_dilated(
      x, kernel, window_strides=tuple(strides), padding=padding,
      feature_group_count=groups, dimension_numbers=_DIMENSION_NUMBERS)


def conv_kind(kernel_shape: Sequence[int], groups: int) -> str:
  """'pointwise', 'conv', 'depthwise' or 'grouped' for an HWIO kernel and its group count."""
  kh, kw, cin_per_group, _ = kernel_shape
  if groups == 1:
    return "pointwise" if (kh, kw) == (1, 1) else "conv"
  if cin_per_group == 1:
    return "depthwise"
  return "grouped"


def _output_channels(idx: jax.Array, multiplier: int) -> jax.Array:
  """Output channels fed by input channels ``idx`` of a depthwise conv with this multiplier."""
  if multiplier == 1:
    return idx
  return (idx[:, None] * multiplier + jnp.arange(multiplier, dtype=idx.dtype)).reshape(-1)


def _gather(x: jax.Array, idx: jax.Array) -> jax.Array:
  """``x[..., idx]``, zeros for out-of-range (``PAD``) slots."""
  return jnp.take(x, idx, axis=-1, mode="fill", fill_value=0)


def _check_groups(kernel_shape, groups):
  kind = conv_kind(kernel_shape, groups)
  if kind == "grouped":
    raise NotImplementedError(
        f"selective_conv supports regular (groups=1) and depthwise convolutions; got groups={groups} "
        f"with {kernel_shape[2]} input channels per group. Freeze this layer or train it whole.")
  return kind


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def selective_conv(x: jax.Array, kernel: jax.Array, idx: jax.Array,
                   strides: tuple[int, int], padding: Padding, groups: int) -> jax.Array:
  """Convolution whose kernel gradient exists only for input channels ``idx``.

  Args:
    x: input, ``(N, H, W, C_in)``.
    kernel: ``(kh, kw, C_in // groups, C_out)``.
    idx: int32 ``(k,)`` selected input channels (distinct, static length ``k``, may be 0).
    strides: static ``(sh, sw)``.
    padding: static explicit padding ``((top, bottom), (left, right))``.
    groups: 1 (regular / pointwise) or ``C_in`` (depthwise).

  Returns:
    ``conv(x, kernel)``. Its VJP gives the exact ``dL/dx``, ``dL/dW`` restricted to ``[:, :, idx, :]``
    (depthwise: to the output channels of ``idx``) and zero elsewhere.
  """
  return conv2d(x, kernel, strides, padding, groups)


def _selective_conv_fwd(x, kernel, idx, strides, padding, groups):
  _check_groups(kernel.shape, groups)
  y = conv2d(x, kernel, strides, padding, groups)
  # The memory contract: only the selected channels of the input are saved.
  return y, (_gather(x, idx), kernel, idx)


def _selective_conv_bwd(strides, padding, groups, residuals, g):
  x_sel, kernel, idx = residuals
  n, h, w, _ = x_sel.shape
  kh, kw, cin_per_group, cout = kernel.shape
  x_shape = (n, h, w, cin_per_group * groups)
  kind = conv_kind(kernel.shape, groups)
  dx = _input_grad(g, kernel, x_shape, strides, padding, groups)
  k = idx.shape[0]
  if k == 0:
    return dx, jnp.zeros_like(kernel), None
  if kind == "depthwise":
    out_idx = _output_channels(idx, cout // x_shape[-1])
    dw_sel = depthwise.weight_grad(x_sel, _gather(g, out_idx), (kh, kw), strides,
                                   padding, selected=True)
    return dx, jnp.zeros_like(kernel).at[:, :, :, out_idx].set(dw_sel, mode="drop"), None
  if kind == "pointwise":
    dw_sel = pointwise.weight_grad(x_sel, g, strides, padding)
  else:
    w_aval = jax.ShapeDtypeStruct((kh, kw, k, cout), kernel.dtype)
    (dw_sel,) = jax.linear_transpose(
        lambda w: conv2d(x_sel, w, strides, padding, 1), w_aval)(g)
  return dx, jnp.zeros_like(kernel).at[:, :, idx, :].set(dw_sel, mode="drop"), None


def _input_grad(g, kernel, x_shape, strides, padding, groups):
  """``dL/dx`` of ``conv2d`` from its output cotangent, in the kind's fastest formulation."""
  kind = conv_kind(kernel.shape, groups)
  if kind == "depthwise":
    return depthwise.input_grad(g, kernel, x_shape, strides, padding)
  if kind == "pointwise":
    return pointwise.input_grad(g, kernel, x_shape, strides, padding)
  (dx,) = jax.linear_transpose(lambda x: conv2d(x, kernel, strides, padding, groups),
                               jax.ShapeDtypeStruct(x_shape, g.dtype))(g)
  return dx


selective_conv.defvjp(_selective_conv_fwd, _selective_conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def output_selective_conv(x: jax.Array, kernel: jax.Array, out_idx: jax.Array,
                          strides: tuple[int, int], padding: Padding, groups: int) -> jax.Array:
  """Convolution whose kernel gradient exists only for output channels ``out_idx`` (neurons).

  The unit of WACV-24 Velocity: ``dL/dW[..., o] = conv_weight_grad(x, dL/dy[..., o])`` needs every
  input channel feeding ``o``, so the forward saves the whole input ``x`` (the reason the papers
  report only 20-40 % activation sparsity for Velocity); the backward computes the weight gradient
  of the ``k`` selected output channels alone and the full ``dL/dx``. Arguments as
  ``selective_conv``; ``PAD`` slots of ``out_idx`` get no gradient.
  """
  return conv2d(x, kernel, strides, padding, groups)


def _output_selective_conv_fwd(x, kernel, out_idx, strides, padding, groups):
  _check_groups(kernel.shape, groups)
  return conv2d(x, kernel, strides, padding, groups), (x, kernel, out_idx)


def _output_selective_conv_bwd(strides, padding, groups, residuals, g):
  x, kernel, out_idx = residuals
  kh, kw, cin_per_group, cout = kernel.shape
  kind = conv_kind(kernel.shape, groups)
  dx = _input_grad(g, kernel, x.shape, strides, padding, groups)
  if out_idx.shape[0] == 0:
    return dx, jnp.zeros_like(kernel), None
  g_sel = _gather(g, out_idx)
  if kind == "depthwise":  # output channel o reads input channel o // multiplier only
    x_sel = _gather(x, out_idx // (cout // groups))
    dw_sel = depthwise.weight_grad(x_sel, g_sel, (kh, kw), strides, padding, selected=True)
  elif kind == "pointwise":
    dw_sel = pointwise.weight_grad(x, g_sel, strides, padding)
  else:
    w_aval = jax.ShapeDtypeStruct((kh, kw, cin_per_group, out_idx.shape[0]), kernel.dtype)
    (dw_sel,) = jax.linear_transpose(lambda w: conv2d(x, w, strides, padding, 1), w_aval)(g_sel)
  return dx, jnp.zeros_like(kernel).at[..., out_idx].set(dw_sel, mode="drop"), None


output_selective_conv.defvjp(_output_selective_conv_fwd, _output_selective_conv_bwd)


@jax.custom_vjp
def selective_dense(x: jax.Array, kernel: jax.Array, idx: jax.Array) -> jax.Array:
  """``x @ kernel`` whose kernel gradient exists only for input features ``idx``.

  Args:
    x: ``(..., F_in)``.
    kernel: ``(F_in, F_out)``.
    idx: int32 ``(k,)`` selected input features.

  Returns:
    ``x @ kernel``; its VJP saves only ``x[..., idx]``.
  """
  return x @ kernel


def _selective_dense_fwd(x, kernel, idx):
  return x @ kernel, (_gather(x, idx), kernel, idx)


def _selective_dense_bwd(residuals, g):
  x_sel, kernel, idx = residuals
  dx = g @ kernel.T
  dw_sel = jnp.einsum("...i,...o->io", x_sel, g)
  return dx, jnp.zeros_like(kernel).at[idx].set(dw_sel.astype(kernel.dtype), mode="drop"), None


selective_dense.defvjp(_selective_dense_fwd, _selective_dense_bwd)


@jax.custom_vjp
def output_selective_dense(x: jax.Array, kernel: jax.Array, out_idx: jax.Array) -> jax.Array:
  """``x @ kernel`` whose kernel gradient exists only for output features ``out_idx`` (Velocity's
  neurons, as ``output_selective_conv``): the whole input ``x`` is saved, and the backward pass
  computes ``dL/dW[:, out_idx]`` and the full ``dL/dx``; ``PAD`` slots get no gradient."""
  return x @ kernel


def _output_selective_dense_fwd(x, kernel, out_idx):
  return x @ kernel, (x, kernel, out_idx)


def _output_selective_dense_bwd(residuals, g):
  x, kernel, out_idx = residuals
  dw_sel = jnp.einsum("...i,...o->io", x, _gather(g, out_idx))
  dw = jnp.zeros_like(kernel).at[:, out_idx].set(dw_sel.astype(kernel.dtype), mode="drop")
  return g @ kernel.T, dw, None


output_selective_dense.defvjp(_output_selective_dense_fwd, _output_selective_dense_bwd)


def _pack(mask: jax.Array) -> jax.Array:
  """Bit-pack a boolean mask along the channel axis: 1 bit per element (uint8, C/8 bytes)."""
  return jnp.packbits(mask, axis=-1)


def _unpack(packed: jax.Array, channels: int) -> jax.Array:
  return jnp.unpackbits(packed, axis=-1, count=channels).astype(bool)


_PACKED_MASKS = [True]


@contextlib.contextmanager
def plain_activations() -> Iterator[None]:
  """Within this context (at trace time), ``relu6`` / ``relu`` use plain autodiff, which saves a
  float copy of their input: what an ordinary Flax model does. For like-for-like benchmarks."""
  _PACKED_MASKS.append(False)
  try:
    yield
  finally:
    _PACKED_MASKS.pop()


def relu6(x: jax.Array) -> jax.Array:
  """``clip(x, 0, 6)``; its backward keeps a bit-packed mask (1 bit/element) instead of ``x``."""
  return _relu6(x) if _PACKED_MASKS[-1] else jnp.clip(x, 0, 6)


def relu(x: jax.Array) -> jax.Array:
  """``max(x, 0)``; its backward keeps a bit-packed mask instead of ``x``."""
  return _relu(x) if _PACKED_MASKS[-1] else jnp.maximum(x, 0)


@jax.custom_vjp
def _relu6(x):
  return jnp.clip(x, 0, 6)


def _relu6_fwd(x):
  return jnp.clip(x, 0, 6), _pack((x > 0) & (x < 6))


def _mask_bwd(packed, g):
  return (jnp.where(_unpack(packed, g.shape[-1]), g, jnp.zeros_like(g)),)


_relu6.defvjp(_relu6_fwd, _mask_bwd)


@jax.custom_vjp
def _relu(x):
  return jnp.maximum(x, 0)


def _relu_fwd(x):
  return jnp.maximum(x, 0), _pack(x > 0)


_relu.defvjp(_relu_fwd, _mask_bwd)
