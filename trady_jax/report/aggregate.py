"""Aggregation over seeds: a table cell's mean ± std, the papers' Average, per-epoch curves.

Conventions (method-spec 3, 10, 11): a cell is the mean ± std over seeds of the final test top-1
accuracy, in %; the 'Average' column is the mean of the per-dataset means, with ± the square root
of the sum of the per-dataset variances (this reproduces the papers' printed Average stds).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

import numpy as np

from trady_jax.report.records import FULL, Run, load_metrics

# Per-epoch metrics.jsonl keys averaged over seeds by ``sparsity_curves`` (fractions, shown in %).
CURVE_KEYS = ("weight_sparsity", "activation_sparsity", "flops_saved")


@dataclasses.dataclass(frozen=True)
class Cell:
  """Mean ± std of final test accuracy (%) over seeds."""
  mean: float            # mean over seeds
  std: float             # std over seeds (ddof as aggregated); nan with one seed
  n: int                 # number of seeds
  seeds: tuple = ()      # the seeds (empty for an Average cell)

  def format(self, digits: int = 2, expected_n: int = 0) -> str:
    """'mean±std', with ' (n=k)' when the cell has another number of seeds than expected.

    >>> Cell(91.0, 1.0, 2).format(expected_n=3)
    '91.00±1.00 (n=2)'
    """
    s = f"{self.mean:.{digits}f}"
    if math.isfinite(self.std):
      s += f"±{self.std:.{digits}f}"
    if self.n != expected_n:
      s += f" (n={self.n})"
    return s


def mean_std(values: Sequence[float], ddof: int = 1) -> tuple[float, float]:
  """Mean and std (``ddof=1``: the sample std); std is nan when there are too few values."""
  a = np.asarray(values, np.float64)
  if a.size == 0:
    return math.nan, math.nan
  std = float(a.std(ddof=ddof)) if a.size > ddof else math.nan
  return float(a.mean()), std


def aggregate(runs: Iterable[Run], *, ddof: int = 1) -> dict[tuple, Cell]:
  """``{(arch, budget, strategy, dataset): Cell}`` over seeds."""
  groups: dict[tuple, list[Run]] = {}
  for r in runs:
    groups.setdefault((r.arch, r.budget, r.strategy, r.dataset), []).append(r)
  out = {}
  for k, rs in groups.items():
    rs = sorted(rs, key=lambda r: r.seed)
    mean, std = mean_std([r.accuracy for r in rs], ddof)
    out[k] = Cell(mean, std, len(rs), tuple(r.seed for r in rs))
  return out


def average_cell(cells: Sequence[Cell]) -> Cell:
  """Mean of the means; ± = sqrt of the summed variances (the papers' Average convention)."""
  mean = float(np.mean([c.mean for c in cells]))
  var = [c.std ** 2 for c in cells]
  std = math.sqrt(sum(var)) if all(math.isfinite(v) for v in var) else math.nan
  return Cell(mean, std, min(c.n for c in cells))


def sparsity_curves(runs: Iterable[Run], keys: Sequence[str] = CURVE_KEYS) -> dict[tuple, dict]:
  """``{(arch, dataset, budget): {strategy: {key: (epochs, mean, std)}}}`` from metrics.jsonl.

  Mean and (population) std over seeds of each epoch's value, in %; full fine-tuning is left out.
  """
  per: dict[tuple, dict[str, list[list[dict]]]] = {}
  for r in runs:
    if r.budget == FULL:
      continue
    metrics = load_metrics(r.metrics_path)
    if metrics:
      per.setdefault(r.condition, {}).setdefault(r.strategy, []).append(metrics)
  out: dict = {}
  for cond, by_s in per.items():
    for s, seed_curves in by_s.items():
      curves = {}
      for key in keys:
        vals: dict[int, list[float]] = {}
        for curve in seed_curves:
          for rec in curve:
            v = rec.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
              vals.setdefault(int(rec["epoch"]), []).append(100.0 * float(v))
        if vals:
          ep = np.array(sorted(vals))
          curves[key] = (ep, np.array([np.mean(vals[e]) for e in ep]),
                         np.array([np.std(vals[e]) for e in ep]))
      if curves:
        out.setdefault(cond, {})[s] = curves
  return out
