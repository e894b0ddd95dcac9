"""Figures of a grid's results: accuracy vs budget, per-epoch sparsity, the t-test heat map.

Accuracy vs B_mem per strategy with the full fine-tuning line (method-spec 11), weight and
activation sparsity and dW FLOPs saved per epoch (Fig. 5 style), and the one-sided paired t-test
p-values (Fig. 4). Every PNG is written atomically; strategies keep one colour in every plot.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure  # no pyplot: no backend chosen, no figures left open

from trady_jax.atomic import write_bytes_atomic
from trady_jax.report.records import BASELINE, FULL
from trady_jax.report.tables import STRATEGY_ORDER, ordered, table_rows

if TYPE_CHECKING:  # scipy only where t-tests are run
  from trady_jax.report.ttest import TTestMatrix

# Panel titles of the sparsity plot, one per aggregate.CURVE_KEYS key.
CURVE_TITLES = {"weight_sparsity": "Weight sparsity (%)",
                "activation_sparsity": "Activation sparsity (%)",
                "flops_saved": "dW FLOPs saved (%)"}


def save_figure(fig, path: Path, dpi: int = 130) -> Path:
  """Render ``fig`` to PNG and write it atomically."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
  return write_bytes_atomic(path, buf.getvalue())


def _colors(names: list[str]) -> dict[str, tuple]:
  """One colour per strategy, the same in every plot (by its place in STRATEGY_ORDER)."""
  tab20 = colormaps["tab20"]
  palette = [tab20(2 * i) for i in range(10)] + [tab20(2 * i + 1) for i in range(10)]
  extra = sorted(set(names) - set(STRATEGY_ORDER))
  index = {n: i for i, n in enumerate(list(STRATEGY_ORDER) + extra)}
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
  datasets, rows = table_rows(cells, arch)
  budgeted = [r for r in rows if r["budget"] != FULL]
  if not budgeted:
    return None
  names = ordered({r["strategy"] for r in rows}, STRATEGY_ORDER)
  colors = _colors(names)
  panels = datasets + ["Average"]
  ncol = min(4, len(panels))
  nrow = math.ceil(len(panels) / ncol)
  fig = Figure(figsize=(4.2 * ncol, 3.4 * nrow))
  axes = fig.subplots(nrow, ncol, squeeze=False)
  for ax, panel in zip(axes.flat, panels):
    for s in names:
      srows = [r for r in rows if r["strategy"] == s]
      if panel == "Average":  # an Average over fewer datasets is not comparable: left out
        pts = [(r["budget"], r["average"]) for r in srows if r["complete"]]
      else:
        pts = [(r["budget"], r["cells"][panel]) for r in srows if r["cells"][panel] is not None]
      if not pts:
        continue
      if s == BASELINE:
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


def plot_sparsity(curves: dict[str, dict], title: str, path: Path) -> Path:
  """Weight sparsity, activation sparsity and dW FLOPs saved per epoch, a line per strategy."""
  names = ordered(curves, STRATEGY_ORDER)
  colors = _colors(names)
  fig = Figure(figsize=(4.6 * len(CURVE_TITLES), 3.5))
  axes = fig.subplots(1, len(CURVE_TITLES))
  for ax, (key, label) in zip(axes, CURVE_TITLES.items()):
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


def plot_ttest_heatmap(m: TTestMatrix, path: Path, title: str = "") -> Path | None:
  """Heat map of p(row > column), blue = row significantly better, annotated with p and n."""
  k = len(m.names)
  if k < 2:
    return None
  size = max(4.5, 0.75 * k + 2.5)
  fig = Figure(figsize=(size + 1.2, size))
  ax = fig.subplots()
  cmap = colormaps["coolwarm"].with_extremes(bad="#e0e0e0")  # grey: no matched pairs
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
