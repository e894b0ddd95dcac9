"""The selection pytree: selective layers' gradients, checked indices, one compilation."""

import chex
import jax
import numpy as np
import optax
import pytest

from trady_jax import samplers, sparse_update
from trady_jax import selection as sel

from tiny_training import changing_selections, tiny_batch, tiny_loss


def test_layers_give_selected_grads_equal_dense_and_freeze_the_rest(tiny):
  model, params, c = tiny
  x, y = tiny_batch()
  picks = {"blocks_1_depthwise/kernel": [0, 5, 9], "blocks_0_pointwise1/kernel": [2, 7],
           "first_conv/kernel": [1]}
  s = sel.build(params, {p: c[p].channels(i) for p, i in picks.items()})
  g = jax.grad(tiny_loss, argnums=1)(model, params, s, x, y)
  dense = jax.grad(tiny_loss, argnums=1)(model, params, None, x, y)
  masks = sel.mask_tree(s, params)
  for path in sel.leaf_paths(params):
    a, b, m = (sel.at_path(t, path) for t in (g, dense, masks))
    m = np.broadcast_to(m, a.shape)
    np.testing.assert_allclose(np.asarray(a)[m], np.asarray(b)[m], rtol=2e-4, atol=1e-6,
                               err_msg=path)
    assert not np.any(np.asarray(a)[~m]), path
  assert np.any(np.asarray(g["classifier"]["kernel"]))


def test_build_rejects_unknown_layers_and_bad_indices(tiny):
  _, params, c = tiny
  with pytest.raises(KeyError, match="selectable kernels are"):
    sel.build(params, {"blocks_9/kernel": c["first_conv/kernel"].channels([0])})
  dw = c["blocks_0_depthwise/kernel"]
  with pytest.raises(ValueError, match=r"lie in \[0, 24\)"):
    sel.build(params, {dw.path: dw.channels([3, 24])})
  with pytest.raises(ValueError, match="distinct"):
    sel.build(params, {dw.path: dw.channels([3, 3])})
  with pytest.raises(ValueError, match="no input-channel axis"):
    sel.build(params, {"blocks_0_depthwise/bias": dw.channels([1])})


def test_one_compilation_for_many_selections(tiny):
  model, params, c = tiny
  x, y = tiny_batch()
  sampler = samplers.uniform(params, c, budget=4000)
  tx = optax.chain(sparse_update(), optax.sgd(0.1))
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(p, opt, s):
    g = jax.grad(tiny_loss, argnums=1)(model, p, s, x, y)
    u, opt = tx.update(g, opt, p, selection=s)
    return optax.apply_updates(p, u), opt

  draw = jax.jit(chex.assert_max_traces(sampler.sample, n=1))
  p, opt, seen = params, tx.init(params), []
  for epoch in range(4):
    s = draw(jax.random.fold_in(jax.random.key(0), epoch))
    seen.append(sel.as_numpy(s))
    p, opt = step(p, opt, s)
  assert any(not np.array_equal(seen[0][k], seen[1][k]) for k in seen[0])
  with pytest.raises(AssertionError, match="traced > 1 times"):  # another shape: a new trace
    step(p, opt, changing_selections(params, c, 1)[0])
