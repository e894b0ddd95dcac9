"""MeDyate's stored channel norms (MeDyate Alg. 1): the state a run carries from epoch to epoch.

``N`` holds, for every channel of the pool (``samplers.Sampler`` order), the raw gradient norm
(Eq. 6) measured when it was last trained; the next epoch samples channels with probability
proportional to ``N`` (``samplers.weighted``). Epoch 1 is uniform (all ones), or LaRa-weighted for
boosted MeDyate (A.2).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class MedyateState(NamedTuple):
  """``norms``: ``N`` over the pool; ``seen``: channels trained at least once; ``updates``: epochs
  stored so far."""
  norms: jax.Array
  seen: jax.Array
  updates: jax.Array


def init(num_channels: int, norms: jax.Array | None = None) -> MedyateState:
  """``N`` all ones (epoch 1 uniform) or the given first-epoch weights; nothing seen yet."""
  n = num_channels
  first = jnp.ones((n,), jnp.float32) if norms is None else jnp.asarray(norms, jnp.float32)
  return MedyateState(first, jnp.zeros((n,), bool), jnp.zeros((), jnp.int32))


def update(state: MedyateState, measured: jax.Array, selected: jax.Array) -> MedyateState:
  """Store the raw norms measured for the channels trained this epoch (MeDyate Alg. 1, step 2).

  ``N_c <- measured_c`` for selected channels. What is measured (``Config.medyate_norm``): the
  papers say "the gradient norm of channels selected at the previous epoch" and cost it at
  ``|zeta_e| C' D^2`` (Eq. 11), one pass over one gradient tensor of the selected weights. The
  default, ``'last'``, is the norm (Eq. 6) of the gradient of the epoch's last step, the tensor
  PyTorch's ``.grad`` holds when the epoch ends: no extra memory, Eq. 11's cost. ``'epoch'``,
  the norm of the gradient summed over the epoch, also costs one pass but needs an accumulator
  as large as the selected weights, beyond the budget; ``'sum'``, per-step norms summed over the
  epoch, costs Eq. 11 at every step (``M`` times more). After the first epoch, channels never seen get the
  maximum observed norm, so they are explored first; afterwards they keep that value until sampled.
  """
  norms = jnp.where(selected, measured, state.norms)
  seen = state.seen | selected
  first = state.updates == 0
  top = jnp.max(jnp.where(seen, norms, -jnp.inf))
  norms = jnp.where(first & ~seen, top, norms)
  # A zero norm would make a channel unreachable for Gumbel-top-k; keep a tiny floor.
  norms = jnp.maximum(norms, jnp.finfo(jnp.float32).tiny)
  return MedyateState(norms, seen, state.updates + 1)
