"""A strategy bound to one run (``Selector``): the selection of every epoch, drawn from explicit
PRNG keys and state (MeDyate's stored norms, Velocity's NEq measurements): runs resume exactly."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from trady_jax import medyate, paper, ranking, rankings, samplers, velocity, xla
from trady_jax import selection as sel
from trady_jax.costs import NetworkCosts
from trady_jax.strategies import Rule, Strategy, candidate_layers

PyTree = Any


class Selector:
  """A strategy bound to one run: the selection of every epoch, from explicit keys and state.

  ``state`` is a pytree of arrays (``medyate.MedyateState``, Velocity's NEq measurements, or
  ``{}``), so it is checkpointed with the run.
  ``oracle`` (for Det RGN / Prob Raw) maps params to ``{path: (C_in,) channel gradient norms}``
  of the full gradient. ``scheme_counts`` / ``scheme_biases``: an SU scheme's channels per layer
  and its bias leaves (``models.schemes``). ``neq``: Velocity's NEq measurements
  (``velocity.NEq``).
  """

  def __init__(self, strategy: Strategy, template: PyTree, costs: NetworkCosts, budget: int, *,
               layer_ranking: rankings.Ranking | None = None,
               scheme_counts: Mapping[str, int] | None = None, share: float = paper.TOPK_SHARE,
               alpha: float = paper.ALPHA_OPT, allocation: str = "padded",
               oracle: Callable[[PyTree], Mapping[str, jax.Array]] | None = None,
               scheme_biases: Sequence[str] = (), neq: velocity.NEq | None = None):
    self.strategy, self.costs, self.oracle, self.neq = strategy, costs, oracle, neq
    self.scheme_counts, self.scheme_biases, self.template = scheme_counts, scheme_biases, template
    self.sampler = None
    if strategy.is_full:
      return
    if strategy.is_scheme:
      if not scheme_counts:
        raise ValueError("strategy 'su' needs the scheme's per-layer channel counts")
      return
    paths = candidate_layers(strategy, costs, budget, layer_ranking, share=share, alpha=alpha)
    make = {Rule.UNIFORM: samplers.weighted if strategy.boost else samplers.uniform,
            Rule.MEDYATE: samplers.weighted,
            Rule.PROB_RAW: samplers.weighted}.get(strategy.rule, samplers.deterministic)
    pool = velocity.output_costs(costs) if strategy.selects_outputs else costs
    if strategy.selects_outputs and neq is None:
      raise ValueError("strategy 'velocity' needs NEq measurements (velocity.NEq)")
    if strategy.boost and allocation == "fixed":
      raise ValueError(f"{strategy.name!r} weights whole layers, so with fixed per-layer counts it "
                       "is the unboosted strategy; use allocation 'padded' or 'exact'")
    sampler = make(template, pool, budget, paths, allocation=allocation)
    # Boosting: a channel's weight is its layer's LaRa (Eq. 9), for every channel of the layer.
    self.lara = None if not strategy.boost else jnp.maximum(samplers.pool_vector(sampler, {
        l.path: jnp.full((l.in_channels,), layer_ranking.lara[l.path]) for l in sampler.layers}),
        jnp.finfo(jnp.float32).tiny)
    if strategy.needs_oracle and oracle is None:
      raise ValueError(f"strategy {strategy.name!r} needs an oracle (full-gradient norms)")
    # Padded capacities come from the first selection's weights (``select``), then only grow.
    self._set_sampler(sampler if sampler.capacity is None else
                      dataclasses.replace(sampler, capacity={}))

  def _set_sampler(self, sampler: samplers.Sampler) -> None:
    self.sampler = sampler
    self.draw_traces = xla.count_traces(sampler.draw)
    self._draw = jax.jit(self.draw_traces) if sampler.jittable else sampler.draw

  @property
  def draw(self) -> Callable:
    """The sampler's draw, ``draw(key, weights) -> (selection, wanted counts)``: jitted once per
    set of capacities (``draw_traces.traces`` counts its compilations)."""
    return self._draw

  def grow(self, capacity: Mapping[str, int]) -> None:
    """Raise the padded capacities to at least ``capacity`` (one more compilation of the step)."""
    self._set_sampler(self.sampler.grow(capacity))

  @property
  def capacity(self) -> dict[str, int] | None:
    """Per-layer index capacities of the padded papers' rule (``None``: other allocations)."""
    return None if self.sampler is None or self.sampler.capacity is None else dict(
        self.sampler.capacity)

  def restore(self, capacity: Mapping[str, int] | None, indices: Mapping[str, Any]) -> PyTree:
    """A checkpointed selection with the capacities it was trained with (same compiled step)."""
    if capacity and self.capacity is not None:
      self.grow(capacity)
    if self.sampler is None:
      return sel.build(self.template, {p: self.costs[p].channels(i) for p, i in indices.items()})
    return self.sampler.padded(indices)

  @property
  def layers(self) -> list[str]:
    """Paths of the candidate layers (empty for baseline / su)."""
    return [] if self.sampler is None else [l.path for l in self.sampler.layers]

  @property
  def pool(self) -> PyTree | None:
    """Every leaf this strategy's selections can train (``selection.pool``), for
    ``sparse_update(inner, pool=selector.pool)``; ``None`` for full fine-tuning."""
    if self.strategy.is_full:
      return None
    if self.sampler is None:  # a fixed scheme: its layers and bias leaves (``fixed_scheme``)
      return sel.pool(self.template, [p for p, k in self.scheme_counts.items() if k > 0],
                      trainable=(*sel.ALWAYS, *(f"^{re.escape(b)}$" for b in self.scheme_biases)))
    return sel.pool(self.template, self.layers, trainable=self.sampler.trainable)

  def init_state(self) -> PyTree:
    if self.strategy.tracks_norms:
      return medyate.init(self.sampler.num_channels, self.lara)
    if self.strategy.selects_outputs:
      return self.neq.init_state()
    return {}

  def measure(self, state: PyTree, params: PyTree, batch_stats: PyTree | None = None) -> PyTree:
    """Before an epoch's selection: Velocity's NEq measurement of the current network (other
    strategies: ``state`` unchanged)."""
    if not self.strategy.selects_outputs:
      return state
    variables = {"params": params}
    if batch_stats is not None:
      variables["batch_stats"] = batch_stats
    return self.neq.observe(state, variables)

  def weights(self, key: jax.Array, epoch: int, params: PyTree, state: PyTree) -> jax.Array | None:
    """The sampler's per-channel weights over the pool for ``epoch`` (``None``: uniform)."""
    rule = self.strategy.rule
    if rule is Rule.MEDYATE:
      return state.norms
    if rule is Rule.VELOCITY:  # random neurons until a velocity exists (two measurements)
      if int(state["measured"]) >= 2:
        return velocity.scores(state, self.sampler.layers)
      return jax.random.uniform(jax.random.fold_in(key, epoch + (1 << 20)),
                                (self.sampler.num_channels,))
    if self.strategy.needs_oracle:
      norms = self.oracle(params)
      if rule is Rule.DET_RGN:
        norms = ranking.rgn(norms, self.costs)
      weights = samplers.pool_vector(self.sampler, norms)
      return jnp.maximum(weights, jnp.finfo(jnp.float32).tiny) if rule is Rule.PROB_RAW else weights
    return self.lara

  def select(self, key: jax.Array, epoch: int, params: PyTree, state: PyTree) -> PyTree | None:
    """The selection for ``epoch`` (``None`` = full fine-tuning)."""
    rule = self.strategy.rule
    if rule is Rule.FULL:
      return None
    if rule is Rule.SCHEME:
      return samplers.fixed_scheme(self.template, self.costs, self.scheme_counts, params,
                                   biases=self.scheme_biases)
    weights = self.weights(key, epoch, params, state)
    key = jax.random.fold_in(key, epoch)
    if self.sampler.capacity is None:
      return self._draw(key, weights)[0]
    # The papers' rule within the capacities; when the capacities would move more than a small
    # share of the budget across layers, they grow to fit these weights (one more compilation;
    # capacities never shrink, so earlier shapes stay compiled).
    selection, wanted = self._draw(key, weights)
    wanted = {p: int(k) for p, k in wanted.items()}
    if self.sampler.refits(self.sampler.overflow_units(wanted)):
      fitted = self.sampler.fit(jax.random.fold_in(key, 2 ** 31 - 1), weights).grow(wanted)
      self._set_sampler(fitted)
      selection, _ = self._draw(key, weights)
    return selection

  def observe(self, state: PyTree, channel_norms: Mapping[str, jax.Array],
              selection: PyTree | None) -> PyTree:
    """After an epoch: store the measured norms of the trained channels (MeDyate)."""
    if not self.strategy.tracks_norms:
      return state
    measured = samplers.pool_vector(self.sampler, channel_norms)
    return medyate.update(state, measured, samplers.selected_vector(self.sampler, selection))
