"""The runs of a grid, seeds x archs x datasets x budgets x strategies, each with a fixed folder.

Every run has the folder RESULTS/<arch>/<dataset>/<strategy>/b<budget>/s<seed>, 'bfull' for the
baseline (full fine-tuning ignores the budget), so a grid can be planned again at any time and
finds its finished runs. The papers' budgets of an arch are the W+A memory of MIT Sparse Update
schemes 1, 3 and 5 (method-spec 7.3); strategy 'su' trains the scheme of its budget.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shlex
from pathlib import Path
from typing import Sequence

from trady_jax import paper
from trady_jax.report.records import BASELINE, FINAL, FULL
from trady_jax.strategies import REGISTRY

# SU scheme of each paper budget (the papers' budgets are the W+A memory of schemes 1, 3, 5).
SU_SCHEMES = {arch: dict(zip(budgets, paper.BUDGET_SCHEMES))
              for arch, budgets in paper.BUDGETS.items()}


@dataclasses.dataclass(frozen=True)
class GridRun:
  """One run of the grid."""
  arch: str                 # network
  dataset: str              # dataset as passed to train.py
  strategy: str             # strategy name
  budget: int | None        # B_mem in units; None for the baseline (full fine-tuning)
  seed: int                 # training seed
  workdir: str              # run folder (deterministic, see workdir_for)
  su_scheme: int | None = None  # MIT SU scheme for strategy 'su'

  def argv(self, train: Sequence[str], extra: Sequence[str]) -> list[str]:
    """The command line: ``train`` (e.g. ``[python, 'experiments/train.py']``), this run's
    flags, then ``extra``."""
    a = [*train, "--arch", self.arch, "--dataset", self.dataset, "--strategy", self.strategy]
    if self.budget is not None:
      a += ["--budget", str(self.budget)]
    if self.su_scheme is not None:
      a += ["--su-scheme", str(self.su_scheme)]
    return a + ["--seed", str(self.seed), "--workdir", self.workdir, *extra]

  def command(self, train: Sequence[str], extra: Sequence[str], *, guard: bool = True) -> str:
    """One shell line; with ``guard`` it does nothing when the run has finished."""
    cmd = shlex.join(self.argv(train, extra))
    if guard:
      cmd = f"test -f {shlex.quote(str(Path(self.workdir) / FINAL))} || {cmd}"
    return cmd


def split_list(text: str) -> list[str]:
  """'a, b,c' -> ['a', 'b', 'c'] (empty items dropped)."""
  return [t.strip() for t in text.split(",") if t.strip()]


def safe_name(name: str) -> str:
  """A dataset/arch name usable as one folder name (as train.py does for its default workdir)."""
  return name.replace(":", "_").replace("/", "_").replace(os.sep, "_")


def workdir_for(results: str, arch: str, dataset: str, strategy: str, budget: int | None,
                seed: int) -> str:
  """RESULTS/<arch>/<dataset>/<strategy>/b<budget>/s<seed> ('bfull' for the baseline).

  >>> workdir_for("res", "mbv2-w0.35", "tfds:pets", "baseline", None, 0)
  'res/mbv2-w0.35/tfds_pets/baseline/bfull/s0'
  """
  b = FULL if budget is None else str(budget)
  return str(Path(results) / safe_name(arch) / safe_name(dataset) / strategy / f"b{b}"
             / f"s{seed}")


def resolve_budgets(spec: str, arch: str) -> list[int]:
  """'paper' -> the arch's three paper budgets; else a comma list of integers."""
  items = split_list(spec)
  if not items:
    raise ValueError("--budgets is empty")
  out: list[int] = []
  for item in items:
    if item == "paper":
      try:
        out += paper.budgets(arch)
      except KeyError:
        known = sorted({*paper.BUDGETS, *paper.TRANSFORMER_BUDGETS})
        raise ValueError(f"no paper budgets for arch {arch!r}; known: {known} "
                         "(give --budgets as integers)") from None
    else:
      try:
        out.append(int(item.replace("_", "")))
      except ValueError:
        raise ValueError(f"budget {item!r} is neither 'paper' nor an integer") from None
  return list(dict.fromkeys(out))


def expand(archs: list[str], datasets: list[str], strategies: list[str], budgets: str,
           seeds: list[int], results: str) -> list[GridRun]:
  """All runs of the grid, in a fixed order (seed, arch, dataset, budget, strategy), so that a
  partly run grid already covers every condition with its first seeds."""
  for name, items in (("--archs", archs), ("--datasets", datasets), ("--strategies", strategies),
                      ("--seeds", seeds)):
    if not items:
      raise ValueError(f"{name} is empty")
  unknown = [s for s in strategies if s not in REGISTRY]
  if unknown:
    raise ValueError(f"unknown strateg{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
                     f"known: {sorted(REGISTRY)}")
  only_baseline = all(s == BASELINE for s in strategies)
  per_arch = {a: [0] if only_baseline else resolve_budgets(budgets, a) for a in archs}
  for a in archs:
    if "su" in strategies:
      bad = [b for b in per_arch[a] if b not in SU_SCHEMES.get(a, {})]
      if bad:
        raise ValueError(f"strategy 'su' on {a}: budget(s) {bad} are not SU scheme budgets; "
                         f"known: {SU_SCHEMES.get(a, {})} (budget: scheme)")
  runs, seen = [], set()
  for seed, arch, dataset in itertools.product(seeds, archs, datasets):
    for budget in per_arch[arch]:
      for s in strategies:
        b = None if s == BASELINE else budget
        key = (seed, arch, dataset, s, b)
        if key in seen:  # the baseline appears once, whatever the budgets
          continue
        seen.add(key)
        runs.append(GridRun(arch, dataset, s, b, seed,
                            workdir_for(results, arch, dataset, s, b, seed),
                            SU_SCHEMES[arch][b] if s == "su" else None))
  return runs
