"""Depthwise convolution in the fastest formulation each backend has, for forward and backward.

A depthwise ``kh x kw`` convolution (one input channel per group, channel multiplier ``m``) is

    y[n, i, j, c*m + q] = sum_{a, b} x_pad[n, i*s + a, j*s + b, c] * W[a, b, 0, c*m + q],

``kh*kw`` multiply-adds per output element: no reduction over channels, so no matrix multiply to
hand it to. XLA's CPU backend lowers ``lax.conv_general_dilated`` with ``feature_group_count=C``
to a generic loop that runs at about 0.2 GMAC/s (on a 2-core CPU the depthwise layers of
MobileNetV2 are 16 % of its conv MACs and over 90 % of its conv time). Written as ``kh*kw``
shifted slices of the padded input, each scaled by one kernel tap and summed, the same
arithmetic fuses into one elementwise loop and runs 10-50x faster. Its transposes are as simple:

* forward without a padded copy (``sliced``): the output splits, along each axis, into the border
  rows / columns whose valid taps differ and the interior where all taps are valid; each block is
  a sum of strided slices of the unpadded input, and the blocks are concatenated. Inside a
  training step this fuses into one loop that reads the input in place, where the padded form
  makes XLA materialise a padded copy beside the input (and the input's producer) at the peak;
* input gradient (what every layer on the gradient path pays): the linear transpose of those
  slices is a sum of padded copies of ``g * W[a, b]``, again one fused loop;
* kernel gradient (paper Eq. 2 restricted to the selected channels, Eq. 4 for its cost)::

      dW[a, b, 0, c*m + q] = sum_{n, i, j} x_pad[n, i*s + a, j*s + b, c] * g[n, i, j, c*m + q],

  ``kh*kw`` reductions of the same products. One variadic ``lax.reduce`` computes all taps in one
  pass over ``g``, over batch chunks small enough for the L3 cache (a ``lax.scan``), so each
  chunk is read from memory once instead of ``kh*kw`` times.

Which formulation runs is chosen per backend, by measurement (``experiments/profile_layers.py``
prints both): ``FORMULATIONS`` holds the choice, ``formulation(name)`` overrides it within a
``with`` block, and the ``TRADY_JAX_DEPTHWISE`` environment variable (``xla`` | ``shifted``)
overrides it for a process. Both are exact to float32 rounding (tests/test_depthwise.py checks
every stride, padding, kernel size and multiplier the models use against
``lax.conv_general_dilated``).

``conv`` is a ``jax.custom_vjp`` whose residuals are ``x`` and the kernel, exactly what autodiff of
``lax.conv_general_dilated`` keeps, so the plain (full fine-tuning) path gets the speed-up at
unchanged memory; ``ops.selective_conv`` calls ``input_grad`` and ``weight_grad`` directly.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from trady_jax import conv_vjp, formulations

Padding = tuple[tuple[int, int], ...]

# Backend -> operation -> formulation, as measured on each (``experiments/profile_layers.py
# --depthwise`` times them per operation; ``bench_step.py`` the whole step). On CPU the shifted
# forms run 10-100x faster forward and input gradient, 3-20x faster kernel gradient. The padded
# ("shifted") forward makes a zero-padded copy of its input, which inside a training step sits
# beside the input and its producer's output at the step's peak (mbv2-w0.35, batch 32, budget
# 27,946: selective step temp 14.7 instead of 10.4 MiB with XLA's forward); the "sliced" forward
# reads the input in place and keeps the peak where XLA's left it (10.3 MiB) at the shifted
# forms' speed (that step 0.08 instead of 0.57 s, full fine-tuning 0.31 instead of 2.2 s). The
# kernel gradient of a few *selected* channels stays XLA's: small either way, and the shifted
# one's padded copies raise the peak. On an H100 (CUDA) the two are within 25 % per
# operation (mbv2-w0.35, batch 32, summed over 17 layers, shifted vs XLA: forward 1.9 vs 2.3 ms,
# input gradient 2.1 vs 2.4 ms, kernel gradient 3.1 vs 2.4 ms), and the shifted forward lowers
# the full step's temp memory there (148 vs 216 MiB).
OPERATIONS = ("forward", "frozen_forward", "input_grad", "weight_grad", "selected_weight_grad")
FORMULATIONS = {
    "cpu": {"forward": "sliced", "frozen_forward": "sliced", "input_grad": "shifted",
            "weight_grad": "shifted", "selected_weight_grad": "xla"},
    "gpu": {"forward": "shifted", "frozen_forward": "shifted", "input_grad": "shifted",
            "weight_grad": "xla", "selected_weight_grad": "xla"},
}
DEFAULT = "xla"  # backends not measured: XLA's own convolution
_UNCHUNKED: list[bool] = []
_NO_BACKWARD: list[bool] = []
# "sliced" is a forward formulation; for the gradients it means "shifted".
FORMULATION_NAMES = ("xla", "shifted", "sliced")
_CHOICE = formulations.Choice("depthwise", FORMULATION_NAMES, "TRADY_JAX_DEPTHWISE")
# Batch chunks per backend: the shifted kernel gradient runs over chunks of the batch whose inputs
# + cotangents stay under this many bytes (about the L3 cache, so each is read from memory once).
# None: the whole batch at once (accelerators, where a serial loop of small kernels costs more).
CHUNK_BYTES = {"cpu": 4 << 20}


def formulation(name: str) -> contextlib.AbstractContextManager:
  """Use depthwise formulation ``name`` ('xla', 'shifted' or 'sliced') for code traced in this
  block."""
  return _CHOICE.override(name)


def unchunked() -> contextlib.AbstractContextManager:
  """Trace the shifted kernel gradient over the whole batch at once within this block.

  The same arithmetic without the ``lax.scan`` over batch chunks: XLA's ``cost_analysis`` counts
  a loop body once, so FLOP counts are read from code traced here (``bench_step.py``).
  """
  return formulations.pushed(_UNCHUNKED, True)


def no_backward() -> contextlib.AbstractContextManager:
  """Forward passes traced in this block keep nothing for a backward pass (the chunked frozen
  prefix, evaluation): their convolutions use the ``frozen_forward`` formulation."""
  return formulations.pushed(_NO_BACKWARD, True)


def active_formulation(operation: str = "forward") -> str:
  """The formulation of ``operation`` (one of ``OPERATIONS``) for code traced now: the innermost
  ``formulation`` block, else ``$TRADY_JAX_DEPTHWISE``, else the backend's measured choice.

  It is read at trace time: a function already compiled keeps the formulation it was traced with
  (``jax.jit`` caches by function and shapes), so wrap a fresh function to compare formulations.
  """
  return _CHOICE.active(FORMULATIONS.get(jax.default_backend(), {}).get(operation, DEFAULT))


def _out_size(size: int, pad: tuple[int, int], k: int, s: int) -> int:
  return (size + pad[0] + pad[1] - k) // s + 1


def _taps(x: jax.Array, kernel_hw: Sequence[int], strides: Sequence[int], padding: Padding,
          out_hw: Sequence[int]) -> Iterator[tuple[int, int, jax.Array]]:
  """``(a, b, x_pad[:, a::s, b::s, :])`` cropped to the output size, for every kernel tap.

  One zero-padded copy of ``x``, then plain strided slices: XLA fuses slices into any consumer,
  while a padded slice per tap would be materialised whenever the sum has several consumers.
  """
  (sh, sw), (ho, wo) = strides, out_hw
  xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  n, c = x.shape[0], x.shape[-1]
  for a in range(kernel_hw[0]):
    for b in range(kernel_hw[1]):
      yield a, b, lax.slice(xp, (0, a, b, 0), (n, a + (ho - 1) * sh + 1, b + (wo - 1) * sw + 1, c),
                            (1, sh, sw, 1))


def _repeat(x: jax.Array, multiplier: int) -> jax.Array:
  return x if multiplier == 1 else jnp.repeat(x, multiplier, axis=-1)


def shifted_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                 padding: Padding) -> jax.Array:
  """Depthwise conv as ``kh*kw`` shifted multiply-adds (plain jnp; differentiable, linear)."""
  kh, kw, _, c_out = kernel.shape
  x = _repeat(x, c_out // x.shape[-1])
  out_hw = tuple(_out_size(x.shape[1 + i], padding[i], kernel.shape[i], strides[i])
                 for i in range(2))
  y = None
  for a, b, tap in _taps(x, (kh, kw), strides, padding, out_hw):
    t = tap * kernel[a, b, 0]
    y = t if y is None else y + t
  return y


def _valid_taps(size: int, k: int, s: int, low: int, out: int) -> list[tuple[int, int, tuple]]:
  """Along one axis: ``(start, stop, taps)`` runs of output positions whose valid kernel taps
  (those reading inside the unpadded input) are the same.

  >>> _valid_taps(5, 3, 1, 1, 5)  # a 3-tap kernel, padding 1: two border rows, the interior
  [(0, 1, (1, 2)), (1, 4, (0, 1, 2)), (4, 5, (0, 1))]
  """
  taps = [tuple(a for a in range(k) if 0 <= i * s + a - low < size) for i in range(out)]
  runs, start = [], 0
  for i in range(1, out + 1):
    if i == out or taps[i] != taps[start]:
      runs.append((start, i, taps[start]))
      start = i
  return runs


def sliced_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                padding: Padding) -> jax.Array:
  """Depthwise conv as sums of strided slices of the unpadded input, block by block of the
  output (border rows and columns, interior), concatenated: no padded copy of ``x``."""
  kh, kw, _, c_out = kernel.shape
  x = _repeat(x, c_out // x.shape[-1])
  n, c = x.shape[0], x.shape[-1]
  axes = [_valid_taps(x.shape[1 + i], kernel.shape[i], strides[i], padding[i][0],
                      _out_size(x.shape[1 + i], padding[i], kernel.shape[i], strides[i]))
          for i in range(2)]
  rows = []
  for i0, i1, taps_h in axes[0]:
    blocks = []
    for j0, j1, taps_w in axes[1]:
      y = jnp.zeros((n, i1 - i0, j1 - j0, c), x.dtype)
      for a, b in itertools.product(taps_h, taps_w):
        r, q = i0 * strides[0] + a - padding[0][0], j0 * strides[1] + b - padding[1][0]
        tap = lax.slice(x, (0, r, q, 0), (n, r + (i1 - i0 - 1) * strides[0] + 1,
                                          q + (j1 - j0 - 1) * strides[1] + 1, c),
                        (1, strides[0], strides[1], 1))
        y = y + tap * kernel[a, b, 0]
      blocks.append(y)
    rows.append(jnp.concatenate(blocks, axis=2))
  return jnp.concatenate(rows, axis=1)


def _xla_conv(x, kernel, strides, padding):
  return lax.conv_general_dilated(x, kernel, tuple(strides), padding,
                                  feature_group_count=x.shape[-1],
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def input_grad(g: jax.Array, kernel: jax.Array, x_shape: Sequence[int], strides: Sequence[int],
               padding: Padding) -> jax.Array:
  """``dL/dx`` of a depthwise conv from its output cotangent ``g`` (needs only the kernel)."""
  fwd = _xla_conv if active_formulation("input_grad") == "xla" else shifted_conv
  aval = jax.ShapeDtypeStruct(tuple(x_shape), g.dtype)
  (dx,) = jax.linear_transpose(lambda x: fwd(x, kernel, strides, padding), aval)(g)
  return dx


def _chunk(n: int, bytes_per_example: int) -> int:
  """The largest divisor of ``n`` whose examples fit in the backend's chunk bytes (at least 1)."""
  limit = CHUNK_BYTES.get(jax.default_backend())
  if limit is None or _UNCHUNKED:
    return n
  best = 1
  for d in range(1, n + 1):
    if n % d == 0 and d * bytes_per_example <= limit:
      best = d
  return best


