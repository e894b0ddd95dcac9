"""Channel samplers: budgets, inclusion frequencies, weights, fixed schemes, MeDyate norms.

TraDy §3.4 Alg. 1 (uniform draws under B_mem), MeDyate §3.4 Alg. 1 (importance-weighted draws).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trady_jax import medyate
from trady_jax import samplers
from trady_jax import selection as sel


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
