"""Run records: the schema of a run folder's ``final.json``, written and read in this one place.

A finished run leaves ``WORKDIR/final.json`` (``write_final``: the run loop's final metrics, where
its weights and data came from, and the config fields that name the run) beside its per-epoch
``metrics.jsonl``. A run that diverged leaves ``WORKDIR/diverged.json`` instead and is never
counted. ``load_runs`` collects every record below a results folder as ``Run`` values.

Conventions (method-spec 3, 10, 11): accuracies are tabulated in %; full fine-tuning
('baseline') ignores the budget, so its budget key is ``'full'``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

from trady_jax import atomic

FINAL = "final.json"  # WORKDIR/final.json: the record of a finished run
METRICS = "metrics.jsonl"  # WORKDIR/metrics.jsonl: one line per epoch
DIVERGED = "diverged.json"  # WORKDIR/diverged.json: the run diverged (written by trady_jax.train)
FULL = "full"  # budget key of full fine-tuning, whatever --budget the run was given
BASELINE = "baseline"  # the strategy that ignores the budget
# Config fields that name a run; with the test accuracy, what every record must hold (the
# baseline may leave out its budget).
IDENTITY = ("strategy", "arch", "dataset", "budget", "seed")
REQUIRED = IDENTITY + ("test_accuracy",)


class ResultsWarning(UserWarning):
  """A result file was skipped or is suspicious (partial, corrupt, duplicated)."""


def warn(msg: str) -> None:
  """Issue a ``ResultsWarning`` attributed to the caller's caller."""
  warnings.warn(msg, ResultsWarning, stacklevel=3)


def write_final(workdir: str | os.PathLike, metrics: Mapping[str, Any], cfg: Any) -> dict:
  """Write ``WORKDIR/final.json`` atomically: ``metrics`` plus ``cfg``'s ``IDENTITY`` fields.

  ``metrics`` holds the run loop's final metrics (``test_accuracy`` as a fraction) and anything
  else worth keeping (where weights and data came from); ``cfg`` is the run's
  ``trady_jax.config.Config``. Returns the record written, which ``parse_record`` reads back.
  """
  record = {**metrics, **{k: getattr(cfg, k) for k in IDENTITY}}
  atomic.write_json_atomic(Path(workdir) / FINAL, record)
  return record


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
    return Path(self.path).with_name(METRICS)


def budget_key(strategy: str, budget: Any) -> int | str:
  """The budget a run is tabulated under: ``FULL`` for the baseline, else an int.

  >>> budget_key("trady", 27946.0), budget_key("baseline", 27946)
  (27946, 'full')
  """
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
  missing = [k for k in REQUIRED if k not in record
             and not (k == "budget" and record.get("strategy") == BASELINE)]
  if missing:
    raise ValueError(f"missing {', '.join(missing)} (an unfinished or foreign record?)")
  bad = sorted(k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v))
  if bad:
    raise ValueError(f"{', '.join(bad)} not finite (a diverged run?)")
  acc = record["test_accuracy"]
  if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not math.isfinite(acc):
    raise ValueError(f"test_accuracy {acc!r} is not a finite number")
  # write_final records fractions; accept percentages too (a fraction is never above 1).
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
  if diverged(Path(path).parent):
    raise ValueError(f"the run diverged (see {Path(path).with_name(DIVERGED)})")
  return parse_record(record, str(path))


def is_finished(workdir: str | os.PathLike) -> bool:
  """True when ``WORKDIR/final.json`` is a complete, finite record of a run that did not
  diverge."""
  try:
    read_final(Path(workdir) / FINAL)
    return True
  except ValueError:
    return False


def diverged(workdir: str | os.PathLike) -> bool:
  """True when the run stopped at a non-finite loss or parameter (``WORKDIR/diverged.json``)."""
  return (Path(workdir) / DIVERGED).exists()


def load_runs(root: str | os.PathLike, *, name: str = FINAL,
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
      warn(f"skipping {path}: {e}")
      continue
    ident = (run.strategy, *run.key)
    if ident in seen:
      warn(f"skipping {path}: duplicate of {seen[ident]} "
           f"({run.strategy}, {run.arch}, {run.dataset}, budget {run.budget}, seed {run.seed})")
      continue
    if exclude_fallback and run.fallback:
      warn(f"skipping {path}: trained on random weights or generated data")
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
    warn(f"skipping {path}: cannot read: {e}")
    return []
  by_epoch: dict[int, dict] = {}
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
      by_epoch[int(rec["epoch"])] = rec
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
      warn(f"{path}:{i}: skipping a bad line ({type(e).__name__}: {e})")
  return [by_epoch[e] for e in sorted(by_epoch)]
