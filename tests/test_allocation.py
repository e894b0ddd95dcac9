"""The papers' cross-layer allocation with padded index arrays: exact gradients, no update of
padded slots, bounded compilations; the oracle over a whole split; MeDyate's norm statistic."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trady_jax import selector as selector_lib
from trady_jax import allocation, ops, oracle, samplers, sparse_update, steps, strategies
from trady_jax import selection as sel
from trady_jax.config import Config, ConfigError

PAD = sel.PAD


def _batch(n=4, size=32, classes=5, seed=1):
  kx, ky = jax.random.split(jax.random.key(seed))
  return {"image": jax.random.normal(kx, (n, size, size, 3)),
          "label": jax.random.randint(ky, (n,), 0, classes)}


def _selection(params, c, idx, pad):
  """Channels ``idx`` per layer, each followed by ``pad`` ``PAD`` slots."""
  return sel.build(params, {p: c[p].channels(np.concatenate([np.asarray(i, np.int32),
                                                             np.full(pad, PAD, np.int32)]))
                            for p, i in idx.items()})


IDX = {"first_conv/kernel": [0, 2], "blocks_0_pointwise1/kernel": [1, 5, 7],
       "blocks_0_depthwise/kernel": [3, 20], "blocks_1_depthwise/kernel": [],
       "blocks_1_pointwise2/kernel": [0, 23]}


def _grads(model, params, selection, batch):
  def loss(p):
    logits = model.apply({"params": p, "selection": selection}, batch["image"])
    return steps.cross_entropy(logits, batch["label"])
  return jax.grad(loss)(params)


def test_padded_slots_give_the_exact_count_gradients(tiny):
  model, params, c = tiny
  batch = _batch()
  exact = _grads(model, params, _selection(params, c, IDX, 0), batch)
  padded = _grads(model, params, _selection(params, c, IDX, 3), batch)
  chex.assert_trees_all_close(padded, exact, rtol=1e-6, atol=1e-7)
  # Only the valid channels carry a kernel gradient (an all-PAD layer: none).
  g = np.asarray(padded["blocks_0_pointwise1"]["kernel"])[0, 0]
  assert np.all(g[[0, 2, 3, 4, 6]] == 0) and np.any(g[[1, 5, 7]] != 0)
  assert np.all(np.asarray(padded["blocks_1_depthwise"]["kernel"]) == 0)


def test_padded_slots_store_only_the_capacity_and_zeros():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 6))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 6, 4))
  idx = jnp.array([4, 1, PAD, PAD], jnp.int32)
  _, (x_sel, _, _) = ops._selective_conv_fwd(x, kernel, idx, (1, 1), ((1, 1), (1, 1)), 1)
  assert x_sel.shape == (2, 8, 8, 4)  # the capacity, not the layer's 6 channels
  np.testing.assert_array_equal(x_sel[..., 2:], 0)
  w = jax.random.normal(jax.random.key(2), (6, 3))
  dw = jax.grad(lambda w: ops.selective_dense(x[:, 0, 0], w, idx).sum())(w)
  assert np.all(np.asarray(dw)[[0, 2, 3, 5]] == 0) and np.all(np.asarray(dw)[[1, 4]] != 0)


def test_padded_slots_get_exactly_zero_update(tiny):
  model, params, c = tiny
  tx = optax.chain(sparse_update(), optax.sgd(0.5))
  chex.clear_trace_counter()
  step = jax.jit(chex.assert_max_traces(steps.make_train_step(model, tx, prefix_chunks=1), n=3))
  s = _selection(params, c, IDX, 4)
  new, _, _ = step(params, tx.init(params), s, _batch())
  masks = sel.mask_tree(s, params)
  for p, q, m in zip(jax.tree.leaves(params), jax.tree.leaves(new), jax.tree.leaves(masks)):
    p, q, m = np.asarray(p), np.asarray(q), np.broadcast_to(np.asarray(m), np.shape(p))
    np.testing.assert_array_equal(p[~m], q[~m])
  assert sel.counts(s)["blocks_0_pointwise1/kernel"] == 3
  assert sel.capacities(s)["blocks_0_pointwise1/kernel"] == 7
  np.testing.assert_array_equal(sel.as_numpy(s)["blocks_0_pointwise1/kernel"], [1, 5, 7])


@pytest.mark.parametrize("scoring", ["uniform", "weighted", "deterministic"])
def test_padded_draws_are_the_papers_rule(tiny, scoring):
  _, params, c = tiny
  make = getattr(samplers, scoring)
  exact = make(params, c, 6000, allocation="exact")
  padded = make(params, c, 6000)
  rng = np.random.default_rng(0)
  for e in range(6):
    w = jnp.asarray(rng.lognormal(0, 1, exact.num_channels), jnp.float32)
    key = jax.random.key(e)
    want = exact.sample(key, w)
    got, counts = padded.draw(key, w)
    counts = {p: int(k) for p, k in counts.items()}
    if any(k > padded.capacity[p] for p, k in counts.items()):
      padded = padded.grow(counts)
      got, _ = padded.draw(key, w)
    a, b = sel.as_numpy(want), sel.as_numpy(got)
    assert a.keys() <= b.keys()
    for p in b:
      np.testing.assert_array_equal(a.get(p, np.zeros(0, np.int32)), b[p])
    assert c.usage(sel.counts(got))["units"] <= 6000


def test_capped_fill_rule_moves_the_overflow_to_the_next_channels():
  scores = jnp.array([9.0, 8, 7, 6, 5, 4, 3, 2])
  layer = jnp.array([0, 0, 0, 1, 1, 0, 1, 1])
  cost = jnp.array([1.0, 1, 1, 2, 2, 1, 2, 2])
  free = allocation.fill_rule(scores, cost, 6)
  np.testing.assert_array_equal(free, [1, 1, 1, 1, 0, 0, 0, 0])
  capped = allocation.capped_fill_rule(scores, cost, layer, jnp.array([2, 8]), 6)
  # Layer 0 holds two channels; its third (score 7) is skipped and the budget goes on.
  np.testing.assert_array_equal(np.asarray(capped), [1, 1, 0, 1, 1, 0, 0, 0])
  assert np.asarray(allocation.capped_fill_rule(scores, cost, layer, jnp.array([8, 8]), 6)
                    == free).all()


def test_selector_compilations_stay_bounded(tiny):
  """Norms that move budget across layers (a stable layer scale, as Prop. 3.1, and channel noise
  redrawn every epoch): the papers' rule compiles a few times, not once per epoch."""
  model, params, c = tiny
  strategy = strategies.Strategy("w", strategies.Pool.ALL_CONVS, strategies.Rule.PROB_RAW, True)
  rng = np.random.default_rng(1)
  scale = {l.path: rng.lognormal(0, 1) for l in c.convs}
  norms = {}
  selector = selector_lib.Selector(strategy, params, c, 5000, oracle=lambda p: norms)
  tx = optax.chain(sparse_update(), optax.sgd(0.1))
  chex.clear_trace_counter()
  step = jax.jit(chex.assert_max_traces(steps.make_train_step(model, tx, prefix_chunks=1), n=3))
  opt, batch = tx.init(params), _batch()
  for e in range(8):
    norms.update({l.path: rng.lognormal(0, 1, l.in_channels) * scale[l.path] for l in c.convs})
    s = selector.select(jax.random.key(0), e, params, {})
    assert c.usage(sel.counts(s))["units"] <= 5000
    step(params, opt, s, batch)


