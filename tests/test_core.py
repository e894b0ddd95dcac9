"""Selection pytree, layers, costs, sparse_update and samplers on a tiny CNN."""

import dataclasses
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trady_jax import medyate
from trady_jax import selector as selector_lib
from trady_jax import costs as costs_lib
from trady_jax import layers, ranking, samplers, sparse_update, strategies
from trady_jax import selection as sel


def _batch(n=4, size=32, classes=5, seed=1):
  kx, ky = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kx, (n, size, size, 3)), jax.random.randint(ky, (n,), 0, classes)


def _loss(model, params, selection, x, y):
  variables = {"params": params} if selection is None else {"params": params,
                                                             "selection": selection}
  logits = model.apply(variables, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def test_costs_follow_the_paper_formulas(tiny):
  _, _, c = tiny
  stem, dw, head = c["first_conv/kernel"], c["blocks_1_depthwise/kernel"], c["classifier/kernel"]
  assert (stem.weight, stem.activation, stem.macs) == (8 * 9, 32 * 32, 9 * 8 * 16 * 16)
  assert dw.kind == "depthwise" and (dw.weight, dw.activation, dw.macs) == (9, 16 * 16, 9 * 8 * 8)
  assert not head.charged and [l.index for l in c.convs] == list(range(7))
  t = c.totals()
  assert t["total"] == sum(l.in_channels * (l.weight + l.activation) for l in c.convs)
  u = c.usage({stem.path: 3, dw.path: 12})
  assert u["units"] == 3 * stem.memory + 12 * dw.memory
  assert u["weight_sparsity"] == pytest.approx(1 - (3 * 72 + 12 * 9) / t["weights"])
  assert u["flops_saved"] == pytest.approx(1 - (3 * stem.macs + 12 * dw.macs) / t["macs"])
  assert costs_lib.to_bytes(10, 5, batch=32) == (10 + 5 * 32) * 4
  assert costs_lib.to_bytes(10, 5, batch=2, dtype=jnp.bfloat16) == 40
  with pytest.raises(ValueError, match="selected of"):
    c.usage({stem.path: 4})
  with pytest.raises(KeyError, match="unknown layer"):
    c.usage({"nope/kernel": 1})


class _UserNet(nn.Module):
  """A selective conv, a LayerNorm and, with ``plain``, a layer the memory model cannot charge."""
  plain: Any = None

  @nn.compact
  def __call__(self, x):
    x = nn.LayerNorm(name="norm")(layers.SelectiveConv(4, name="conv")(x))
    if self.plain is not None:
      x = self.plain(x)
    return layers.SelectiveDense(3, name="head")(jnp.mean(x, (1, 2)))


def test_trace_refuses_layers_it_cannot_charge():
  c = costs_lib.trace(_UserNet(), (1, 8, 8, 3))  # LayerNorm: trained whole, not charged
  assert [l.path for l in c.layers] == ["conv/kernel", "head/kernel"]
  assert c.totals()["total"] == 3 * (4 * 9 + 64)
  for plain, path in [(nn.Conv(4, (3, 3)), "plain/bias"),
                      (nn.Dense(4, use_bias=False), "plain/kernel")]:
    name = type(plain).__name__
    with pytest.raises(ValueError, match=f"^{path}: .*{name} 'plain'.*SelectiveConv"):
      costs_lib.trace(_UserNet(plain), (1, 8, 8, 3))


def test_layers_give_selected_grads_equal_dense_and_freeze_the_rest(tiny):
  model, params, c = tiny
  x, y = _batch()
  picks = {"blocks_1_depthwise/kernel": [0, 5, 9], "blocks_0_pointwise1/kernel": [2, 7],
           "first_conv/kernel": [1]}
  s = sel.build(params, {p: c[p].channels(i) for p, i in picks.items()})
  g = jax.grad(_loss, argnums=1)(model, params, s, x, y)
  dense = jax.grad(_loss, argnums=1)(model, params, None, x, y)
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


def _changing_selections(params, c, n=3):
  paths = ["blocks_0_pointwise2/kernel", "blocks_1_depthwise/kernel"]
  return [sel.build(params, {p: c[p].channels([(i + j) % 4, 10 + i]) for j, p in enumerate(paths)})
          for i in range(n)]


@pytest.mark.parametrize("make_tx", [
    lambda: sparse_update(optax.adam(1e-2)),
    lambda: sparse_update(optax.chain(optax.sgd(0.1, momentum=0.9), optax.add_decayed_weights(0.1))),
    lambda: optax.chain(optax.adamw(1e-2, weight_decay=0.1), sparse_update()),
], ids=["wrap_adam", "wrap_momentum_wd", "chain_last"])
def test_unselected_params_bit_exact_across_changing_selections(tiny, make_tx):
  model, params, c = tiny
  x, y = _batch()
  tx = make_tx()
  state = tx.init(params)
  p = params
  for s in _changing_selections(params, c):
    g = jax.grad(_loss, argnums=1)(model, p, None, x, y)  # plain dense autodiff gradients
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
  x, y = _batch()
  s = _changing_selections(params, c, 1)[0]
  tx = optax.chain(sparse_update(), optax.adam(1e-2))
  state, p = tx.init(params), params
  for _ in range(3):
    g = jax.grad(_loss, argnums=1)(model, p, s, x, y)  # selective-layer gradients
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
  x, y = _batch()
  paths = ["blocks_0_pointwise2/kernel", "blocks_1_depthwise/kernel"]  # _changing_selections'
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
  for s in _changing_selections(params, c):
    g = jax.grad(_loss, argnums=1)(model, p, s, x, y)
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


def test_one_compilation_for_many_selections(tiny):
  model, params, c = tiny
  x, y = _batch()
  sampler = samplers.uniform(params, c, budget=4000)
  tx = optax.chain(sparse_update(), optax.sgd(0.1))
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(p, opt, s):
    g = jax.grad(_loss, argnums=1)(model, p, s, x, y)
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
    step(p, opt, _changing_selections(params, c, 1)[0])


@pytest.mark.parametrize("budget", [300, 1500, 7000, 20000])
@pytest.mark.parametrize("allocation", ["fixed", "exact"])
def test_uniform_sampler_never_exceeds_the_budget(tiny, budget, allocation):
  _, params, c = tiny
  s = samplers.uniform(params, c, budget, allocation=allocation)
  for e in range(5):
    u = c.usage(sel.counts(s.sample(jax.random.key(e))))
    assert u["units"] <= budget
    assert u["units"] > budget - max(l.memory for l in c.convs) or u["units"] == c.totals()["total"]


def test_budget_below_cheapest_channel_is_a_clear_error(tiny):
  _, params, c = tiny
  cheapest = min(l.memory for l in c.convs)
  with pytest.raises(ValueError, match="smaller than the cheapest channel"):
    samplers.uniform(params, c, cheapest - 1)


def test_uniform_inclusion_frequencies_match_theory(tiny):
  _, params, c = tiny
  s = samplers.uniform(params, c, 5000, allocation="fixed")
  draw = jax.jit(s.sample)
  n = 400
  hits = {l.path: np.zeros(l.in_channels) for l in c.convs}
  for i in range(n):
    for p, idx in sel.as_numpy(draw(jax.random.key(i))).items():
      hits[p][idx] += 1
  for l in c.convs:
    k = s.counts[l.path]
    if k in (0, l.in_channels):
      assert np.all(hits[l.path] == k / l.in_channels * n)
      continue
    p = k / l.in_channels
    sd = np.sqrt(n * p * (1 - p))
    assert np.all(np.abs(hits[l.path] - n * p) < 5 * sd), l.path  # every channel, 5 sigma
  fracs = [s.counts[l.path] / l.in_channels for l in c.convs]
  assert max(fracs) - min(fracs) <= max(1 / l.in_channels for l in c.convs) + 1e-9


def test_paper_fill_rule_is_uniform_within_layers_and_varies_counts(tiny):
  _, params, c = tiny
  s = samplers.uniform(params, c, 5000, allocation="exact")
  n, signatures = 300, set()
  hits = {l.path: np.zeros(l.in_channels) for l in c.convs}
  for i in range(n):
    sample = s.sample(jax.random.key(i))
    signatures.add(tuple(sorted(sel.counts(sample).items())))
    for p, idx in sel.as_numpy(sample).items():
      hits[p][idx] += 1
  assert len(signatures) > 10  # the papers' rule changes shapes from draw to draw
  for l in c.convs:
    h = hits[l.path]
    p = h.mean() / n
    if 0 < p < 1:
      assert np.all(np.abs(h - h.mean()) < 5 * np.sqrt(n * p * (1 - p)) + 1), l.path


def test_weighted_sampler_follows_weights(tiny):
  _, params, c = tiny
  path = "blocks_0_depthwise/kernel"
  s = samplers.weighted(params, c, 10 * c[path].memory, [path])
  w = jnp.where(jnp.arange(24) < 12, 10.0, 0.1)
  draw = jax.jit(s.sample)
  hits = np.zeros(24)
  for i in range(200):
    hits[sel.as_numpy(draw(jax.random.key(i), w))[path]] += 1
  assert hits[:12].sum() > 5 * hits[12:].sum()


def test_deterministic_takes_the_top_weights(tiny):
  _, params, c = tiny
  path = "blocks_0_pointwise2/kernel"
  s = samplers.deterministic(params, c, 5 * c[path].memory + 1, [path])
  w = jnp.arange(24.0)
  got = sel.as_numpy(s.sample(jax.random.key(0), w))[path]
  np.testing.assert_array_equal(got, np.arange(19, 24))


def test_fixed_scheme_picks_largest_weight_norms(tiny):
  _, params, c = tiny
  path = "blocks_1_pointwise1/kernel"
  s = samplers.fixed_scheme(params, c, {path: 3}, params)
  norms = np.linalg.norm(np.asarray(params["blocks_1_pointwise1"]["kernel"])[0, 0], axis=1)
  np.testing.assert_array_equal(sel.as_numpy(s)[path], np.sort(np.argsort(-norms)[:3]))


def test_medyate_state_gives_unseen_channels_the_max_norm(tiny):
  _, params, c = tiny
  s = samplers.weighted(params, c, 3000, allocation="fixed")
  state = medyate.init(s.num_channels)
  first = s.sample(jax.random.key(0), state.norms)
  picked = samplers.selected_vector(s, first)
  measured = jnp.where(picked, jnp.linspace(0.1, 2.0, s.num_channels), 0.0)
  state = medyate.update(state, measured, picked)
  top = float(jnp.max(jnp.where(picked, measured, 0)))
  np.testing.assert_allclose(state.norms[~np.asarray(picked)], top)
  np.testing.assert_allclose(state.norms[np.asarray(picked)], measured[np.asarray(picked)])
  # Second update: unseen channels keep their value, newly measured ones are overwritten.
  again = medyate.update(state, measured * 0 + 0.5, ~picked & (jnp.arange(
      s.num_channels) % 2 == 0))
  assert float(again.norms[np.flatnonzero(~np.asarray(picked))[1]]) == pytest.approx(top)


def test_ranking_norms_rules_and_files(tiny, tmp_path):
  model, params, c = tiny
  x, y = _batch()
  g = jax.grad(_loss, argnums=1)(model, params, None, x, y)
  norms = ranking.channel_norms(g, c)
  k = np.asarray(g["blocks_0_pointwise1"]["kernel"])
  np.testing.assert_allclose(norms["blocks_0_pointwise1/kernel"],
                             np.linalg.norm(k[0, 0], axis=1), rtol=1e-5)
  dw = np.asarray(g["blocks_0_depthwise"]["kernel"])
  np.testing.assert_allclose(norms["blocks_0_depthwise/kernel"],
                             np.linalg.norm(dw.reshape(9, 24), axis=0), rtol=1e-5)
  state = ranking.accumulate(ranking.accumulate(ranking.init(c), g, c), g, c)
  lr = ranking.layer_rgn(state["channel"], c)
  la = ranking.lara(state["layer"], c)
  l = c["blocks_0_pointwise1/kernel"]
  assert lr[l.path] == pytest.approx(2 * float(np.sum(np.linalg.norm(k[0, 0], axis=1))) / l.memory,
                                     rel=1e-5)
  assert la[l.path] == pytest.approx(2 * float(np.linalg.norm(k)) / l.layer_memory, rel=1e-5)
  top = ranking.top_k_share(lr, 0.97)
  total = sum(lr.values())
  assert sum(lr[p] for p in top) >= 0.97 * total
  assert sum(lr[p] for p in top[:-1]) < 0.97 * total
  budget = 2000
  ka = ranking.top_k_alpha(la, c, budget, 0.2)
  assert sum(c[p].layer_memory for p in ka) >= budget / 0.2
  assert sum(c[p].layer_memory for p in ka[:-1]) < budget / 0.2
  ranking.save(tmp_path / "r.json", state, c, arch="tiny")
  assert ranking.load(tmp_path / "r.json", c)["layer_rgn"] == pytest.approx(lr)
  (tmp_path / "bad.json").write_text("{")
  with pytest.raises(ValueError, match="not a trady_jax ranking"):
    ranking.load(tmp_path / "bad.json")


def test_ranking_of_a_larger_network_and_its_key(tiny, tmp_path):
  """A ranking of the papers' architecture keeps the layers the built network has; its meta
  says which weights and BN mode it came from."""
  model, params, c = tiny
  state = ranking.init(c)
  key = ranking.network_key("/w/mbv2-w0.35.npz", "train")
  ranking.save(tmp_path / "r.json", state, c, arch="tiny", **key)
  smaller = costs_lib.NetworkCosts(tuple(l for l in c.layers
                                         if "blocks_1_pointwise2" not in l.path))
  doc = ranking.load(tmp_path / "r.json", smaller)
  assert doc["dropped"] == ["blocks_1_pointwise2/kernel"]
  assert set(doc["layer_rgn"]) == {l.path for l in smaller.convs}
  assert ranking.stale(doc, key) == []
  assert ranking.stale(doc, ranking.network_key("/w/mbv2-w0.35.npz", "folded")) == ["bn"]
  extra = dataclasses.replace(c.convs[0], path="extra/kernel")
  with pytest.raises(ValueError, match="do not match"):
    ranking.load(tmp_path / "r.json", costs_lib.NetworkCosts(c.layers + (extra,)))


def test_a_ranking_of_another_network_is_refused(tiny, tmp_path):
  """Rankings are keyed to the content of the weights they came from: other weights (even under
  the same file name) or other random layers are an error; another BN mode is a note; a run
  without pretrained weights uses any ranking with a note."""
  _, _, c = tiny
  w, other = tmp_path / "w.npz", tmp_path / "x" / "w.npz"
  other.parent.mkdir()
  w.write_bytes(b"weights")
  other.write_bytes(b"other weights")
  key = ranking.network_key(str(w), "train")
  assert key["weights"] == "w.npz" and len(key["weights_sha256"]) == 16
  ranking.save(tmp_path / "r.json", ranking.init(c), c, **key)
  doc = ranking.load(tmp_path / "r.json", c)
  assert ranking.check_network(doc, key) == []
  with pytest.raises(ranking.RankingMismatch, match="weights_sha256"):
    ranking.check_network(doc, ranking.network_key(str(other), "train"))
  with pytest.raises(ranking.RankingMismatch, match="random_init_layers"):
    ranking.check_network(doc, ranking.network_key(str(w), "train", ["head/kernel"]))
  assert "--bn train" in ranking.check_network(doc, ranking.network_key(str(w), "folded"))[0]
  assert "randomly initialised" in ranking.check_network(doc, ranking.network_key("", "train"))[0]
  with pytest.raises(ranking.RankingMismatch):  # a ranking written before keys were recorded
    ranking.check_network({"meta": {}}, key)
