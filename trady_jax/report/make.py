"""A results folder's report: tables.md, summary.csv, runs.csv, ttest.csv and plots/*.png.

``make_report`` collects the run records below a folder (``records.load_runs``), aggregates them
over seeds, runs the paired t-tests and writes every output atomically (``experiments/results.py``
is its command line; its --help lists the files).
"""

from __future__ import annotations

from pathlib import Path

from trady_jax.atomic import write_text_atomic
from trady_jax.report import aggregate as A
from trady_jax.report import plots as P
from trady_jax.report import records as R
from trady_jax.report import tables as T
from trady_jax.report import ttest


def _slug(*parts) -> str:
  """A file-name part from names that may hold ':', '/' or spaces."""
  return "_".join(str(p).replace(":", "_").replace("/", "_").replace(" ", "") for p in parts)


def make_report(results: str | Path, out: str | Path | None = None, *, pair_unit: str = "run",
                exclude_fallback: bool = False, plots: bool = True, ddof: int = 1,
                quiet: bool = False) -> dict:
  """Load the runs under ``results`` and write tables, CSVs and plots into ``out``.

  ``out`` defaults to ``results``; ``pair_unit`` is the t-tests' pairing (``ttest.ttest_matrix``),
  ``ddof`` the std over seeds (1: sample std). Returns ``{'runs', 'cells', 'ttest', 'files'}``.
  """
  results = Path(results)
  out = Path(out) if out else results
  runs = R.load_runs(results, exclude_fallback=exclude_fallback)
  cells = A.aggregate(runs, ddof=ddof)
  matrix = ttest.ttest_matrix(runs, pair_unit=pair_unit)
  fallback = [r for r in runs if r.fallback]
  md = ["# Results", "", f"{len(runs)} finished runs under `{results}`.", ""]
  if fallback:
    md += [f"**Note:** {len(fallback)} of them trained on random weights or generated data "
           "(see runs.csv, columns pretrained/data); use --exclude-fallback to drop them.", ""]
  md += ["## Final test top-1 accuracy (%)", "", T.markdown_tables(cells),
         "## Average column per strategy", "", T.markdown_average_summary(cells),
         "* = Average over only the datasets present.", "",
         f"## Paired t-tests: p(row > column), pairs = {pair_unit}s", "",
         T.markdown_ttest(matrix)]
  text = "\n".join(md)
  written = [write_text_atomic(out / "tables.md", text),
             write_text_atomic(out / "summary.csv", T.summary_csv(cells)),
             write_text_atomic(out / "runs.csv", T.runs_csv(runs)),
             write_text_atomic(out / "ttest.csv", T.ttest_csv(matrix))]
  if plots and runs:
    pdir = out / "plots"
    for arch in sorted({r.arch for r in runs}):
      written.append(P.plot_accuracy_vs_budget(
          cells, arch, pdir / f"accuracy_vs_budget_{_slug(arch)}.png"))
    for (arch, dataset, budget), curves in sorted(A.sparsity_curves(runs).items(), key=repr):
      written.append(P.plot_sparsity(
          curves, f"{arch}, {dataset}, budget {T.fmt_budget(budget)} (mean ± std over seeds)",
          pdir / f"sparsity_{_slug(arch, dataset)}_b{budget}.png"))
    written.append(P.plot_ttest_heatmap(matrix, pdir / "ttest_heatmap.png"))
  written = [w for w in written if w is not None]
  if not quiet:
    print(text)
    print("wrote " + ", ".join(str(w) for w in written))
  return {"runs": runs, "cells": cells, "ttest": matrix, "files": written}
