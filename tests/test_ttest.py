"""Paired t-tests between strategies over matched seeds, and the scipy requirement."""

import importlib
import math
import sys

import pytest

from trady_jax.report import records, ttest

from fake_results import final_record


def test_paired_ttest_known_value():
  # d = x - y = [1, 2, 3]: mean 2, sd 1, t = 2 sqrt(3), df = 2, and for df = 2 the t tail is
  # P(T > t) = 1/2 - t / (2 sqrt(t^2 + 2)) = 1/2 - sqrt(3/14) = 0.0370862...
  res = ttest.paired_ttest([11, 12, 13], [10, 10, 10])
  assert res.t == pytest.approx(2 * math.sqrt(3))
  assert res.p == pytest.approx(0.5 - math.sqrt(3 / 14), rel=1e-10)
  assert res.n == 3 and res.mean_diff == pytest.approx(2.0)
  assert ttest.paired_ttest([10, 10, 10], [11, 12, 13]).p == pytest.approx(1 - res.p, rel=1e-10)
  assert ttest.paired_ttest([11, 12, 13], [10, 10, 10], "two-sided").p == pytest.approx(2 * res.p)
  assert math.isnan(ttest.paired_ttest([1], [0]).p)
  # constant differences: t is infinite and the answer certain (scipy itself returns nan)
  assert ttest.paired_ttest([2, 3], [1, 2]).p == 0.0
  assert ttest.paired_ttest([2, 3], [1, 2], "less").p == 1.0
  assert ttest.paired_ttest([1, 2], [2, 3], "two-sided").p == 0.0
  assert math.isnan(ttest.paired_ttest([2, 3], [2, 3]).p)  # no difference at all
  with pytest.raises(ValueError, match="alternative"):
    ttest.paired_ttest([1, 2], [0, 0], "bigger")


def test_report_without_scipy_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "scipy", None)  # import scipy now fails
  monkeypatch.delitem(sys.modules, "trady_jax.report.ttest")
  with pytest.raises(ImportError, match=r"need scipy: pip install 'trady-jax\[report\]'"):
    importlib.import_module("trady_jax.report.ttest")


def test_ttest_matrix_pairs_matched_runs():
  def run(s, seed, acc, budget=100, dataset="cifar10"):
    return records.parse_record(final_record("mbv2-w0.35", dataset, s, budget, seed, acc))
  runs = [run("a", s, 0.5 + 0.01 * s + 0.001 * s * s) for s in range(5)]
  runs += [run("b", s, 0.5 + 0.01 * s) for s in range(5)]
  runs += [run("b", 9, 0.99)]  # no partner: not paired
  m = ttest.ttest_matrix(runs)
  assert m.names == ["a", "b"]  # a beats b on every matched seed
  i, j = m.names.index("a"), m.names.index("b")
  ref = ttest.paired_ttest([0.1 * s * s for s in range(5)], [0.0] * 5)
  assert m.n[i, j] == 5 and m.p[i, j] == pytest.approx(ref.p)
  assert m.p[j, i] == pytest.approx(1 - ref.p) and math.isnan(m.p[i, i])
  m2 = ttest.ttest_matrix(runs, pair_unit="condition")
  assert m2.n[i, j] == 1 and math.isnan(m2.p[i, j])
