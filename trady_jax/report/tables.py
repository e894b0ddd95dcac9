"""Result tables: the papers' accuracy tables, their Average summary, CSVs and t-test matrices.

Rows are (B_mem, method) in ``STRATEGY_ORDER``, columns datasets in ``DATASET_ORDER`` and the
'Average' (method-spec 11.1); cells come from ``aggregate`` and ``ttest``. Markdown for reading,
CSV for further processing.
"""

from __future__ import annotations

import csv
import io
import math
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from trady_jax.report.aggregate import Cell, average_cell
from trady_jax.report.records import BASELINE, FULL, Run
from trady_jax.strategies import REGISTRY

if TYPE_CHECKING:  # scipy only where t-tests are run
  from trady_jax.report.ttest import TTestMatrix

# Dataset columns in the papers' order; other datasets follow alphabetically.
DATASET_ORDER = ("cifar10", "cifar100", "cub200", "flowers102", "food101", "pets", "vww")
# Row order of strategies: the registry's, full fine-tuning last (as in the papers' tables);
# other names follow alphabetically.
STRATEGY_ORDER = tuple(n for n in REGISTRY if n != BASELINE) + (BASELINE,)


def ordered(names: Iterable[str], order: Sequence[str]) -> list[str]:
  """``names`` in ``order``, the others after them alphabetically."""
  names = set(names)
  return [n for n in order if n in names] + sorted(names - set(order))


def _budget_sort(b: int | str) -> tuple:
  return (1, 0) if b == FULL else (0, b)


def fmt_budget(b: int | str) -> str:
  return "full" if b == FULL else f"{b:,}".replace(",", " ")


def table_rows(cells: Mapping[tuple, Cell], arch: str,
               strategies: Sequence[str] | None = None) -> tuple[list[str], list[dict]]:
  """``(datasets, rows)`` of one arch's table: a row per (budget, strategy) with a Cell per
  dataset (None where missing), an 'Average' Cell (over the datasets present) and ``complete``."""
  keys = [k for k in cells if k[0] == arch]
  datasets = ordered({k[3] for k in keys}, DATASET_ORDER)
  order = ordered({k[2] for k in keys}, strategies or STRATEGY_ORDER)
  rows = []
  for budget in sorted({k[1] for k in keys}, key=_budget_sort):
    for s in order:
      row = {d: cells.get((arch, budget, s, d)) for d in datasets}
      present = [c for c in row.values() if c is not None]
      if not present:
        continue
      rows.append({"budget": budget, "strategy": s, "cells": row,
                   "average": average_cell(present), "complete": len(present) == len(datasets)})
  return datasets, rows


def markdown_tables(cells: Mapping[tuple, Cell], strategies: Sequence[str] | None = None,
                    digits: int = 2) -> str:
  """The papers' tables, one per arch: rows (B_mem, method), a column per dataset and Average."""
  if not cells:
    return "_No finished runs._\n"
  expected = max(c.n for c in cells.values())
  out = []
  for arch in sorted({k[0] for k in cells}):
    datasets, rows = table_rows(cells, arch, strategies)
    out.append(f"### {arch}\n")
    out.append("| B_mem | Method | " + " | ".join(datasets) + " | Average |")
    out.append("|---|---|" + "---|" * (len(datasets) + 1))
    for r in rows:
      vals = [r["cells"][d].format(digits, expected) if r["cells"][d] else "–" for d in datasets]
      avg = r["average"].format(digits, expected)
      if not r["complete"]:
        avg += " *"
      out.append(f"| {fmt_budget(r['budget'])} | {r['strategy']} | " + " | ".join(vals)
                 + f" | {avg} |")
    out.append("")
  note = "Final test top-1 accuracy (%), mean ± std over seeds"
  if any(c.n != expected for c in cells.values()):
    note += f"; (n=k): a cell over only k seeds (most cells have {expected})"
  out.append(note + "; * = Average over only the datasets present. Average ± is the square "
             "root of the summed per-dataset variances.\n")
  return "\n".join(out)