def test_fitted_capacities_make_refits_rare_on_fresh_draws(tiny):
  """Uniform scores over every layer: each layer's 90th percentile alone leaves most draws over
  the capacities somewhere; the fit raises the quantile until few draws would refit."""
  _, params, c = tiny
  sampler = samplers.uniform(params, c, 3000)
  tol = samplers.OVERFLOW_TOLERANCE * sampler.budget

  def refit_rate(fitted, key):
    rates = []
    for k in jax.random.split(key, 64):
      _, wanted = fitted.draw(k, None)
      rates.append(fitted.overflow_units({p: int(n) for p, n in wanted.items()}) > tol)
    return np.mean(rates)

  p90 = sampler.fit(jax.random.key(0), quantile=0.9)
  fitted = sampler.fit(jax.random.key(0))
  fresh = jax.random.key(1)  # not the draws the fit saw
  assert refit_rate(p90, fresh) > 0.2
  assert refit_rate(fitted, fresh) <= 0.1
  assert all(fitted.capacity[p] >= k for p, k in p90.capacity.items())
  assert fitted.padding_units({}) < 2 * p90.padding_units({})  # not every layer at its maximum


def test_config_allocation_oracle_and_norm_options():
  cfg = Config()
  assert cfg.allocation == "padded" and cfg.oracle_batches == 0 and cfg.medyate_norm == "last"
  Config(oracle_batches=0).validate()
  for bad in ({"allocation": "loose"}, {"medyate_norm": "max"}, {"oracle_batches": -1}):
    with pytest.raises(ConfigError):
      Config(**bad).validate()


