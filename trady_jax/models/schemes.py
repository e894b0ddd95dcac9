"""MIT Sparse Update (SU) schemes 1-5 of the three MCU networks (method-spec 7.3).

Source: the predecessor code's ``NEq_configs.yaml`` ([CODE-W]).

A scheme updates the biases of the last ``n_bias_update`` convs and, for each conv index in
``manual_weight_idx`` (counted from the input, MIT order), the first ``int(C_in * ratio)`` input
channels' weights. TraDy/MeDyate budgets are the element counts (weights + input activations,
paper Eq. 3) of schemes 1, 3 and 5 (``trady_jax.paper.BUDGETS``); MeDyate Fig. 6 uses all five
for mbv2-w0.35.

``costs.usage(scheme_counts(...))['units']`` reproduces every W+A entry of the 7.3 table. The
papers' tables differ in one place: mbv2-w0.35 scheme 1 costs 28 282 units by Eq. 3, the tables
say 27 946, i.e. 336 fewer. That scheme is the only one of the 15 that updates a depthwise
layer's weights (42 of the 336 channels of ``blocks_16/depthwise``, ratio 0.125), and
336 = 42 x (9 - 1): the tables charge a depthwise channel's weights as ``C'/groups`` = 1 element,
without the ``k x k`` factor. ``table_units`` applies that accounting and reproduces all 15
scheme values (the 9 of the TraDy / MeDyate tables and MeDyate Fig. 6's 46 208 and 83 840; the
other 13 schemes have no depthwise weight update, so the accounting leaves them unchanged). The
15 schemes cannot tell this apart from another rule that removes 336 units from that scheme
alone, so it is the simplest consistent explanation, not a proof. Runs charge Eq. 3 with the
true depthwise weight count (``costs``); ``--budget 27946`` then cannot hold scheme 1
(``experiment.check_scheme_budget``).

Biases: a scheme also trains the biases of its last ``n_bias_update`` convs (``bias_paths``,
trained by strategy 'su' with a folded-BN model; with BatchNorm layers every shift is trained
anyway). Like every bias in the papers' accounting they are not charged to the budget.
"""

from __future__ import annotations

import dataclasses

from trady_jax import costs as costs_lib


@dataclasses.dataclass(frozen=True)
class Scheme:
  """One MIT SU scheme."""
  n_bias_update: int
  manual_weight_idx: tuple[int, ...]
  weight_update_ratio: tuple[float, ...]

  def __post_init__(self):
    if len(self.manual_weight_idx) != len(self.weight_update_ratio):
      raise ValueError("manual_weight_idx and weight_update_ratio differ in length")


def _s(n_bias: int, idx: str, ratio: str) -> Scheme:
  return Scheme(n_bias, tuple(int(i) for i in idx.split("-")),
                tuple(float(r) for r in ratio.split("-")))


SCHEMES: dict[str, dict[int, Scheme]] = {
    "mbv2-w0.35": {
        1: _s(16, "36-39-40-41-42-45-48-49", "1-1-0-0.25-0.125-0.125-0.125-0.125"),
        2: _s(20, "32-33-36-39-41-42-45-48", "0.125-0.5-0.5-1-0.25-0.125-0.125-1"),
        3: _s(25, "27-30-33-36-39-42-45-48", "1-1-1-1-1-0.125-0.5-1"),
        4: _s(31, "27-30-33-36-39-42-45-48", "1-1-1-1-1-0.5-1-1"),
        5: _s(34, "27-30-33-36-39-42-45-48", "1-1-1-1-1-1-1-1"),
    },
    "mcunet-in1": {
        1: _s(20, "23-24-27-30-33-39", "0-0.25-0.5-0.5-0-0"),
        2: _s(21, "21-23-24-26-27-30", "1-0-1-0-0.5-1"),
        3: _s(22, "21-24-27-30-36-39", "1-1-1-1-0.125-0.25"),
        4: _s(24, "21-24-27-30-33-39", "0.25-1-1-1-0.5-0.5"),
        5: _s(23, "21-24-27-30-36-39", "1-1-1-1-1-0.5"),
    },
    "proxyless-w0.3": {
        1: _s(21, "39-42-44-45-50-51-54-57", "0.25-1-0-1-0-0.125-0.25-0.25"),
        2: _s(28, "33-36-39-42-45-51-54-57", "0.5-0.25-1-1-1-0.5-0.25-0.5"),
        3: _s(25, "36-39-42-45-48-51-54-57", "1-0.5-1-1-0.25-0.5-1-1"),
        4: _s(32, "36-39-42-45-48-51-54-57", "1-1-1-1-0.5-1-1-1"),
        5: _s(45, "36-39-42-45-48-51-54-57", "1-1-1-1-1-1-1-1"),
    },
}


def get_scheme(arch: str, scheme: int) -> Scheme:
  """The SU scheme ``scheme`` (1-5) of ``arch``."""
  if arch not in SCHEMES:
    raise KeyError(f"no Sparse Update schemes for {arch!r}; known: {sorted(SCHEMES)}")
  if scheme not in SCHEMES[arch]:
    raise KeyError(f"{arch}: scheme {scheme} unknown; known: {sorted(SCHEMES[arch])}")
  return SCHEMES[arch][scheme]


def scheme_counts(arch: str, scheme: int, net: costs_lib.NetworkCosts) -> dict[str, int]:
  """``{kernel path: int(C_in * ratio)}`` of the scheme's weight-updated convs (zeros dropped)."""
  s, convs = get_scheme(arch, scheme), net.convs
  out = {}
  for idx, ratio in zip(s.manual_weight_idx, s.weight_update_ratio):
    if idx >= len(convs):
      raise ValueError(f"{arch} scheme {scheme}: conv index {idx} but the model has {len(convs)} "
                       "convs (built without the feature-mix conv?)")
    n = int(convs[idx].in_channels * ratio)
    if n:
      out[convs[idx].path] = n
  return out


def bias_paths(arch: str, scheme: int, net: costs_lib.NetworkCosts) -> list[str]:
  """Bias leaf paths of the last ``n_bias_update`` convs (MIT bias update)."""
  n = get_scheme(arch, scheme).n_bias_update
  return [c.path.removesuffix("kernel") + "bias" for c in net.convs[len(net.convs) - n:]]


def scheme_units(arch: str, net: costs_lib.NetworkCosts) -> dict[int, int]:
  """Units (weights + activations, Eq. 3) of every scheme of ``arch``."""
  return {k: net.usage(scheme_counts(arch, k, net))["units"] for k in SCHEMES[arch]}


def table_units(arch: str, net: costs_lib.NetworkCosts) -> dict[int, int]:
  """Units of every scheme as the papers' tables count them: Eq. 3 with a depthwise channel's
  weights charged without the ``k x k`` factor (module docstring)."""
  def kxk_extra(path: str) -> int:
    l = net[path]
    return l.weight - l.weight // (l.kernel_size[0] * l.kernel_size[1]) if l.kind == "depthwise" else 0

  return {k: units - sum(n * kxk_extra(p) for p, n in scheme_counts(arch, k, net).items())
          for k, units in scheme_units(arch, net).items()}