def _tap_sums(x, g, kernel_hw, strides, padding):
  """``(kh*kw, W_out, C)``: per tap, the products summed over batch and rows (one variadic
  reduce, so ``g`` is read once for all taps)."""
  prods = tuple(tap * g for _, _, tap in _taps(x, kernel_hw, strides, padding, g.shape[1:3]))
  zeros = tuple(jnp.zeros((), g.dtype) for _ in prods)
  sums = lax.reduce(prods, zeros, lambda u, v: tuple(p + q for p, q in zip(u, v)), (0, 1))
  return jnp.stack(sums)


def weight_grad(x: jax.Array, g: jax.Array, kernel_hw: Sequence[int], strides: Sequence[int],
                padding: Padding, *, selected: bool = False) -> jax.Array:
  """``dL/dW`` ``(kh, kw, 1, C*m)`` of a depthwise conv from its input ``x`` and cotangent ``g``.

  ``x`` may hold only some channels (the selected ones, paper Eq. 2): ``g`` then holds their
  output channels, and the result is the kernel gradient of those channels alone
  (``selected=True`` picks the formulation measured best for that case).
  """
  kh, kw = kernel_hw
  c_out = g.shape[-1]
  if active_formulation("selected_weight_grad" if selected else "weight_grad") == "xla":
    aval = jax.ShapeDtypeStruct((kh, kw, 1, c_out), g.dtype)
    (dw,) = jax.linear_transpose(lambda w: _xla_conv(x, w, strides, padding), aval)(g)
    return dw
  x = _repeat(x, c_out // x.shape[-1])
  n = x.shape[0]
  per_example = (x[0].size + g[0].size) * x.dtype.itemsize
  chunk = _chunk(n, per_example)
  if chunk == n:
    sums = _tap_sums(x, g, kernel_hw, strides, padding)
  else:
    xs = x.reshape(n // chunk, chunk, *x.shape[1:])
    gs = g.reshape(n // chunk, chunk, *g.shape[1:])

    def body(acc, xg):
      return acc + _tap_sums(xg[0], xg[1], kernel_hw, strides, padding), None

    init = jnp.zeros((kh * kw, g.shape[2], c_out), g.dtype)
    sums, _ = lax.scan(body, init, (xs, gs))
  return jnp.sum(sums, axis=1).reshape(kh, kw, 1, c_out)


def _active_forward(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                    padding: Padding) -> jax.Array:
  name = active_formulation("frozen_forward" if _NO_BACKWARD else "forward")
  fwd = {"xla": _xla_conv, "shifted": shifted_conv, "sliced": sliced_conv}[name]
  return fwd(x, kernel, strides, padding)


conv = conv_vjp.with_gradients(
    _active_forward, input_grad,
    lambda x, g, kernel, strides, padding: weight_grad(x, g, kernel.shape[:2], strides, padding))
conv.__doc__ = """Depthwise convolution ``conv(x, kernel, strides, padding)`` (NHWC input,
``(kh, kw, 1, C*m)`` kernel) in the active formulation.

Its VJP (``conv_vjp.with_gradients``) computes both gradients with ``input_grad`` and
``weight_grad``; it keeps ``x`` and the kernel, as autodiff of ``lax.conv_general_dilated`` does,
and for a frozen kernel the kernel alone.
"""
