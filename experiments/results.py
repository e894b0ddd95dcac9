"""Tables and plots of a grid's results (the papers' tables, Fig. 4 and Fig. 5 style plots).

    python experiments/results.py --results results/            # outputs go next to the runs
    python experiments/results.py --results results/ --out report/ --pair-unit condition

Reads every RESULTS/**/final.json (partial or corrupt files are skipped with a warning) and the
metrics.jsonl beside it, and writes, atomically (a crash never leaves a half-written file):

  OUT/tables.md        per arch: rows (B_mem, method), a column per dataset and 'Average';
                       cells = mean ± std over seeds of the final test top-1 (%); then a summary
                       of the Average columns and the paired t-test p-values
  OUT/summary.csv      one line per (arch, budget, strategy, dataset or Average)
  OUT/runs.csv         one line per run
  OUT/ttest.csv        every strategy pair: matched pairs, mean difference, t, one-sided p
  OUT/plots/accuracy_vs_budget_<arch>.png   a panel per dataset and one for the Average
  OUT/plots/sparsity_<arch>_<dataset>_b<budget>.png   weight sparsity, activation sparsity and
                       dW FLOPs saved per epoch, one line per strategy (mean over seeds)
  OUT/plots/ttest_heatmap.png   one-sided paired t-tests, cell = p(row > column) (Fig. 4)

The tables are also printed as markdown.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # let `python experiments/results.py` import the package
  sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from trady_jax import results as R  # noqa: E402

# Per-epoch curves of the sparsity plot: (metrics.jsonl key, panel title).
SPARSITY_KEYS = (("weight_sparsity", "Weight sparsity (%)"),
                 ("activation_sparsity", "Activation sparsity (%)"),
                 ("flops_saved", "dW FLOPs saved (%)"))


def save_figure(fig, path: Path, dpi: int = 130) -> Path:
  """Render ``fig`` to PNG and write it atomically; the figure is closed."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
  plt.close(fig)
  return R.write_bytes_atomic(path, buf.getvalue())


def _colors(names: list[str]) -> dict[str, tuple]:
  """One colour per strategy, the same in every plot (by its place in STRATEGY_ORDER)."""
  tab20 = plt.get_cmap("tab20")
  palette = [tab20(2 * i) for i in range(10)] + [tab20(2 * i + 1) for i in range(10)]
  extra = sorted(set(names) - set(R.STRATEGY_ORDER))
  index = {n: i for i, n in enumerate(list(R.STRATEGY_ORDER) + extra)}
  return {n: palette[index[n] % len(palette)] for n in names}


def _figure_legend(fig, axes, nrow: int = 1) -> None:
  """One legend above the panels, with every label of every panel once."""
  handles: dict = {}
  for ax in axes:
    for h, l in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(l, h)
  fig.legend(list(handles.values()), list(handles), loc="upper center",
             ncol=min(len(handles), 7), bbox_to_anchor=(0.5, 1.0 + 0.04 / nrow), frameon=False)


def plot_accuracy_vs_budget(cells: dict, arch: str, path: Path) -> Path | None:
  """Accuracy (mean ± std over seeds) vs budget per strategy: a panel per dataset + Average.

  The baseline (full fine-tuning) is a dashed horizontal line. None when the arch has no
  budgeted runs.
  """
  datasets, rows = R.table_rows(cells, arch)
  budgeted = [r for r in rows if r["budget"] != R.FULL]
  if not budgeted:
    return None
  names = R.ordered({r["strategy"] for r in rows}, R.STRATEGY_ORDER)
  colors = _colors(names)
  panels = datasets + ["Average"]
  ncol = min(4, len(panels))
  nrow = math.ceil(len(panels) / ncol)
  fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
  for ax, panel in zip(axes.flat, panels):
    for s in names:
      srows = [r for r in rows if r["strategy"] == s]
      if panel == "Average":  # an Average over fewer datasets is not comparable: left out
        pts = [(r["budget"], r["average"]) for r in srows if r["complete"]]
      else:
        pts = [(r["budget"], r["cells"][panel]) for r in srows if r["cells"][panel] is not None]
      if not pts:
        continue
      if s == R.BASELINE:
        c = pts[0][1]
        ax.axhline(c.mean, color=colors[s], ls="--", lw=1.2, label="baseline (full)")
        if math.isfinite(c.std):
          ax.axhspan(c.mean - c.std, c.mean + c.std, color=colors[s], alpha=0.12, lw=0)
        continue
      pts.sort(key=lambda p: p[0])
      x = [p[0] for p in pts]
      y = [p[1].mean for p in pts]
      err = [p[1].std if math.isfinite(p[1].std) else 0.0 for p in pts]
      ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, lw=1.3, color=colors[s], label=s)
    ax.set_title(panel)
    ax.set_xlabel("budget B_mem (units)")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  _figure_legend(fig, axes.flat, nrow)
  fig.suptitle(f"{arch}: accuracy vs memory budget (mean ± std over seeds)",
               y=1.0 + 0.1 / nrow)
  fig.tight_layout()
  return save_figure(fig, path)


