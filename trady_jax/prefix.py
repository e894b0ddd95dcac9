"""The frozen prefix: the stages below the shallowest trained layer run batch chunk by chunk.

Backpropagation stops at the shallowest layer with a trained parameter, so the stages before it
keep no residuals and receive no cotangents: they cost only their forward working set. At 128 px
that working set is the high-resolution part of the net and the largest buffer of the whole
selective step (mbv2-w0.35, batch 32: 30 MiB, against 8.7 MiB for everything the backward pass
keeps). Run over ``chunks`` slices of the batch in a ``fori_loop``, it shrinks about ``chunks``-fold,
and the function computed is unchanged: the layers act per example (BatchNorm is folded).

A model opts in with two methods (``MCUNet``, hence MobileNetV2, and ``ResNet`` have them):

* ``model.stage_of(path) -> int``: the stage, in forward order, of a parameter path;
* ``model.apply(variables, x, start=i, stop=j)``: stages ``[i, j)`` only.

Models without them run whole, as do selections with a trained parameter in stage 0.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from trady_jax import depthwise
from trady_jax import selection as sel

PyTree = Any


def stage_plan(start: int, stop: int | None, blocks: int) -> tuple[bool, range, bool]:
  """What ``model(x, start=start, stop=stop)`` runs, for a net of stem (stage 0), ``blocks``
  blocks (stages ``1..blocks``) and head (stage ``blocks + 1``): ``(stem?, block indices, head?)``.

  Raises:
    ValueError: ``[start, stop)`` is empty or outside ``0..blocks + 1``.
  """
  head = blocks + 1
  stop = head + 1 if stop is None else stop
  if not 0 <= start < stop <= head + 1:
    raise ValueError(f"stages [{start}, {stop}) out of range: the net has stages 0..{head}")
  return start == 0, range(max(start, 1) - 1, min(stop, head) - 1), stop > head


def stage_of_path(path: str, stem: str, blocks: Sequence[str]) -> int:
  """The stage of a parameter path in a net whose stem module is ``stem`` (stage 0) and whose
  block modules are ``blocks`` in forward order (stages ``1..len(blocks)``); anything else is the
  head (stage ``len(blocks) + 1``)."""
  top = path.split("/", 1)[0]
  if top == stem:
    return 0
  order = {name: i + 1 for i, name in enumerate(blocks)}
  return order.get(top, len(blocks) + 1)


def frozen_stages(model: nn.Module, selection: PyTree | None) -> int:
  """How many leading stages of ``model`` have every parameter ``FROZEN`` in ``selection``.

  Static: it reads the selection's tree structure (``FROZEN`` is a structural marker), never its
  indices, so it is known at trace time and a jitted step compiles once per structure.
  """
  if selection is None or not hasattr(model, "stage_of"):
    return 0
  flat = jax.tree_util.tree_flatten_with_path(selection, is_leaf=sel.is_marker)[0]
  trained = [model.stage_of(sel.path_str(p)) for p, leaf in flat
             if not isinstance(leaf, optax.MaskedNode)]
  return min(trained, default=0)


def chunk_count(batch: int, chunks: int) -> int:
  """The largest divisor of ``batch`` that is at most ``chunks`` (1 = no chunking)."""
  return max(n for n in range(1, max(1, min(chunks, batch)) + 1) if batch % n == 0)


def apply_stages(model: nn.Module, variables: PyTree, x: jax.Array, stop: int | None,
                 chunks: int) -> jax.Array:
  """Stages ``[0, stop)`` of ``model`` on ``x``, ``chunks`` slices of the batch at a time, with no
  gradient flowing into ``variables`` or ``x``. ``stop=None`` runs the whole model (any Flax
  module: inference in chunks).

  Chunk ``i`` holds examples ``i, i + n, i + 2n, ...``: reshaping the batch to ``(b / n, n)`` is
  free (no copy), and a batch axis sharded in contiguous blocks over devices stays sharded inside
  every chunk, so each device loops over its own examples.
  """
  variables, x = jax.lax.stop_gradient((variables, x))
  apply = (lambda c: model.apply(variables, c)) if stop is None else (
      lambda c: model.apply(variables, c, stop=stop))

  def run(c):
    with depthwise.no_backward():  # nothing here is differentiated
      return apply(c)

  b, n = x.shape[0], chunk_count(x.shape[0], chunks)
  if n == 1:
    return run(x)
  xs = x.reshape(b // n, n, *x.shape[1:])
  y = jax.eval_shape(run, jax.ShapeDtypeStruct((b // n, *x.shape[1:]), x.dtype))

  def chunk(i, ys):
    c = jax.lax.dynamic_index_in_dim(xs, i, axis=1, keepdims=False)
    return jax.lax.dynamic_update_index_in_dim(ys, run(c), i, axis=1)

  ys = jax.lax.fori_loop(0, n, chunk, jnp.zeros((b // n, n, *y.shape[1:]), y.dtype))
  return ys.reshape(b, *y.shape[1:])


def apply(model: nn.Module, variables: PyTree, x: jax.Array, *, chunks: int = 8) -> jax.Array:
  """``model.apply(variables, x)``, with the frozen prefix run in ``chunks`` batch chunks.

  ``variables`` may hold a ``'selection'`` collection; without one (full fine-tuning) or with
  ``chunks <= 1`` this is exactly ``model.apply(variables, x)``.
  """
  k = frozen_stages(model, variables.get("selection"))
  if k == 0 or chunks <= 1:
    return model.apply(variables, x)
  h = apply_stages(model, variables, x, k, chunks)
  return model.apply(variables, h, start=k)
