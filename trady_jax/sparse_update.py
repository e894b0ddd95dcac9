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


def _outside_pool(selection: PyTree, mask: PyTree) -> list[str]:
  """Paths the selection trains that the pool freezes (static: markers are tree structure)."""
  trained = jax.tree_util.tree_flatten_with_path(sel.trained_mask(selection))[0]
  return [sel.path_str(p) for (p, t), m in zip(trained, jax.tree.leaves(mask)) if t and not m]


def sparse_update(inner: optax.GradientTransformation | None = None, *,
                  pool: PyTree | None = None) -> optax.GradientTransformationExtraArgs:
  """Restrict updates to a channel selection passed at every step.

  ``updates <- updates * mask(selection)`` where ``mask`` is 1 on the selected input channels of
  channel-selected kernels (paper Eq. 2: only those channels' weight gradients exist), 1 on
  ``ALL`` leaves and 0 on ``FROZEN`` leaves.

  Two ways to use it:

  * ``optax.chain(sparse_update(), optax.sgd(lr))``: masks the gradients. Exact for any stateless
    transformation after it. A stateful or decaying transformation after it (momentum, adam,
    weight decay) can still move an unselected channel once it has state for it; for those,
  * ``sparse_update(optax.adam(lr))`` (or ``sparse_update(optax.chain(...))``): masks the gradients,
    runs ``inner``, and masks its output, so unselected channels are bit-for-bit unchanged after
    ``optax.apply_updates`` whatever ``inner`` does.

  The selection is an extra argument: ``tx.update(grads, state, params, selection=selection)``.
  It works on the sparse gradients of the selective layers and on plain dense autodiff gradients.

  ``pool``: every leaf any selection of the run may train (``selection.pool``, or a selection
  that never changes). ``inner`` then keeps state only for those leaves (``optax.masked``;
  ``optax.MaskedNode`` for the rest), with the same updates; a selection that trains a leaf
  outside the pool is an error.

  Args:
    inner: optional transformation to wrap.
    pool: optional selection-shaped tree; its non-``FROZEN`` leaves are the trainable ones.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  >>> import jax.numpy as jnp, optax
  >>> params = {"conv": {"kernel": jnp.ones((1, 1, 4, 2))},
  ...           "classifier": {"kernel": jnp.ones((2, 3))}}
  >>> tx = sparse_update(optax.adam(0.1), pool=sel.pool(params, []))  # the classifier only
  >>> state = tx.init(params)
  >>> sum(x.size for x in jax.tree.leaves(state))  # Adam's step count, mu and nu of the classifier
  13
  >>> selection = sel.build(params, {})
  >>> updates, state = tx.update(params, state, params, selection=selection)
  >>> float(updates["conv"]["kernel"].sum()), updates["classifier"]["kernel"].shape
  (0.0, (2, 3))
  """
  mask = None if pool is None else sel.trained_mask(pool)
  if inner is not None:
    inner = optax.with_extra_args_support(inner if mask is None else optax.masked(inner, mask))

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
    if mask is not None and (outside := _outside_pool(selection, mask)):
      raise ValueError(f"the selection trains {outside}, outside sparse_update's pool")
    updates = _restrict(updates, selection)
    if inner is None:
      return updates, state
    updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    return _restrict(updates, selection), SparseUpdateState(inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