def sparsity_curves(runs: list[R.Run]) -> dict[tuple, dict[str, dict[str, np.ndarray]]]:
  """``{(arch, dataset, budget): {strategy: {key: (epochs, mean, std)}}}`` from metrics.jsonl."""
  per: dict[tuple, dict[str, list[list[dict]]]] = {}
  for r in runs:
    if r.budget == R.FULL:
      continue
    metrics = R.load_metrics(r.metrics_path)
    if metrics:
      per.setdefault(r.condition, {}).setdefault(r.strategy, []).append(metrics)
  out: dict = {}
  for cond, by_s in per.items():
    for s, seed_curves in by_s.items():
      curves = {}
      for key, _ in SPARSITY_KEYS:
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


def plot_sparsity(curves: dict[str, dict], title: str, path: Path) -> Path:
  """Weight sparsity, activation sparsity and dW FLOPs saved per epoch, a line per strategy."""
  names = R.ordered(curves, R.STRATEGY_ORDER)
  colors = _colors(names)
  fig, axes = plt.subplots(1, len(SPARSITY_KEYS), figsize=(4.6 * len(SPARSITY_KEYS), 3.5))
  for ax, (key, label) in zip(axes, SPARSITY_KEYS):
    for s in names:
      if key not in curves[s]:
        continue
      ep, mean, std = curves[s][key]
      ax.plot(ep, mean, marker="o" if len(ep) < 15 else None, ms=3, lw=1.3, color=colors[s],
              label=s)
      ax.fill_between(ep, mean - std, mean + std, color=colors[s], alpha=0.15, lw=0)
    ax.set_title(label)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
  _figure_legend(fig, axes)
  fig.suptitle(title, y=1.1)
  fig.tight_layout()
  return save_figure(fig, path)


def plot_ttest_heatmap(m: R.TTestMatrix, path: Path, title: str = "") -> Path | None:
  """Heat map of p(row > column), blue = row significantly better, annotated with p and n."""
  k = len(m.names)
  if k < 2:
    return None
  size = max(4.5, 0.75 * k + 2.5)
  fig, ax = plt.subplots(figsize=(size + 1.2, size))
  cmap = plt.get_cmap("coolwarm").with_extremes(bad="#e0e0e0")  # grey: no matched pairs
  im = ax.imshow(np.ma.masked_invalid(m.p), cmap=cmap, vmin=0.0, vmax=1.0)
  ax.set_xticks(range(k), m.names, rotation=45, ha="right")
  ax.set_yticks(range(k), m.names)
  ax.set_xlabel("column strategy")
  ax.set_ylabel("row strategy")
  fs = 9 if k <= 8 else 7
  for i in range(k):
    for j in range(k):
      p = m.p[i, j]
      if i == j:
        continue
      if math.isnan(p):
        ax.text(j, i, f"n={m.n[i, j]}", ha="center", va="center", fontsize=fs - 1, color="0.35")
        continue
      txt = "<.001" if p < 1e-3 else ">.999" if p > 0.999 else f"{p:.3f}"
      ax.text(j, i, txt, ha="center", va="center", fontsize=fs,
              color="white" if abs(p - 0.5) > 0.35 else "black")
  cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  cb.set_label("p-value (H1: row mean accuracy > column)")
  n_pairs = m.n[~np.eye(k, dtype=bool)]
  unit = ("(arch, dataset, budget, seed) runs" if m.pair_unit == "run"
          else "seed-averaged (arch, dataset, budget) conditions")
  lo, hi = n_pairs.min(), n_pairs.max()
  ax.set_title(title or f"One-sided paired t-tests over matched {unit}\n"
               f"pairs per cell: {lo if lo == hi else f'{lo}–{hi}'}", fontsize=10)
  fig.tight_layout()
  return save_figure(fig, path)


