"""``sparse_update()``: an optax transformation that restricts updates to the current selection."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from trady_jax import selection as sel

PyTree = Any


class SparseUpdateState(NamedTuple):
  """State of ``sparse_update``: the wrapped transformation's state (empty when none)."""
  inner_state: Any


def _restrict(updates: PyTree, selection: PyTree) -> PyTree:
  """Zero every update outside the selection (``FROZEN`` leaves, unselected channels)."""

  def leaf(s, u):
    if isinstance(s, sel.Channels):
      return jnp.where(s.mask(u.shape), u, jnp.zeros_like(u))
    if isinstance(s, sel.AllChannels):
      return u
    return jnp.zeros_like(u)

  return sel.map_selection(leaf, selection, updates)


def sparse_update(inner: optax.GradientTransformation | None = None
                  ) -> optax.GradientTransformationExtraArgs:
  """Restrict updates to a channel selection passed at every step.

  ``updates <- updates * mask(selection)`` where ``mask`` is 1 on the selected input channels of
  channel-selected kernels, 1 on ``ALL`` leaves and 0 on ``FROZEN`` leaves.

  Two ways to use it:

  * ``optax.chain(sparse_update(), optax.sgd(lr))``: masks the gradients. Exact for any stateless
    transformation after it. A stateful or decaying transformation after it (momentum, adam,
    weight decay) can still move an unselected channel once it has state for it; for those,
  * ``sparse_update(optax.adam(lr))`` (or ``sparse_update(optax.chain(...))``): masks the gradients,
    runs ``inner``, and masks its output, so unselected channels are bit-for-bit unchanged after
    ``optax.apply_updates`` whatever ``inner`` does.

  The selection is an extra argument: ``tx.update(grads, state, params, selection=selection)``.
  It works on the sparse gradients of the selective layers and on plain dense autodiff gradients.

  Args:
    inner: optional transformation to wrap.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  inner = None if inner is None else optax.with_extra_args_support(inner)

  def init_fn(params):
    return SparseUpdateState(inner_state=() if inner is None else inner.init(params))

  def update_fn(updates, state, params=None, *, selection=None, **extra_args):
    if selection is None:
      raise ValueError("sparse_update needs the selection: tx.update(grads, state, params, "
                       "selection=selection)")
    if jax.tree.structure(updates) != jax.tree.structure(
        jax.tree.map(lambda _: 0, selection, is_leaf=sel.is_marker)):
      raise ValueError("the selection does not mirror the updates' tree; build it from the same "
                       "params with trady_jax.selection.build")
    updates = _restrict(updates, selection)
    if inner is None:
      return updates, state
    updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    return _restrict(updates, selection), SparseUpdateState(inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
