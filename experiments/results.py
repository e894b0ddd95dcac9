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
import sys
import warnings


from trady_jax.report.records import ResultsWarning


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
  try:
    from trady_jax.report.make import make_report  # needs the 'report' extra (scipy)
  except ImportError as e:
    ap.exit(2, f"error: {e}\n")
  with warnings.catch_warnings():
    warnings.simplefilter("always", ResultsWarning)
    warnings.showwarning = lambda msg, *a, **k: print(f"WARNING: {msg}", file=sys.stderr)
    try:
      make_report(args.results, args.out or None, pair_unit=args.pair_unit,
                  exclude_fallback=args.exclude_fallback, plots=not args.no_plots, ddof=args.ddof)
    except FileNotFoundError as e:
      ap.error(str(e))
  return 0


if __name__ == "__main__":
  sys.exit(main())
