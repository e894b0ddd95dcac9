"""Pure train / eval steps: ``loss(params, selection, batch)`` -> grads -> ``tx`` -> params'."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import optax

from trady_jax import nnx_layers, prefix, ranking
from trady_jax import selection as sel
from trady_jax.costs import NetworkCosts

PyTree = Any


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                    costs: NetworkCosts | None = None,
                    norm_paths: Sequence[str] = (),
                    norm_grads: bool = False,
                    loss_fn: Callable = cross_entropy,
                    prefix_chunks: int = 8) -> Callable:
  """``step(params, opt_state, selection, batch[, batch_stats]) -> (params, opt_state, metrics)``.

  ``selection=None`` trains every parameter with plain autodiff (full fine-tuning). Otherwise the
  model runs with the selection, so the backward pass stores and computes only what it selects,
  and ``tx`` (which should contain ``sparse_update``) receives it as an extra argument.
  ``norm_paths`` (with ``costs``): layers whose per-channel gradient norms (Eq. 6) are returned in
  ``metrics['channel_norms']``, for rankings and MeDyate; with ``norm_grads`` their kernel
  gradients instead, in ``metrics['kernel_grads']`` (summed over an epoch by the caller).
  ``prefix_chunks``: the stages below the shallowest trained layer run in this many batch chunks
  (``prefix.apply``; same result, a smaller forward working set); 1 turns it off.
  ``batch_stats``: the running statistics of a model with BatchNorm layers (``batchnorm``); the BN
  layers then use batch statistics and the updated running ones come back in
  ``metrics['batch_stats']``. Every BN's scale / shift is trained, the first conv's included, so
  there is no frozen prefix: statistics are whole-batch in every layer, as PyTorch's
  ``model.train()``.
  ``model``: a Linen module, or an NNX one (``nnx_layers``; ``params`` is then
  ``nnx_layers.params(model)``, no ``batch_stats``, no prefix chunks).
  """
  nnx_forward = nnx_layers.forward(model) if isinstance(model, nnx.Module) else None

  def step(params, opt_state, selection, batch, batch_stats=None):
    if nnx_forward is not None and batch_stats is not None:
      raise ValueError("an NNX model keeps its BatchNorm statistics in the module: no batch_stats")
    variables = (lambda p: {"params": p}) if selection is None else (
        lambda p: {"params": p, "selection": selection})

    def loss(p):
      if nnx_forward is not None:
        logits, new_stats = nnx_forward(p, selection, batch["image"]), None
      elif batch_stats is None:
        logits, new_stats = prefix.apply(model, variables(p), batch["image"],
                                         chunks=prefix_chunks), None
      else:
        logits, out = model.apply({**variables(p), "batch_stats": batch_stats}, batch["image"],
                                  mutable=["batch_stats"])
        new_stats = out["batch_stats"]
      return loss_fn(logits, batch["label"]), (logits, new_stats)

    (value, (logits, new_stats)), grads = jax.value_and_grad(loss, has_aux=True)(params)
    extra = {} if selection is None else {"selection": selection}
    updates, opt_state = tx.update(grads, opt_state, params, **extra)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": value,
               "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}
    if norm_paths and norm_grads:
      metrics["kernel_grads"] = {p: sel.at_path(grads, p) for p in norm_paths}
    elif norm_paths:
      metrics["channel_norms"] = ranking.channel_norms(grads, costs, norm_paths)
    if new_stats is not None:
      metrics["batch_stats"] = new_stats
    return params, opt_state, metrics

  return step


def make_eval_step(model: nn.Module, *, loss_fn: Callable = cross_entropy,
                   chunks: int = 8) -> Callable:
  """``eval_step(params, batch[, batch_stats]) -> {'correct', 'count', 'loss_sum'}`` (sums, for
  exact averages); BN layers use the running statistics ``batch_stats``. ``loss_fn`` is the train
  step's (a batch mean, ``loss_fn(logits, labels)``), applied to each example for the sum.

  An optional boolean ``batch['mask']`` marks padding examples (False) that must not count, so the
  last, padded batch of a test split keeps the compiled shape. The forward pass runs ``chunks``
  slices of the batch at a time (``prefix.apply_stages``): evaluation needs no more memory than
  the selective train step; 1 runs the batch whole.
  """

  def eval_step(params, batch, batch_stats=None):
    variables = {"params": params} if batch_stats is None else {"params": params,
                                                                 "batch_stats": batch_stats}
    logits = prefix.apply_stages(model, variables, batch["image"], None, chunks)
    losses = jax.vmap(lambda z, y: loss_fn(z[None], y[None]))(logits, batch["label"])
    valid = batch.get("mask", jnp.ones(batch["label"].shape, bool))
    return {"correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) & valid),
            "count": jnp.sum(valid),
            "loss_sum": jnp.sum(jnp.where(valid, losses, 0.0))}

  return eval_step