def _slug(*parts) -> str:
  return "_".join(str(p).replace(":", "_").replace("/", "_").replace(" ", "") for p in parts)


def make_report(results: str | Path, out: str | Path | None = None, *, pair_unit: str = "run",
                exclude_fallback: bool = False, plots: bool = True, ddof: int = 1,
                quiet: bool = False) -> dict:
  """Load the runs under ``results`` and write tables, CSVs and plots into ``out``."""
  results = Path(results)
  out = Path(out) if out else results
  runs = R.load_runs(results, exclude_fallback=exclude_fallback)
  cells = R.aggregate(runs, ddof=ddof)
  matrix = R.ttest_matrix(runs, pair_unit=pair_unit)
  fallback = [r for r in runs if r.fallback]
  md = ["# Results", "", f"{len(runs)} finished runs under `{results}`.", ""]
  if fallback:
    md += [f"**Note:** {len(fallback)} of them trained on random weights or generated data "
           "(see runs.csv, columns pretrained/data); use --exclude-fallback to drop them.", ""]
  md += ["## Final test top-1 accuracy (%)", "", R.markdown_tables(cells),
         "## Average column per strategy", "", R.markdown_average_summary(cells),
         "* = Average over only the datasets present.", "",
         f"## Paired t-tests: p(row > column), pairs = {pair_unit}s", "",
         R.markdown_ttest(matrix)]
  text = "\n".join(md)
  written = [R.write_text_atomic(out / "tables.md", text),
             R.write_text_atomic(out / "summary.csv", R.summary_csv(cells)),
             R.write_text_atomic(out / "runs.csv", R.runs_csv(runs)),
             R.write_text_atomic(out / "ttest.csv", R.ttest_csv(matrix))]
  if plots and runs:
    pdir = out / "plots"
    for arch in sorted({r.arch for r in runs}):
      written.append(plot_accuracy_vs_budget(cells, arch,
                                             pdir / f"accuracy_vs_budget_{_slug(arch)}.png"))
    for (arch, dataset, budget), curves in sorted(sparsity_curves(runs).items(), key=repr):
      written.append(plot_sparsity(
          curves, f"{arch}, {dataset}, budget {R.fmt_budget(budget)} (mean ± std over seeds)",
          pdir / f"sparsity_{_slug(arch, dataset)}_b{budget}.png"))
    written.append(plot_ttest_heatmap(matrix, pdir / "ttest_heatmap.png"))
  written = [w for w in written if w is not None]
  if not quiet:
    print(text)
    print("wrote " + ", ".join(str(w) for w in written))
  return {"runs": runs, "cells": cells, "ttest": matrix, "files": written}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--results", default="results", help="folder searched for **/final.json")
  ap.add_argument("--out", default="", help="output folder (default: --results)")
  ap.add_argument("--pair-unit", choices=("run", "condition"), default="run",
                  help="t-test pairs: matched (arch, dataset, budget, seed) runs, or seed-averaged "
                       "(arch, dataset, budget) conditions (the papers do not say which)")
  ap.add_argument("--exclude-fallback", action="store_true",
                  help="drop runs that used random weights or generated data")
  ap.add_argument("--no-plots", action="store_true", help="tables and CSVs only")
  ap.add_argument("--ddof", type=int, default=1,
                  help="std over seeds: 1 = sample std, 0 = population std")
  args = ap.parse_args(argv)
  with warnings.catch_warnings():
    warnings.simplefilter("always", R.ResultsWarning)
    warnings.showwarning = lambda msg, *a, **k: print(f"WARNING: {msg}", file=sys.stderr)
    try:
      make_report(args.results, args.out or None, pair_unit=args.pair_unit,
                  exclude_fallback=args.exclude_fallback, plots=not args.no_plots, ddof=args.ddof)
    except FileNotFoundError as e:
      ap.error(str(e))
  return 0


if __name__ == "__main__":
  sys.exit(main())
