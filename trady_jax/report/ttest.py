"""Paired t-tests between strategies over matched runs (method-spec 3, Fig. 4), by scipy.stats.

The test of Fig. 4 is one-sided (the row strategy has the higher mean), paired over matched
``(arch, dataset, budget, seed)`` runs, or over seed-averaged ``(arch, dataset, budget)``
conditions. Needs scipy (the ``report`` extra: ``pip install 'trady-jax[report]'``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

import numpy as np

try:
  from scipy import stats
except ImportError:  # one clear line instead of a traceback into scipy's absence
  raise ImportError("paired t-tests need scipy: pip install 'trady-jax[report]'") from None

from trady_jax.report.records import BASELINE, Run

ALTERNATIVES = ("greater", "less", "two-sided")


@dataclasses.dataclass(frozen=True)
class TTest:
  """A paired t-test of x - y."""
  t: float          # t statistic
  p: float          # p-value of the chosen alternative
  n: int            # number of pairs
  mean_diff: float  # mean of x - y


def paired_ttest(x: Sequence[float], y: Sequence[float], alternative: str = "greater") -> TTest:
  """Paired t-test of H0: mean(x - y) = 0 against 'greater' (x higher), 'less' or 'two-sided'.

  ``scipy.stats.ttest_rel``, except where it has no answer: fewer than two pairs give p = nan;
  identical differences give p = 0 or 1 by the sign of their mean (nan when it is 0).

  >>> r = paired_ttest([11, 12, 13], [10, 10, 10])  # d = 1, 2, 3: t = 2 sqrt(3), df = 2
  >>> round(r.t, 4), round(r.p, 4), r.n
  (3.4641, 0.0371, 3)
  """
  if alternative not in ALTERNATIVES:
    raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', not {alternative!r}")
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  d = x - y
  if d.ndim != 1:
    raise ValueError(f"x and y must be 1-d sequences of equal length, got shape {d.shape}")
  n = d.size
  if n < 2:
    return TTest(math.nan, math.nan, n, float(d.mean()) if n else math.nan)
  mean = float(d.mean())
  if float(d.std(ddof=1)) == 0.0:  # t = ±inf: certain, whatever the degrees of freedom
    t = math.copysign(math.inf, mean) if mean else math.nan
    holds = {"greater": t > 0, "less": t < 0, "two-sided": True}[alternative]
    return TTest(t, math.nan if math.isnan(t) else 0.0 if holds else 1.0, n, mean)
  res = stats.ttest_rel(x, y, alternative=alternative)
  return TTest(float(res.statistic), float(res.pvalue), n, mean)


def _values(runs: Iterable[Run], pair_unit: str) -> dict[str, dict[tuple, float]]:
  """``{strategy: {pairing key: accuracy}}`` per run, or seed-averaged per condition."""
  if pair_unit not in ("run", "condition"):
    raise ValueError(f"pair_unit must be 'run' or 'condition', not {pair_unit!r}")
  acc: dict[str, dict[tuple, list[float]]] = {}
  for r in runs:
    k = r.key if pair_unit == "run" else r.condition
    acc.setdefault(r.strategy, {}).setdefault(k, []).append(r.accuracy)
  return {s: {k: float(np.mean(v)) for k, v in d.items()} for s, d in acc.items()}


@dataclasses.dataclass(frozen=True)
class TTestMatrix:
  """One-sided paired t-tests of every strategy pair: cell (i, j) tests row i > column j."""
  names: list[str]   # strategies, rows and columns, best first
  p: np.ndarray      # p-values; nan on the diagonal and where fewer than 2 pairs match
  n: np.ndarray      # number of matched pairs
  diff: np.ndarray   # mean accuracy difference row - column over the matched pairs (points)
  t: np.ndarray      # t statistics
  pair_unit: str     # 'run' or 'condition'


def ttest_matrix(runs: Sequence[Run], strategies: Sequence[str] | None = None, *,
                 pair_unit: str = "run", exclude: Sequence[str] = (BASELINE,)) -> TTestMatrix:
  """Paired t-tests between strategies over matched conditions (method-spec 3, Fig. 4).

  Pairs match on ``(arch, dataset, budget, seed)`` (``pair_unit='run'``) or on seed-averaged
  ``(arch, dataset, budget)`` (``'condition'``). The baseline is excluded by default: its budget
  is 'full', so it matches nothing. Unless ``strategies`` gives the order, the best comes first:
  rows sorted by their mean p-value (a row of small p-values beats most columns).
  """
  vals = _values(runs, pair_unit)
  if strategies is None:
    names = sorted(s for s in vals if s not in exclude)
  else:
    unknown = [s for s in strategies if s not in vals]
    if unknown:
      raise ValueError(f"no runs of strateg{'y' if len(unknown) == 1 else 'ies'} {unknown}")
    names = list(strategies)
  k = len(names)
  p, t, diff = (np.full((k, k), np.nan) for _ in range(3))
  n = np.zeros((k, k), np.int64)
  for i, a in enumerate(names):
    for j, b in enumerate(names):
      if i == j:
        continue
      common = sorted(set(vals[a]) & set(vals[b]), key=repr)
      res = paired_ttest([vals[a][c] for c in common], [vals[b][c] for c in common])
      p[i, j], t[i, j], n[i, j], diff[i, j] = res.p, res.t, res.n, res.mean_diff
  if strategies is None:  # best first: lowest mean p-value of its row (beats most others)
    def rank(i):
      row = p[i][~np.isnan(p[i])]
      return (float(row.mean()) if row.size else math.inf, names[i])
    idx = sorted(range(k), key=rank)
    names = [names[i] for i in idx]
    p, t, diff, n = (m[np.ix_(idx, idx)] for m in (p, t, diff, n))
  return TTestMatrix(names, p, n, diff, t, pair_unit)
