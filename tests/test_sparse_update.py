"""sparse_update: unselected parameters bit-exact, optimizer state kept only for the pool."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trady_jax import selector as selector_lib
from trady_jax import sparse_update, strategies
from trady_jax import selection as sel

from tiny_training import changing_selections, tiny_batch, tiny_loss


@pytest.mark.parametrize("make_tx", [
    lambda: sparse_update(optax.adam(1e-2)),
    lambda: sparse_update(optax.chain(optax.sgd(0.1, momentum=0.9), optax.add_decayed_weights(0.1))),
    lambda: optax.chain(optax.adamw(1e-2, weight_decay=0.1), sparse_update()),
], ids=["wrap_adam", "wrap_momentum_wd", "chain_last"])
def test_unselected_params_bit_exact_across_changing_selections(tiny, make_tx):
  model, params, c = tiny
  x, y = tiny_batch()
  tx = make_tx()
  state = tx.init(params)
  p = params
  for s in changing_selections(params, c):
    g = jax.grad(tiny_loss, argnums=1)(model, p, None, x, y)  # plain dense autodiff gradients
    upd, state = tx.update(g, state, p, selection=s)
    new = optax.apply_updates(p, upd)
    m = sel.mask_tree(s, p)
    for path in sel.leaf_paths(p):
      old, cur, mm = (sel.at_path(t, path) for t in (p, new, m))
      keep = ~np.broadcast_to(mm, old.shape)
      np.testing.assert_array_equal(np.asarray(cur)[keep], np.asarray(old)[keep], err_msg=path)
    assert not np.array_equal(new["classifier"]["kernel"], p["classifier"]["kernel"])
    p = new


def test_chain_first_with_adam_is_bit_exact_for_one_selection(tiny):
  model, params, c = tiny
  x, y = tiny_batch()
  s = changing_selections(params, c, 1)[0]
  tx = optax.chain(sparse_update(), optax.adam(1e-2))
  state, p = tx.init(params), params
  for _ in range(3):
    g = jax.grad(tiny_loss, argnums=1)(model, p, s, x, y)  # selective-layer gradients
    upd, state = tx.update(g, state, p, selection=s)
    p = optax.apply_updates(p, upd)
  np.testing.assert_array_equal(p["first_conv"]["kernel"], params["first_conv"]["kernel"])
  dw0, dw1 = params["blocks_1_depthwise"]["kernel"], p["blocks_1_depthwise"]["kernel"]
  rest = [c for c in range(24) if c not in (1, 10)]  # channels 1 and 10 are selected
  np.testing.assert_array_equal(dw1[..., rest], dw0[..., rest])
  assert not np.array_equal(dw1[..., 10], dw0[..., 10])


def test_sparse_update_keeps_inner_state_only_for_the_pool(tiny):
  """Adam state for the leaves a run can train, the dense inner optimizer's updates restricted."""
  model, params, c = tiny
  x, y = tiny_batch()
  paths = ["blocks_0_pointwise2/kernel", "blocks_1_depthwise/kernel"]  # changing_selections'
  pool = sel.pool(params, paths)
  dense, pooled = sparse_update(optax.adam(1e-2)), sparse_update(optax.adam(1e-2), pool=pool)
  nbytes = lambda t: sum(x.nbytes for x in jax.tree.leaves(t))
  d_state, p_state = dense.init(params), pooled.init(params)
  trained = sum(sel.at_path(params, p).nbytes for p in paths) + nbytes(params["classifier"])
  print(f"adam state: {nbytes(d_state)} B dense, {nbytes(p_state)} B pooled, "
        f"params {nbytes(params)} B")
  assert (nbytes(params), nbytes(d_state), trained) == (6324, 12652, 1812)
  assert nbytes(p_state) == 2 * trained + 4  # mu, nu of the pool, one int32 step count
  update = jax.jit(pooled.update)
  p = params
  for s in changing_selections(params, c):
    g = jax.grad(tiny_loss, argnums=1)(model, p, s, x, y)
    d_upd, d_state = dense.update(g, d_state, p, selection=s)
    p_upd, p_state = update(g, p_state, p, selection=s)
    chex.assert_trees_all_close(p_upd, d_upd, rtol=1e-6, atol=1e-9)
    p = optax.apply_updates(p, d_upd)
  outside = sel.build(params, {"first_conv/kernel": c["first_conv/kernel"].channels([0])})
  with pytest.raises(ValueError, match=r"\['first_conv/kernel'\], outside"):
    pooled.update(g, p_state, p, selection=outside)


def test_selector_pool_holds_every_selection_of_a_run(tiny):
  """A strategy's pool covers what it draws, and leaves out what it never trains."""
  model, params, c = tiny
  scheme = {"blocks_1_pointwise2/kernel": 3}
  nbytes = lambda t: sum(x.nbytes for x in jax.tree.leaves(t))
  for name, kw, trained in [
      ("d-full-random", {"allocation": "fixed"},
       [l.path for l in c.convs] + ["classifier/bias", "classifier/kernel"]),
      ("su", {"scheme_counts": scheme, "scheme_biases": ["blocks_1_pointwise2/bias"]},
       ["blocks_1_pointwise2/bias", *scheme, "classifier/bias", "classifier/kernel"])]:
    selector = selector_lib.Selector(strategies.get(name), params, c, 5000, **kw)
    mask = sel.trained_mask(selector.pool)
    assert sorted(p for p in sel.leaf_paths(params) if sel.at_path(mask, p)) == sorted(trained)
    tx = sparse_update(optax.adam(1e-2), pool=selector.pool)
    state = tx.init(params)
    assert nbytes(state) == 2 * sum(sel.at_path(params, p).nbytes for p in trained) + 4
    zeros = jax.tree.map(jnp.zeros_like, params)
    for epoch in range(3):  # raises for a selection outside the pool
      s = selector.select(jax.random.key(0), epoch, params, {})
      tx.update(zeros, state, params, selection=s)
  assert selector_lib.Selector(strategies.get("baseline"), params, c, 5000).pool is None


def test_sparse_update_errors(tiny):
  _, params, _ = tiny
  tx = sparse_update()
  with pytest.raises(ValueError, match="needs the selection"):
    tx.update(params, tx.init(params), params)
  with pytest.raises(ValueError, match="does not mirror"):
    tx.update(params, tx.init(params), params, selection={"a": sel.ALL})
