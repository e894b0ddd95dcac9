"""Grid results: run records, aggregation over seeds, paired t-tests and atomic file writes.

Pure helpers (numpy and the standard library) behind ``experiments/grid.py`` and
``experiments/results.py``. A run record is a run folder's ``final.json`` (written by
``experiments/train.py``); the same folder's ``metrics.jsonl`` holds the per-epoch curves.

Conventions (method-spec 3, 10, 11):

* a cell is the mean ± std over seeds of the final test top-1 accuracy, in %;
* the 'Average' column is the mean of the per-dataset means, with ± the square root of the sum
  of the per-dataset variances (this reproduces the papers' printed Average stds);
* full fine-tuning ('baseline') ignores the budget: its budget key is ``'full'``;
* the paired t-test of Fig. 4 is one-sided (row strategy has the higher mean), paired over matched
  ``(arch, dataset, budget, seed)`` runs, or over seed-averaged ``(arch, dataset, budget)``
  conditions.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

FULL = "full"  # budget key of full fine-tuning, whatever --budget the run was given
BASELINE = "baseline"  # the strategy that ignores the budget
DIVERGED = "diverged.json"  # beside final.json: the run diverged (written by trady_jax.train)
# Dataset columns in the papers' order; other datasets follow alphabetically.
DATASET_ORDER = ("cifar10", "cifar100", "cub200", "flowers102", "food101", "pets", "vww")
# Row order of strategies (trady_jax.strategies.REGISTRY order, full fine-tuning last, as in the
# papers' tables); other names follow alphabetically.
STRATEGY_ORDER = ("s-full-random", "d-full-random", "s-det-rgn", "d-det-rgn", "s-topk-random",
                  "trady", "su", "medyate", "lara-trady", "lara-det-raw", "lara-prob-raw",
                  "prev-medyate", "baseline")


class ResultsWarning(UserWarning):
  """A result file was skipped or is suspicious (partial, corrupt, duplicated)."""


def _warn(msg: str) -> None:
  warnings.warn(msg, ResultsWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------------
# Atomic writes


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
  """Write ``data`` to ``path`` so readers see the old file or the whole new one, never a part.

  The bytes go to a temporary file in the same folder, are flushed to disk, then renamed over
  ``path`` (``os.replace`` is atomic on POSIX and Windows). Parent folders are created. On any
  error the temporary file is removed and ``path`` is left untouched.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; shared result folders need more
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except FileNotFoundError:
      pass
    raise
  try:  # make the rename itself durable (best effort; not supported everywhere)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
      os.fsync(dfd)
    finally:
      os.close(dfd)
  except OSError:
    pass
  return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
  """``write_bytes_atomic`` of UTF-8 text."""
  return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 1) -> Path:
  """Write ``obj`` as JSON atomically (e.g. a run's ``final.json``); serialisation errors happen
  before anything touches ``path``."""
  return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


# ------------------------------------------------------------------------------------------------
# Run records


@dataclasses.dataclass(frozen=True)
class Run:
  """One finished run, from its ``final.json``."""
  arch: str            # network, e.g. 'mbv2-w0.35'
  dataset: str         # dataset name as given to train.py
  strategy: str        # name from trady_jax.strategies.REGISTRY
  budget: int | str    # B_mem in units; FULL for the baseline
  seed: int            # training seed
  accuracy: float      # final test top-1 accuracy, in %
  path: str            # the final.json file
  record: Mapping[str, Any] = dataclasses.field(repr=False, compare=False)  # its whole content

  @property
  def condition(self) -> tuple:
    """``(arch, dataset, budget)``: what a strategy is compared on, seeds aside."""
    return (self.arch, self.dataset, self.budget)

  @property
  def key(self) -> tuple:
    """``(arch, dataset, budget, seed)``: the pairing unit of the t-tests."""
    return (self.arch, self.dataset, self.budget, self.seed)

  @property
  def fallback(self) -> bool:
    """True when the run used random weights or generated data (see train.py's notes)."""
    return self.record.get("pretrained") is False or self.record.get("data") == "generated data"

  @property
  def metrics_path(self) -> Path:
    return Path(self.path).with_name("metrics.jsonl")