def test_su_trains_its_scheme_biases(tiny):
  _, params, c = tiny
  biases = ["blocks_1_depthwise/bias", "blocks_1_pointwise2/bias", "no_such/bias"]
  s = samplers.fixed_scheme(params, c, {"blocks_1_pointwise2/kernel": 4}, params, biases=biases)
  flat = dict(zip(sel.leaf_paths(params), jax.tree.leaves(s, is_leaf=sel.is_marker)))
  assert flat["blocks_1_depthwise/bias"] == sel.ALL and flat["blocks_1_pointwise2/bias"] == sel.ALL
  assert flat["blocks_0_depthwise/bias"] == sel.FROZEN
  assert sel.counts(s) == {"blocks_1_pointwise2/kernel": 4}


def test_oracle_is_the_norm_of_the_whole_split_gradient(tiny):
  from trady_jax import ranking
  model, params, c = tiny
  batches = [_batch(seed=i) for i in range(3)]
  got = oracle.full_gradient_norms(model, c, lambda: iter(batches))(params)

  def loss(p):
    return sum(steps.cross_entropy(model.apply({"params": p}, b["image"]), b["label"])
               for b in batches) / len(batches)

  want = ranking.channel_norms(jax.grad(loss)(params), c)
  for p in want:
    np.testing.assert_allclose(np.asarray(got[p]), np.asarray(want[p]), rtol=1e-5, atol=1e-7)


def test_medyate_norm_statistics(tiny):
  """'last' keeps the last step's norms, 'sum' adds per-step norms, 'epoch' norms the summed
  gradient (all equal to plain autodiff on the same steps)."""
  from trady_jax import ranking
  model, params, c = tiny
  s = _selection(params, c, IDX, 2)
  tx = optax.chain(sparse_update(), optax.sgd(0.0))  # params unchanged: same gradient each step
  paths = list(IDX)
  norms = jax.jit(steps.make_train_step(model, tx, costs=c, norm_paths=paths, prefix_chunks=1))
  grads = jax.jit(steps.make_train_step(model, tx, costs=c, norm_paths=paths, norm_grads=True,
                                        prefix_chunks=1))
  b1, b2 = _batch(seed=1), _batch(seed=2)
  n1, n2 = (norms(params, tx.init(params), s, b)[2]["channel_norms"] for b in (b1, b2))
  g1, g2 = (grads(params, tx.init(params), s, b)[2]["kernel_grads"] for b in (b1, b2))
  for p in paths:
    np.testing.assert_allclose(n1[p], ranking.channel_norm(g1[p], c[p]), rtol=1e-5, atol=1e-7)
    summed = ranking.channel_norm(g1[p] + g2[p], c[p])
    assert np.all(np.asarray(summed) <= np.asarray(n1[p] + n2[p]) + 1e-6)  # triangle inequality
