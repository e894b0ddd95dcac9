"""Multi-head self-attention and the MLP of a transformer block, every projection selective.

Each projection is a charged ``layers.SelectiveDense``: its input feature ``c`` costs ``F_out``
weights plus one stored activation per token (``costs``; the linear reading of Eq. 3). With
separate ``query`` / ``key`` / ``value`` projections (Hugging Face's layout) the block input is
stored once per projection that selects from it; a fused ``qkv`` projection (timm's layout) stores
it once, at ``3 * C`` weights per feature.

Beside those inputs, a transformer's backward pass needs what its frozen blocks keep: LayerNorm's
``x_hat``, ``q``, ``k``, ``v``, the softmax output (``heads * T`` per token) and GELU's input
(``4C`` per token). Exact recomputations shrink that, each run once the cotangent arrives
(``recompute_after``):

* ``SelfAttention.recompute_softmax`` (default on): the attention core keeps only ``q, k, v`` and
  recomputes ``softmax(q k^T / sqrt(d) + bias)`` in the backward pass (``2 T^2 C`` MACs per
  sample, about 1 % of a BERT-base block);
* ``SelfAttention.recompute``: keeps only the block input ``x`` and recomputes ``q, k, v`` too
  (``3 C^2`` MACs per token);
* ``MLP.recompute``: ``gelu(fc1(x))`` keeps only ``x`` and recomputes ``fc1`` (``4 C^2`` MACs per
  token, a third of the block's forward) instead of keeping the ``4C``-wide GELU input.

Both take their input as a LayerNorm's parts (``layers.Normalized``) too: recomputing, they then
keep the norm's ``x_hat`` (which the norm's backward keeps anyway) and apply the norm's affine map
inside the recomputation, instead of keeping the norm's output beside it: one ``C``-wide tensor per
sublayer less.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from trady_jax.layers import Normalized, SelectiveDense


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
  """The exact (erf) GELU of BERT, ViT and Swin, ``x * Phi(x)``. Its backward keeps ``x`` alone and
  recomputes ``gelu'(x) = Phi(x) + x * phi(x)``; autodiff of ``nn.gelu`` keeps three
  ``x``-sized intermediates."""
  return nn.gelu(x, approximate=False)


def _gelu_fwd(x):
  return gelu(x), x


def _gelu_bwd(x, g):
  xf = x.astype(jnp.float32)
  cdf = 0.5 * (1.0 + jax.lax.erf(xf * (1 / math.sqrt(2))))
  pdf = jnp.exp(-0.5 * xf * xf) * (1 / math.sqrt(2 * math.pi))
  return ((g * (cdf + xf * pdf)).astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


def padding_bias(mask: jax.Array, dtype=jnp.float32) -> jax.Array:
  """``(N, T)`` boolean key mask (True: a real token) -> an additive ``(N, 1, 1, T)`` logit bias,
  the most negative float where masked (as Hugging Face's eager attention)."""
  return jnp.where(mask, 0.0, jnp.finfo(dtype).min).astype(dtype)[:, None, None, :]


class SelfAttention(nn.Module):
  """``softmax(q k^T / sqrt(d) + bias) v``, then the output projection ``out``.

  Attributes:
    num_heads: heads; the width ``C`` must be a multiple.
    fused_qkv: one ``qkv`` projection ``(C, 3C)`` laid out ``[q | k | v]`` (timm), else
      ``query`` / ``key`` / ``value`` (Hugging Face).
    use_bias: projection biases.
    recompute_softmax: keep ``q, k, v`` and recompute the attention weights in the backward pass.
    recompute: keep only ``x`` and recompute ``q, k, v`` and the attention weights in the
      backward pass (``3 C^2`` MACs per token more; ``recompute_after``; whole batch: slicing it
      as the MLP does measured more temp memory, not less).
  """
  num_heads: int
  fused_qkv: bool = False
  use_bias: bool = True
  recompute_softmax: bool = True
  recompute: bool = False

  @nn.compact
  def __call__(self, x: jax.Array | Normalized, bias: jax.Array | None = None, *,
               into: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """``x``: ``(..., T, C)``, or a norm's parts of it; ``bias``: added to the
    ``(..., heads, T, T)`` logits (padding, relative positions, window masks); ``into``: a
    rearrangement of the (normalised) input into ``(..., T, C)`` token groups, applied first
    (Swin's windows), inside the recomputation."""
    x, affine = _parts(x)
    c = x.shape[-1]
    if c % self.num_heads:
      raise ValueError(f"{self.name}: width {c} is not a multiple of {self.num_heads} heads")
    d = c // self.num_heads
    if self.fused_qkv:
      projections = [SelectiveDense(3 * c, self.use_bias, name="qkv")]
    else:
      projections = [SelectiveDense(c, self.use_bias, name=n) for n in ("query", "key", "value")]
    split = lambda t: t.reshape(*t.shape[:-1], self.num_heads, d)
    core = (attention_core if self.recompute or not self.recompute_softmax
            else recomputed_attention_core)

    def attend(project, x, bias, affine):
      x = _input(x, affine)
      x = into(x) if into else x
      qkv = [p(x) for p in project]
      q, k, v = jnp.split(qkv[0], 3, axis=-1) if self.fused_qkv else qkv
      return core(split(q), split(k), split(v), bias).reshape(x.shape)

    out = (recompute_through(projections, attend, x, bias, affine) if self.recompute
           else attend(projections, x, bias, affine))
    return SelectiveDense(c, self.use_bias, name="out")(out)


def _parts(x: jax.Array | Normalized):
  """``(x, None)``, or a ``Normalized``'s ``(x_hat, (scale, bias))``."""
  return (x.x_hat, (x.scale, x.bias)) if isinstance(x, Normalized) else (x, None)


def _input(x: jax.Array, affine) -> jax.Array:
  """Inverse of ``_parts``: the array a sublayer reads."""
  return x if affine is None else Normalized(x, *affine).output()


def attention_core(q: jax.Array, k: jax.Array, v: jax.Array,
                   bias: jax.Array | None = None) -> jax.Array:
  """``softmax(q k^T / sqrt(d) + bias) v`` per head: ``q, k, v`` ``(..., T, heads, d)``, ``bias``
  broadcastable to ``(..., heads, T, T)``; the softmax in float32."""
  logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(q.shape[-1])
  if bias is not None:
    logits = logits + bias
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  return jnp.einsum("...hqk,...khd->...qhd", weights, v)


_CHUNKED = [True]


@contextlib.contextmanager
def unchunked() -> Iterator[None]:
  """Within this context (at trace time) ``recompute_after`` runs its backward pass whole: the
  same arithmetic without a loop, for FLOP counts (XLA's cost analysis counts a loop body once)."""
  _CHUNKED.append(False)
  try:
    yield
  finally:
    _CHUNKED.pop()


def _tie(tree, zero):
  """``tree`` with ``zero`` (0 * a cotangent entry) added to its float leaves."""
  return jax.tree.map(lambda a: a + zero.astype(a.dtype)
                      if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def recompute_after(fn: Callable, *, chunks: int = 1) -> Callable:
  """``fn`` (a function of arrays) whose backward pass keeps only its arguments and recomputes
  ``fn`` once the output's cotangent ``g`` is there.

  The recomputation reads its arguments as ``a + 0 * g[0]`` (exact while ``g[0]`` is finite; a
  non-finite one marks a diverged step, whose gradients are not used). That data dependency
  keeps XLA from scheduling the recomputation in the forward pass, where it would merge it with
  the forward computation and keep the very values recomputation should free: XLA's CPU pipeline
  drops the optimisation barriers ``jax.checkpoint`` relies on before it schedules (measured: a
  4-layer attention stack at batch 32 keeps 493 MiB with ``jax.checkpoint``, 288 MiB with this).

  ``chunks > 1``: ``fn(shared, x, *rest)`` acts on each row of ``x`` (axis 0) alone; the backward
  pass then recomputes and differentiates ``chunks`` slices of the batch one after the other
  (``lax.scan``, the other arguments' cotangents summed), so its working set is a slice's.
  """

  @jax.custom_vjp
  def f(*args):
    return fn(*args)

  def fwd(*args):
    return fn(*args), args

  def bwd(args, g):
    from trady_jax import prefix  # local: prefix imports the selective ops
    n = prefix.chunk_count(args[1].shape[0], chunks) if chunks > 1 and _CHUNKED[-1] else 1
    if n == 1:
      return jax.vjp(fn, *_tie(args, 0 * jnp.ravel(jax.tree.leaves(g)[0])[0]))[1](g)
    shared = (args[0], *args[2:])
    split = lambda t: t.reshape(n, t.shape[0] // n, *t.shape[1:])

    def one(total, slice_):
      x, gs = slice_
      zero = 0 * jnp.ravel(gs)[0]
      a, *rest = _tie(shared, zero)
      d = jax.vjp(fn, a, _tie(x, zero), *rest)[1](gs)
      return jax.tree.map(jnp.add, total, (d[0], *d[2:])), d[1]

    total, dx = jax.lax.scan(one, jax.tree.map(jnp.zeros_like, shared), (split(args[1]), split(g)))
    return (total[0], dx.reshape(args[1].shape), *total[1:])

  f.defvjp(fwd, bwd)
  return f


recomputed_attention_core = recompute_after(attention_core)


def recompute_through(layers: Sequence[SelectiveDense], fn: Callable, x: jax.Array, *args,
                      chunks: int = 1):
  """``fn(layers, x, *args)`` under ``recompute_after`` (``chunks``: for an ``fn`` acting on each
  row of ``x`` alone): the backward pass keeps ``x``, ``args`` and the layers' parameters, and
  recomputes ``fn``, selective layers included (their selections are read, not differentiated).
  Call it inside the ``nn.compact`` method that owns ``layers``."""
  if layers[0].is_initializing():
    fn(layers, x, *args)  # creates the layers' variables; the value is unused
  variables = [layer.variables for layer in layers]
  unbound = [layer.clone(parent=None) for layer in layers]

  def pure(params, x, *args):
    bound = [functools.partial(u.apply, {**v, "params": p})
             for u, v, p in zip(unbound, variables, params)]
    return fn(bound, x, *args)

  return recompute_after(pure, chunks=chunks)([v["params"] for v in variables], x, *args)


class MLP(nn.Module):
  """``fc2(activation(fc1(x)))``, hidden width ``hidden``; ``recompute``: keep ``x`` and recompute
  ``activation(fc1(x))`` in the backward pass (exact; see the module docstring), over ``chunks``
  slices of the batch one after the other (the ``hidden``-wide working set of one slice)."""
  hidden: int
  activation: Callable[[jax.Array], jax.Array] = gelu
  recompute: bool = False
  chunks: int = 8

  @nn.compact
  def __call__(self, x: jax.Array | Normalized) -> jax.Array:
    """``x``: ``(..., C)``, or a norm's parts of it."""
    x, affine = _parts(x)
    fc1, activation = SelectiveDense(self.hidden, name="fc1"), self.activation
    expand = lambda project, x, affine: activation(project[0](_input(x, affine)))
    h = (recompute_through([fc1], expand, x, affine, chunks=self.chunks) if self.recompute
         else expand([fc1], x, affine))
    return SelectiveDense(x.shape[-1], name="fc2")(h)
