"""Boosting (MeDyate A.2): channels drawn with probability proportional to their layer's LaRa."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trady_jax import selector as selector_lib
from trady_jax import costs, rankings, strategies
from trady_jax import selection as sel
from trady_jax.models.tiny import TinyCNN

SIZE = 32
# Four layers whose channels cost about the same (264-280 units at 32 px), so a budget of 280
# units holds exactly one channel: its inclusion probability is its draw probability.
POOL = {"blocks_0_pointwise1/kernel": 1.0, "blocks_0_depthwise/kernel": 2.0,
        "blocks_0_pointwise2/kernel": 4.0, "blocks_1_pointwise1/kernel": 8.0}
BUDGET = 280
DRAWS = 4000


def _net():
  model = TinyCNN(num_classes=4)
  params = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))["params"]
  return params, costs.trace(model, (1, SIZE, SIZE, 3))


def _selector(name):
  params, c = _net()
  doc = rankings.Ranking(layer_rgn={l.path: 1.0 if l.path in POOL else 1e-9 for l in c.convs},
                         lara={l.path: POOL.get(l.path, 1e-3) for l in c.convs})
  # alpha: MeDyate's K (B / M_K <= alpha) is reached with the fourth layer by LaRa.
  s = selector_lib.Selector(strategies.get(name), params, c, BUDGET, layer_ranking=doc, alpha=0.017)
  return s, params


def _layer_frequencies(selector, params):
  """Per-layer share of the selected channels over ``DRAWS`` draws of the jitted sampler."""
  state = selector.init_state()
  selector.select(jax.random.key(0), 0, params, state)  # fits the padded capacities
  # A layer drawn in 4 % of the draws may get capacity 0 from the fit; the first selection that
  # wants its channel grows it to 1 (``Selector.select``), as done here at once.
  selector.grow({p: 1 for p in POOL})
  draw, weights = selector.draw, selector.weights(jax.random.key(0), 0, params, state)
  keys = jax.random.split(jax.random.key(1), DRAWS)
  picks = {p: 0 for p in POOL}
  for k in keys[:20]:  # the selector's own jitted draw: new keys never recompile
    draw(k, weights)
  assert selector.draw_traces.traces == 1
  batched = jax.jit(jax.vmap(lambda k: draw(k, weights)[0]))(keys)
  for path, leaf in jax.tree_util.tree_flatten_with_path(batched, is_leaf=sel.is_marker)[0]:
    if isinstance(leaf, sel.Channels):
      picks[sel.path_str(path)] = int(np.sum(np.asarray(leaf.idx) != sel.PAD))
  total = sum(picks.values())
  assert total == DRAWS  # exactly one channel per draw
  return np.array([picks[p] / DRAWS for p in POOL])


def _expected(selector):
  n = np.array([selector.costs[p].in_channels for p in POOL])
  w = n * np.array(list(POOL.values()))
  return w / w.sum(), n / n.sum()


@pytest.mark.parametrize("name", ["boosted-trady", "boosted-medyate"])
def test_inclusion_frequencies_are_proportional_to_lara(name):
  s, params = _selector(name)
  assert sorted(l.path for l in s.sampler.layers) == sorted(POOL)
  got = _layer_frequencies(s, params)
  lara, uniform = _expected(s)
  sigma = np.sqrt(lara * (1 - lara) / DRAWS)
  assert np.all(np.abs(got - lara) < 5 * sigma), (got, lara)
  assert np.any(np.abs(uniform - lara) > 5 * sigma)  # uniform sampling would fail this test


def test_plain_trady_is_uniform_and_fails_the_lara_check():
  s, params = _selector("trady")
  got = _layer_frequencies(s, params)
  lara, uniform = _expected(s)
  assert np.all(np.abs(got - uniform) < 5 * np.sqrt(uniform * (1 - uniform) / DRAWS))
  assert np.any(np.abs(got - lara) > 5 * np.sqrt(lara * (1 - lara) / DRAWS))


def test_boosted_medyate_starts_from_lara_then_stored_norms():
  s, params = _selector("boosted-medyate")
  state = s.init_state()
  want = np.concatenate([np.full(l.in_channels, POOL[l.path]) for l in s.sampler.layers])
  np.testing.assert_allclose(state.norms, want)
  selection = s.select(jax.random.key(0), 0, params, state)
  measured = {p: jnp.full((s.costs[p].in_channels,), 0.5) for p in POOL}
  after = s.observe(state, measured, selection)
  chosen = np.asarray(jax.device_get(after.seen))
  assert chosen.sum() == 1 and np.allclose(np.asarray(after.norms)[chosen], 0.5)


def test_boosting_refuses_fixed_counts():
  """A layer's channels share one weight: with fixed per-layer counts boosting changes nothing."""
  params, c = _net()
  doc = rankings.Ranking({l.path: 1.0 for l in c.convs}, {l.path: 1.0 for l in c.convs})
  with pytest.raises(ValueError, match="fixed"):
    selector_lib.Selector(strategies.get("boosted-trady"), params, c, BUDGET, layer_ranking=doc,
                        allocation="fixed")
