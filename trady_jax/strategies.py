"""Named channel-selection strategies of the papers, as presets over samplers and rankings.

Papers: T = TraDy (arXiv 2510.19675), M = MeDyate (arXiv 2510.20979), W = WACV-W 2024 (Velocity).

| name            | definition    | layers            | channel rule                    | redrawn |
|-----------------|---------------|-------------------|---------------------------------|---------|
| baseline        | T 4.2         | all, whole        | full fine-tuning                | -       |
| s-full-random   | T 4.2         | all convs         | uniform                         | never   |
| d-full-random   | T 4.2         | all convs         | uniform                         | epoch   |
| s-det-rgn       | T 4.2, Eq. 7  | all convs         | highest RGN, full gradient      | never   |
| d-det-rgn       | T 4.2, Eq. 7  | all convs         | highest RGN, full gradient      | epoch   |
| s-topk-random   | T 4.2, Eq. 8  | top-K RGN, 97 %   | uniform                         | never   |
| trady           | T Alg. 1      | top-K RGN, 97 %   | uniform                         | epoch   |
| su              | T 4.2, MIT SU | scheme's layers   | largest weight norm             | never   |
| medyate         | M Alg. 1      | top-K LaRa, alpha | sampled by stored norms         | epoch   |
| lara-trady      | M 4.3         | top-K LaRa, alpha | uniform                         | epoch   |
| lara-det-raw    | M 4.3         | top-K LaRa, alpha | highest raw norm, full gradient | epoch   |
| lara-prob-raw   | M 4.3         | top-K LaRa, alpha | sampled by full-gradient norm   | epoch   |
| prev-medyate    | M 4.3         | top-K RGN, 97 %   | sampled by stored norms         | epoch   |
| boosted-trady   | M A.2         | top-K RGN, 97 %   | sampled by layer's LaRa         | epoch   |
| boosted-medyate | M A.2         | top-K LaRa, alpha | LaRa (epoch 1), stored norms    | epoch   |
| velocity        | W Eq. 1-7     | all convs         | output neurons, NEq velocity    | epoch   |

T Eq. 7-8: (layer) RGN; M Eq. 9: LaRa; alpha: the smallest K with B_mem / M_K <= 0.2 (M Eq. 10);
stored norms: raw channel gradient norms (M Eq. 6) of earlier epochs; W Eq. 7: |velocity| per weight.

Remaining deviations from the papers, and choices where they are silent:

* Budget filling (``samplers``): channels in score order while the running total stays within
  ``B_mem`` (at most, not strictly below), stopping at the first that overflows (the predecessor's
  code); weighted rules sample without replacement (Gumbel-top-k). With the default padded
  allocation each layer's index array has a capacity (90th percentile of its count over 256
  draws): padded slots store ``padding_units`` of zeros per sample (13,121 units, 47 % of the
  budget, for medyate on mbv2-w0.35 at 27,946), and a draw that wants more channels of a layer
  than its capacity gives them to other layers unless that moves over 3 % of the budget (then the
  capacities are refitted). A layer the fit leaves at capacity 0 (wanted in under a tenth of the
  draws) thus loses its channels to others until a refit. ``--allocation exact`` has none of this.
* Layer pools come from this library's own offline ranking (the papers' lists are unpublished).
* Oracles (Det RGN / Det Raw / Prob Raw): the gradient of the whole training split at the
  epoch's starting parameters (not stated in the papers).
* MeDyate's stored norm: the last step's gradient (``--medyate-norm``; not stated).
* SU: MIT's input-channel 'magnitude+' criterion (the WACV code freezes output channels instead)
  with the scheme's bias updates; scheme 1 costs 28,282 units as written, the papers' 27,946
  charges its depthwise layer without k x k (``schemes.table_units``).
* BatchNorm scale and shift are trained by every strategy, outside the budget (``--bn train``).
* Boosting: a channel's weight is its layer's LaRa itself, not the layer's LaRa shared among its
  channels (the normalisation is not stated); boosted-medyate keeps MeDyate's epoch-2 rule. The
  weights differ only between layers, so boosting needs a cross-layer allocation (fixed per-layer
  counts are refused); its more variable counts grow the padded capacities more often
  (boosted-trady: 5 compilations in 6 epochs on mbv2-w0.35 at 27,946, trady 3).
* Velocity (``velocity``): the budget counts weights only (``--budget`` is a parameter count;
  the TraDy table's Velocity rows presumably use the SU scheme's weight part,
  ``velocity.scheme_weight_budget``: 22,410 beside 27,946 on mbv2-w0.35); a trained neuron
  keeps its layer's whole input, reported as
  ``activations`` (mbv2-w0.35, ``--budget 27946``: 27,942 charged units but 678,950 stored,
  activation sparsity 0.32). ``C^w`` is ``kh kw C_in / g`` (the WACV code counts the full
  ``C_in`` for depthwise and adds the bias). ``phi^0 = v^0 = 0``; the first epoch is random (the
  code's alternative, the SU scheme, is not offered). Outputs are measured after each conv's
  BatchNorm, on 10 held-out training images under the test transform; the NEq state (their
  previous outputs, 35 MB on mbv2-w0.35) is kept and checkpointed outside the budget; its padded
  slots cost dropped weight-gradient columns, not stored activations.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from trady_jax import ranking, samplers, velocity
from trady_jax import selection as sel
from trady_jax.costs import NetworkCosts

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Strategy:
  """A preset: candidate layers (``pool``), channel rule (``rule``) and whether it resamples."""
  name: str
  pool: str      # 'all' | 'rgn' (top-K share of layer RGN) | 'lara' (alpha rule) | 'su' | 'full'
  rule: str      # 'uniform' | 'medyate' | 'det_rgn' | 'det_raw' | 'prob_raw' | 'scheme' | 'full'
  #                | 'velocity' (output neurons by NEq velocity, ``velocity``)
  dynamic: bool  # redraw every epoch (True) or once at the start (False)
  boost: bool = False  # LaRa-weighted channels instead of uniform ones (MeDyate A.2)

  @property
  def needs_ranking(self) -> bool:
    return self.pool in ("rgn", "lara")

  @property
  def needs_oracle(self) -> bool:
    """Needs the full gradient at selection time (Det RGN / Det Raw / Prob Raw)."""
    return self.rule in ("det_rgn", "det_raw", "prob_raw")


REGISTRY: dict[str, Strategy] = {s.name: s for s in [
    Strategy("baseline", "full", "full", False),
    Strategy("s-full-random", "all", "uniform", False),
    Strategy("d-full-random", "all", "uniform", True),
    Strategy("s-det-rgn", "all", "det_rgn", False),
    Strategy("d-det-rgn", "all", "det_rgn", True),
    Strategy("s-topk-random", "rgn", "uniform", False),
    Strategy("trady", "rgn", "uniform", True),
    Strategy("su", "su", "scheme", False),
    Strategy("medyate", "lara", "medyate", True),
    Strategy("lara-trady", "lara", "uniform", True),
    Strategy("lara-det-raw", "lara", "det_raw", True),
    Strategy("lara-prob-raw", "lara", "prob_raw", True),
    Strategy("prev-medyate", "rgn", "medyate", True),
    Strategy("boosted-trady", "rgn", "uniform", True, boost=True),
    Strategy("boosted-medyate", "lara", "medyate", True, boost=True),
    Strategy("velocity", "all", "velocity", True),
]}


def get(name: str) -> Strategy:
  """The strategy called ``name`` (clear error listing the known ones)."""
  try:
    return REGISTRY[name.lower()]
  except KeyError:
    raise KeyError(f"unknown strategy {name!r}; known: {sorted(REGISTRY)}") from None


def candidate_layers(strategy: Strategy, costs: NetworkCosts, budget: int,
                     ranking_doc: Mapping | None, *, share: float = 0.97,
                     alpha: float = 0.2) -> list[str]:
  """Kernel paths a strategy samples from: all convs, or the top-K of an offline ranking."""
  if strategy.pool == "all":
    return [l.path for l in costs.convs]
  if strategy.pool in ("rgn", "lara"):
    if ranking_doc is None:
      raise ValueError(f"strategy {strategy.name!r} needs a layer ranking "
                       "(experiments/rank_layers.py)")
    if strategy.pool == "rgn":
      return ranking.top_k_share(ranking_doc["layer_rgn"], share)
    return ranking.top_k_alpha(ranking_doc["lara"], costs, budget, alpha)
  raise ValueError(f"strategy {strategy.name!r} has no candidate pool")


class Selector:
  """A strategy bound to one run: the selection of every epoch, from explicit keys and state.

  ``state`` is a pytree of arrays (MeDyate's norm vector), so it is checkpointed with the run.
  ``oracle`` (for Det RGN / Prob Raw) maps params to ``{path: (C_in,) channel gradient norms}``
  of the full gradient. ``scheme_counts`` / ``scheme_biases``: an SU scheme's channels per layer
  and its bias leaves (``models.schemes``). ``neq``: Velocity's NEq measurements
  (``velocity.NEq``).
  """

  def __init__(self, strategy: Strategy, template: PyTree, costs: NetworkCosts, budget: int, *,
               ranking_doc: Mapping | None = None, scheme_counts: Mapping[str, int] | None = None,
               share: float = 0.97, alpha: float = 0.2, allocation: str = "padded",
               oracle: Callable[[PyTree], Mapping[str, jax.Array]] | None = None,
               scheme_biases: Sequence[str] = (), neq: velocity.NEq | None = None):
    self.strategy, self.costs, self.oracle, self.neq = strategy, costs, oracle, neq
    self.scheme_counts, self.scheme_biases, self.template = scheme_counts, scheme_biases, template
    self.sampler = None
    if strategy.rule == "full":
      return
    if strategy.rule == "scheme":
      if not scheme_counts:
        raise ValueError("strategy 'su' needs the scheme's per-layer channel counts")
      return
    paths = candidate_layers(strategy, costs, budget, ranking_doc, share=share, alpha=alpha)
    make = {"uniform": samplers.weighted if strategy.boost else samplers.uniform,
            "medyate": samplers.weighted,
            "prob_raw": samplers.weighted}.get(strategy.rule, samplers.deterministic)
    pool = velocity.output_costs(costs) if strategy.rule == "velocity" else costs
    if strategy.rule == "velocity" and neq is None:
      raise ValueError("strategy 'velocity' needs NEq measurements (velocity.NEq)")
    if strategy.boost and allocation == "fixed":
      raise ValueError(f"{strategy.name!r} weights whole layers, so with fixed per-layer counts it "
                       "is the unboosted strategy; use allocation 'padded' or 'exact'")
    sampler = make(template, pool, budget, paths, allocation=allocation)
    # Boosting: a channel's weight is its layer's LaRa (Eq. 9), for every channel of the layer.
    self.lara = None if not strategy.boost else jnp.maximum(samplers.pool_vector(sampler, {
        l.path: jnp.full((l.in_channels,), ranking_doc["lara"][l.path]) for l in sampler.layers}),
        jnp.finfo(jnp.float32).tiny)
    if strategy.needs_oracle and oracle is None:
      raise ValueError(f"strategy {strategy.name!r} needs an oracle (full-gradient norms)")
    # Padded capacities come from the first selection's weights (``select``), then only grow.
    self._set_sampler(sampler if sampler.capacity is None else
                      dataclasses.replace(sampler, capacity={}))

  def _set_sampler(self, sampler: samplers.Sampler) -> None:
    self.sampler = sampler
    self._draw = jax.jit(sampler.draw) if sampler.jittable else sampler.draw

  @property
  def capacity(self) -> dict[str, int] | None:
    """Per-layer index capacities of the padded papers' rule (``None``: other allocations)."""
    return None if self.sampler is None or self.sampler.capacity is None else dict(
        self.sampler.capacity)

  def restore(self, capacity: Mapping[str, int] | None, indices: Mapping[str, Any]) -> PyTree:
    """A checkpointed selection with the capacities it was trained with (same compiled step)."""
    if capacity and self.capacity is not None:
      self._set_sampler(self.sampler.grow(capacity))
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
    if self.strategy.rule == "full":
      return None
    if self.sampler is None:  # a fixed scheme: its layers and bias leaves (``fixed_scheme``)
      return sel.pool(self.template, [p for p, k in self.scheme_counts.items() if k > 0],
                      trainable=(*sel.ALWAYS, *(f"^{re.escape(b)}$" for b in self.scheme_biases)))
    return sel.pool(self.template, self.layers, trainable=self.sampler.trainable)

  def init_state(self) -> dict:
    if self.strategy.rule == "medyate":
      state = samplers.medyate_init(self.sampler)
      return state if self.lara is None else {**state, "norms": self.lara}
    if self.strategy.rule == "velocity":
      return self.neq.init_state()
    return {}

  def measure(self, state: dict, params: PyTree, batch_stats: PyTree | None = None) -> dict:
    """Before an epoch's selection: Velocity's NEq measurement of the current network (other
    strategies: ``state`` unchanged)."""
    if self.strategy.rule != "velocity":
      return state
    variables = {"params": params}
    if batch_stats is not None:
      variables["batch_stats"] = batch_stats
    return self.neq.observe(state, variables)

  def weights(self, key: jax.Array, epoch: int, params: PyTree, state: dict) -> jax.Array | None:
    """The sampler's per-channel weights over the pool for ``epoch`` (``None``: uniform)."""
    rule = self.strategy.rule
    if rule == "medyate":
      return state["norms"]
    if rule == "velocity":  # random neurons until a velocity exists (two measurements)
      if int(state["measured"]) >= 2:
        return velocity.scores(state, self.sampler.layers)
      return jax.random.uniform(jax.random.fold_in(key, epoch + (1 << 20)),
                                (self.sampler.num_channels,))
    if self.strategy.needs_oracle:
      norms = self.oracle(params)
      if rule == "det_rgn":
        norms = ranking.rgn(norms, self.costs)
      weights = samplers.pool_vector(self.sampler, norms)
      return jnp.maximum(weights, jnp.finfo(jnp.float32).tiny) if rule == "prob_raw" else weights
    return self.lara

  def select(self, key: jax.Array, epoch: int, params: PyTree, state: dict) -> PyTree | None:
    """The selection for ``epoch`` (``None`` = full fine-tuning)."""
    rule = self.strategy.rule
    if rule == "full":
      return None
    if rule == "scheme":
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
    if self.sampler.overflow_units(wanted) > samplers.OVERFLOW_TOLERANCE * self.sampler.budget:
      fitted = self.sampler.fit(jax.random.fold_in(key, 2 ** 31 - 1), weights).grow(wanted)
      self._set_sampler(fitted)
      selection, _ = self._draw(key, weights)
    return selection

  def observe(self, state: dict, channel_norms: Mapping[str, jax.Array],
              selection: PyTree | None) -> dict:
    """After an epoch: store the measured norms of the trained channels (MeDyate)."""
    if self.strategy.rule != "medyate":
      return state
    measured = samplers.pool_vector(self.sampler, channel_norms)
    return samplers.medyate_update(state, measured,
                                   samplers.selected_vector(self.sampler, selection))


def selection_summary(selection: PyTree | None, costs: NetworkCosts) -> dict[str, float]:
  """Budget use and sparsity metrics of a selection (full fine-tuning: everything)."""
  if selection is None:
    return costs.usage({l.path: l.in_channels for l in costs.convs})
  if any(isinstance(s, sel.OutputChannels) for s in jax.tree.leaves(selection,
                                                                     is_leaf=sel.is_marker)):
    return velocity.usage(selection, costs)
  return costs.usage({p: k for p, k in sel.counts(selection).items() if costs[p].charged})