def budget_key(strategy: str, budget: Any) -> int | str:
  """The budget a run is tabulated under: ``FULL`` for the baseline, else an int."""
  if strategy == BASELINE or budget == FULL:
    return FULL
  if isinstance(budget, bool) or not isinstance(budget, (int, float, str)):
    raise ValueError(f"budget {budget!r} is not a number")
  value = float(budget)
  if not math.isfinite(value) or value != int(value):
    raise ValueError(f"budget {budget!r} is not an integer")
  return int(value)


def parse_record(record: Any, path: str = "") -> Run:
  """A ``Run`` from a ``final.json`` object; ``ValueError`` says what is missing or wrong."""
  if not isinstance(record, dict):
    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
  missing = [k for k in ("arch", "dataset", "strategy", "seed", "test_accuracy")
             if k not in record]
  if "budget" not in record and record.get("strategy") != BASELINE:
    missing.append("budget")
  if missing:
    raise ValueError(f"missing {', '.join(missing)} (an unfinished or foreign record?)")
  bad = sorted(k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v))
  if bad:
    raise ValueError(f"{', '.join(bad)} not finite (a diverged run?)")
  acc = record["test_accuracy"]
  if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not math.isfinite(acc):
    raise ValueError(f"test_accuracy {acc!r} is not a finite number")
  # train.py records fractions; accept percentages too (a fraction is never above 1).
  acc = float(acc) * 100.0 if acc <= 1.0 else float(acc)
  seed = record["seed"]
  if isinstance(seed, bool) or not isinstance(seed, (int, float)) or seed != int(seed):
    raise ValueError(f"seed {seed!r} is not an integer")
  strategy = str(record["strategy"]).lower()
  return Run(arch=str(record["arch"]), dataset=str(record["dataset"]), strategy=strategy,
             budget=budget_key(strategy, record.get("budget", FULL)), seed=int(seed),
             accuracy=acc, path=str(path), record=record)


def read_final(path: str | os.PathLike) -> Run:
  """The ``Run`` of one ``final.json``; ``ValueError`` for unreadable or incomplete files."""
  try:
    text = Path(path).read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"cannot read: {e}") from None
  try:
    record = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"not valid JSON ({e}; partly written?)") from None
  if Path(path).with_name(DIVERGED).exists():
    raise ValueError(f"the run diverged (see {Path(path).with_name(DIVERGED)})")
  return parse_record(record, str(path))


def is_finished(workdir: str | os.PathLike) -> bool:
  """True when ``workdir/final.json`` is a complete, finite run record of a run that did not
  diverge."""
  try:
    read_final(Path(workdir) / "final.json")
    return True
  except ValueError:
    return False


def load_runs(root: str | os.PathLike, *, name: str = "final.json",
              exclude_fallback: bool = False) -> list[Run]:
  """Every valid ``name`` file below ``root``, sorted by path.

  Unreadable, partial or incomplete files are skipped with a ``ResultsWarning``, and so are
  duplicates of an ``(arch, dataset, strategy, budget, seed)`` already loaded (the first path in
  sorted order is kept). ``exclude_fallback`` also drops runs on random weights or generated data.
  """
  root = Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"results folder {root} not found")
  runs: list[Run] = []
  seen: dict[tuple, str] = {}
  for path in sorted(root.rglob(name)):
    if not path.is_file():
      continue
    try:
      run = read_final(path)
    except ValueError as e:
      _warn(f"skipping {path}: {e}")
      continue
    ident = (run.strategy, *run.key)
    if ident in seen:
      _warn(f"skipping {path}: duplicate of {seen[ident]} "
            f"({run.strategy}, {run.arch}, {run.dataset}, budget {run.budget}, seed {run.seed})")
      continue
    if exclude_fallback and run.fallback:
      _warn(f"skipping {path}: trained on random weights or generated data")
      continue
    seen[ident] = str(path)
    runs.append(run)
  return runs