def markdown_average_summary(cells: Mapping[tuple, Cell],
                             strategies: Sequence[str] | None = None, digits: int = 2) -> str:
  """Average column per strategy (rows) and (arch, budget) (columns), like method-spec 11.1."""
  cols, avg = [], {}
  for arch in sorted({k[0] for k in cells}):
    _, rows = table_rows(cells, arch, strategies)
    for r in rows:
      col = (arch, r["budget"])
      if col not in cols:
        cols.append(col)
      avg[(r["strategy"], col)] = r["average"].mean, r["complete"]
  names = ordered({s for s, _ in avg}, strategies or STRATEGY_ORDER)
  out = ["| Method | " + " | ".join(f"{a} {fmt_budget(b)}" for a, b in cols) + " |",
         "|---|" + "---|" * len(cols)]
  for s in names:
    vals = []
    for c in cols:
      v = avg.get((s, c))
      vals.append("" if v is None else f"{v[0]:.{digits}f}" + ("" if v[1] else " *"))
    out.append(f"| {s} | " + " | ".join(vals) + " |")
  return "\n".join(out) + "\n"


def summary_csv(cells: Mapping[tuple, Cell], strategies: Sequence[str] | None = None) -> str:
  """CSV text: arch, budget, strategy, dataset (or 'Average'), n_seeds, seeds, mean, std."""
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(["arch", "budget", "strategy", "dataset", "n_seeds", "seeds", "mean", "std"])
  for arch in sorted({k[0] for k in cells}):
    datasets, rows = table_rows(cells, arch, strategies)
    for r in rows:
      for d in datasets:
        c = r["cells"][d]
        if c is not None:
          w.writerow([arch, r["budget"], r["strategy"], d, c.n, " ".join(map(str, c.seeds)),
                      f"{c.mean:.4f}", f"{c.std:.4f}"])
      a = r["average"]
      w.writerow([arch, r["budget"], r["strategy"], "Average" if r["complete"] else "Average*",
                  a.n, "", f"{a.mean:.4f}", f"{a.std:.4f}"])
  return buf.getvalue()


def runs_csv(runs: Iterable[Run]) -> str:
  """CSV text with one line per run (accuracy in %) and where it came from."""
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(["arch", "dataset", "strategy", "budget", "seed", "test_accuracy", "units",
              "weight_sparsity", "activation_sparsity", "flops_saved", "wall_s", "pretrained",
              "data", "path"])
  for r in runs:
    g = r.record.get
    w.writerow([r.arch, r.dataset, r.strategy, r.budget, r.seed, f"{r.accuracy:.4f}",
                g("units", ""), g("weight_sparsity", ""), g("activation_sparsity", ""),
                g("flops_saved", ""), g("wall_s", ""), g("pretrained", ""), g("data", ""),
                r.path])
  return buf.getvalue()


def ttest_csv(m: TTestMatrix) -> str:
  """CSV text: row, column, n_pairs, mean_diff, t, p (H1: row > column)."""
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(["row", "column", "pair_unit", "n_pairs", "mean_diff", "t", "p_row_greater"])
  for i, a in enumerate(m.names):
    for j, b in enumerate(m.names):
      if i != j:
        w.writerow([a, b, m.pair_unit, int(m.n[i, j]), f"{m.diff[i, j]:.4f}",
                    f"{m.t[i, j]:.4f}", f"{m.p[i, j]:.6g}"])
  return buf.getvalue()


def markdown_ttest(m: TTestMatrix) -> str:
  """The p-value matrix as markdown (row > column)."""
  if len(m.names) < 2:
    return "_Fewer than two strategies to compare._\n"
  out = ["| row > column | " + " | ".join(m.names) + " |", "|---|" + "---|" * len(m.names)]
  for i, a in enumerate(m.names):
    cells = ["" if i == j or math.isnan(m.p[i, j]) else "<0.001" if m.p[i, j] < 1e-3
             else ">0.999" if m.p[i, j] > 0.999 else f"{m.p[i, j]:.3f}"
             for j in range(len(m.names))]
    out.append(f"| {a} | " + " | ".join(cells) + " |")
  return "\n".join(out) + "\n"
