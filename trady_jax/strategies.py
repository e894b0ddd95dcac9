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
  allocation each layer's index array has a capacity (a quantile of its count over 256 draws:
  the 90th percentile, raised until under 5 % of the draws would refit): padded slots store
  ``padding_units`` of zeros per sample (19,381 units, 69 % of the budget, for medyate on
  mbv2-w0.35 at 27,946), and a draw that wants more channels of a layer than its capacity gives
  them to other layers unless that moves over 3 % of the budget (then the capacities are
  refitted). A layer the fit leaves at capacity 0 (wanted in few draws) thus loses its channels
  to others until a refit. ``--allocation exact`` has none of this.
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
import enum
from typing import Any

import jax

from trady_jax import paper, rankings, velocity
from trady_jax import selection as sel
from trady_jax.costs import NetworkCosts

PyTree = Any


class Pool(enum.Enum):
  """Where a strategy's channels come from."""
  FULL = "full"             # every parameter: full fine-tuning
  ALL_CONVS = "all"         # every conv layer
  RGN_TOP_K = "rgn"         # the top-K layers holding a share of layer RGN (T Eq. 8, 97 %)
  LARA_ALPHA = "lara"       # the smallest LaRa top-K with B_mem / M_K <= alpha (M Eq. 9-10)
  SU_SCHEME = "su"          # an MIT Sparse Update scheme's layers


class Rule(enum.Enum):
  """How a strategy picks channels within its pool."""
  FULL = "full"             # no selection
  UNIFORM = "uniform"       # uniformly at random (boosted: by the layer's LaRa)
  MEDYATE = "medyate"       # sampled by the norms stored from earlier epochs (M Alg. 1)
  DET_RGN = "det_rgn"       # highest RGN of the full gradient (T Eq. 7)
  DET_RAW = "det_raw"       # highest raw norm of the full gradient (M 4.3)
  PROB_RAW = "prob_raw"     # sampled by the full gradient's norms (M 4.3)
  SCHEME = "scheme"         # the scheme's channels by weight norm (MIT SU 'magnitude+')
  VELOCITY = "velocity"     # output neurons by NEq velocity (W Eq. 1-7)


ORACLE_RULES = (Rule.DET_RGN, Rule.DET_RAW, Rule.PROB_RAW)


@dataclasses.dataclass(frozen=True)
class Strategy:
  """A preset: candidate layers (``pool``), channel rule (``rule``), whether it redraws every
  epoch (``dynamic``) and whether its channels are weighted by their layer's LaRa (``boost``)."""
  name: str
  pool: Pool
  rule: Rule
  dynamic: bool
  boost: bool = False

  def __post_init__(self):  # accepts the enums' values too: Strategy("x", "all", "uniform", True)
    object.__setattr__(self, "pool", Pool(self.pool))
    object.__setattr__(self, "rule", Rule(self.rule))

  # What the run loop asks of a strategy, read off its pool and rule:
  is_full = property(lambda s: s.rule is Rule.FULL,
                     doc="Full fine-tuning: no selection, no budget.")
  is_scheme = property(lambda s: s.rule is Rule.SCHEME,
                       doc="A fixed MIT Sparse Update scheme (channel counts: ``models.schemes``).")
  needs_ranking = property(lambda s: s.pool in (Pool.RGN_TOP_K, Pool.LARA_ALPHA),
                           doc="Its pool comes from an offline layer ranking.")
  needs_oracle = property(lambda s: s.rule in ORACLE_RULES,
                          doc="Needs the full gradient at selection time (Det RGN / Raw, Prob Raw).")
  tracks_norms = property(lambda s: s.rule is Rule.MEDYATE,
                          doc="Stores the trained channels' gradient norms every epoch (MeDyate).")
  selects_outputs = property(lambda s: s.rule is Rule.VELOCITY,
                             doc="Selects output neurons from NEq measurements (Velocity).")


_A, _R, _L = Pool.ALL_CONVS, Pool.RGN_TOP_K, Pool.LARA_ALPHA
REGISTRY: dict[str, Strategy] = {s.name: s for s in [
    Strategy("baseline", Pool.FULL, Rule.FULL, False),
    Strategy("s-full-random", _A, Rule.UNIFORM, False),
    Strategy("d-full-random", _A, Rule.UNIFORM, True),
    Strategy("s-det-rgn", _A, Rule.DET_RGN, False),
    Strategy("d-det-rgn", _A, Rule.DET_RGN, True),
    Strategy("s-topk-random", _R, Rule.UNIFORM, False),
    Strategy("trady", _R, Rule.UNIFORM, True),
    Strategy("su", Pool.SU_SCHEME, Rule.SCHEME, False),
    Strategy("medyate", _L, Rule.MEDYATE, True),
    Strategy("lara-trady", _L, Rule.UNIFORM, True),
    Strategy("lara-det-raw", _L, Rule.DET_RAW, True),
    Strategy("lara-prob-raw", _L, Rule.PROB_RAW, True),
    Strategy("prev-medyate", _R, Rule.MEDYATE, True),
    Strategy("boosted-trady", _R, Rule.UNIFORM, True, boost=True),
    Strategy("boosted-medyate", _L, Rule.MEDYATE, True, boost=True),
    Strategy("velocity", _A, Rule.VELOCITY, True),
]}


def get(name: str) -> Strategy:
  """The strategy called ``name`` (clear error listing the known ones)."""
  try:
    return REGISTRY[name.lower()]
  except KeyError:
    raise KeyError(f"unknown strategy {name!r}; known: {sorted(REGISTRY)}") from None


def candidate_layers(strategy: Strategy, costs: NetworkCosts, budget: int,
                     layer_ranking: rankings.Ranking | None, *, share: float = paper.TOPK_SHARE,
                     alpha: float = paper.ALPHA_OPT) -> list[str]:
  """Kernel paths a strategy samples from: all convs, or the top-K of an offline ranking."""
  if strategy.pool is Pool.ALL_CONVS:
    return [l.path for l in costs.convs]
  if strategy.needs_ranking:
    if layer_ranking is None:
      raise ValueError(f"strategy {strategy.name!r} needs a layer ranking "
                       "(experiments/rank_layers.py)")
    if strategy.pool is Pool.RGN_TOP_K:
      return layer_ranking.top_k_share(share)
    return layer_ranking.top_k_alpha(costs, budget, alpha)
  raise ValueError(f"strategy {strategy.name!r} has no candidate pool")


def selection_summary(selection: PyTree | None, costs: NetworkCosts) -> dict[str, float]:
  """Budget use and sparsity metrics of a selection (full fine-tuning: everything)."""
  if selection is None:
    return costs.usage({l.path: l.in_channels for l in costs.convs})
  if any(isinstance(s, sel.OutputChannels) for s in jax.tree.leaves(selection,
                                                                     is_leaf=sel.is_marker)):
    return velocity.usage(selection, costs)
  return costs.usage({p: k for p, k in sel.counts(selection).items() if costs[p].charged})