def load_metrics(path: str | os.PathLike) -> list[dict]:
  """Per-epoch records of a ``metrics.jsonl``, sorted by epoch (the last line of an epoch wins).

  Bad lines (e.g. one being written) are skipped with a ``ResultsWarning``; a missing file gives
  an empty list.
  """
  path = Path(path)
  try:
    lines = path.read_text(encoding="utf-8").splitlines()
  except FileNotFoundError:
    return []
  except (OSError, UnicodeDecodeError) as e:
    _warn(f"skipping {path}: cannot read: {e}")
    return []
  by_epoch: dict[int, dict] = {}
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
      by_epoch[int(rec["epoch"])] = rec
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
      _warn(f"{path}:{i}: skipping a bad line ({type(e).__name__}: {e})")
  return [by_epoch[e] for e in sorted(by_epoch)]


# ------------------------------------------------------------------------------------------------
# Aggregation and tables


@dataclasses.dataclass(frozen=True)
class Cell:
  """Mean ± std of final test accuracy (%) over seeds."""
  mean: float            # mean over seeds
  std: float             # std over seeds (ddof as aggregated); nan with one seed
  n: int                 # number of seeds
  seeds: tuple = ()      # the seeds (empty for an Average cell)

  def format(self, digits: int = 2, expected_n: int = 0) -> str:
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


# ------------------------------------------------------------------------------------------------
# Paired t-tests


def _betacf(a: float, b: float, x: float) -> float:
  """Continued fraction of the incomplete beta function (modified Lentz)."""
  tiny, eps = 1e-300, 1e-15
  qab, qap, qam = a + b, a + 1.0, a - 1.0
  c, d = 1.0, 1.0 - qab * x / qap
  d = 1.0 / (d if abs(d) > tiny else tiny)
  h = d
  for m in range(1, 1000):
    m2 = 2 * m
    for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
               -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
      d = 1.0 + aa * d
      d = 1.0 / (d if abs(d) > tiny else tiny)
      c = 1.0 + aa / c
      c = c if abs(c) > tiny else tiny
      h *= d * c
    if abs(d * c - 1.0) < eps:
      break
  return h


def betainc(a: float, b: float, x: float) -> float:
  """Regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
  if not (a > 0 and b > 0):
    raise ValueError(f"betainc needs a, b > 0, got {a}, {b}")
  if not 0.0 <= x <= 1.0:
    raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
  if x in (0.0, 1.0):
    return x
  log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
               + b * math.log1p(-x))
  if x < (a + 1.0) / (a + b + 2.0):
    return math.exp(log_front) * _betacf(a, b, x) / a
  return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_sf(t: float, df: float) -> float:
  """P(T > t) for Student's t with ``df`` degrees of freedom."""
  if math.isnan(t) or not df > 0:
    return math.nan
  if math.isinf(t):
    return 0.0 if t > 0 else 1.0
  tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
  return tail if t > 0 else 1.0 - tail


@dataclasses.dataclass(frozen=True)
class TTest:
  """A paired t-test of x - y."""
  t: float          # t statistic
  p: float          # p-value of the chosen alternative
  n: int            # number of pairs
  mean_diff: float  # mean of x - y


def paired_ttest(x: Sequence[float], y: Sequence[float], alternative: str = "greater") -> TTest:
  """Paired t-test of H0: mean(x - y) = 0 against 'greater' (x higher), 'less' or 'two-sided'.

  Fewer than two pairs give p = nan; identical differences give p = 0 or 1 by the sign of their
  mean (nan when it is 0).
  """
  if alternative not in ("greater", "less", "two-sided"):
    raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', not {alternative!r}")
  d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
  if d.ndim != 1:
    raise ValueError(f"x and y must be 1-d sequences of equal length, got shape {d.shape}")
  n = d.size
  if n < 2:
    return TTest(math.nan, math.nan, n, float(d.mean()) if n else math.nan)
  mean, sd = float(d.mean()), float(d.std(ddof=1))
  if sd == 0.0:
    t = math.copysign(math.inf, mean) if mean else math.nan
  else:
    t = mean / (sd / math.sqrt(n))
  df = n - 1
  if alternative == "greater":
    p = student_t_sf(t, df)
  elif alternative == "less":
    p = student_t_sf(-t, df)
  else:
    p = min(1.0, 2.0 * student_t_sf(abs(t), df)) if not math.isnan(t) else math.nan
  return TTest(t, p, n, mean)


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
