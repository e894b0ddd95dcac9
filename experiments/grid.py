"""Launch a grid of fine-tuning runs: seeds x budgets x datasets x strategies x archs.

    python experiments/grid.py --archs mbv2-w0.35 --datasets cifar10 \\
        --strategies trady,su,baseline --budgets paper --seeds 0,42,100 --results results/ \\
        --emit-commands --epochs 5 --offline true

Modes (exactly one):
  --emit-commands     print one shell command per pending run (e.g. for a job array or xargs -P)
  --emit-slurm FILE   write FILE, an sbatch array script, and FILE's commands file (same name,
                      suffix .commands); array task i runs line i+1 of it
  --run               run pending runs here, one after another (output to WORKDIR/train.log)
  --status            count finished, running and pending runs

Every run has a fixed folder RESULTS/<arch>/<dataset>/<strategy>/b<budget>/s<seed>, 'bfull' for
the baseline (full fine-tuning ignores the budget). A run is finished when its final.json is a
complete record: finished runs are never repeated, an interrupted one resumes from its
checkpoint, and each emitted command starts with `test -f WORKDIR/final.json ||`, so commands can
be re-run safely. Grids can spread over machines with no coordinator: a job array over the
emitted commands, or `--run --shard K/N` on N machines sharing RESULTS. Every train.py process
holds its run folder's lock (WORKDIR/.lock, an OS lock the kernel drops when the process ends),
so two processes never train the same run at once: `--run` skips runs locked by a live process
(even a trainer left running by a killed launcher), `--status` shows them as running and lock
files no live process holds as stale. A run that diverged (WORKDIR/diverged.json) is reported,
never retried.

'--budgets paper' means each arch's three budgets (MIT Sparse Update schemes 1, 3, 5); strategy
'su' gets the matching --su-scheme and needs a paper budget. Any other --flag is passed to
experiments/train.py unchanged (a trady_jax.config.Config field, e.g. --epochs 5 --offline true).
These flags are recorded in RESULTS/grid.json, and a later grid into the same folder must use the
same ones, so one table never mixes protocols.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # let `python experiments/grid.py` import the package from a checkout
  sys.path.insert(0, str(ROOT))

from trady_jax import config as config_lib  # noqa: E402
from trady_jax import results as results_lib  # noqa: E402
from trady_jax import workdir as workdir_lib  # noqa: E402
from trady_jax.paper import BUDGETS as PAPER_BUDGETS  # noqa: E402
from trady_jax.strategies import REGISTRY  # noqa: E402

TRAIN = ROOT / "experiments" / "train.py"
# SU scheme of each paper budget (the papers' budgets are the W+A memory of schemes 1, 3, 5).
SU_SCHEMES = {arch: dict(zip(budgets, (1, 3, 5))) for arch, budgets in PAPER_BUDGETS.items()}
# Config fields the grid sets per run; passing them through is an error.
CONTROLLED = ("arch", "dataset", "strategy", "budget", "seed", "su_scheme")
GRID_FILE = "grid.json"  # RESULTS/grid.json: the train.py flags every run of the folder used
LOCK = workdir_lib.LOCK  # WORKDIR/.lock: held by the train.py process of the run


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

  def argv(self, python: str, extra: list[str], script: str | None = None) -> list[str]:
    """The train.py command line."""
    if script is None:
      script = _rel(TRAIN)
    a = [python, script, "--arch", self.arch, "--dataset", self.dataset,
         "--strategy", self.strategy]
    if self.budget is not None:
      a += ["--budget", str(self.budget)]
    if self.su_scheme is not None:
      a += ["--su-scheme", str(self.su_scheme)]
    return a + ["--seed", str(self.seed), "--workdir", self.workdir, *extra]

  def command(self, python: str, extra: list[str], *, guard: bool = True,
              script: str | None = None) -> str:
    """One shell line; with ``guard`` it does nothing when the run has finished."""
    cmd = shlex.join(self.argv(python, extra, script))
    if guard:
      cmd = f"test -f {shlex.quote(str(Path(self.workdir) / 'final.json'))} || {cmd}"
    return cmd


def _rel(path: Path) -> str:
  """``path`` relative to the working directory when below it, else absolute."""
  try:
    return str(path.resolve().relative_to(Path.cwd().resolve()))
  except ValueError:
    return str(path.resolve())


def split_list(text: str) -> list[str]:
  """'a, b,c' -> ['a', 'b', 'c'] (empty items dropped)."""
  return [t.strip() for t in text.split(",") if t.strip()]


def safe_name(name: str) -> str:
  """A dataset/arch name usable as one folder name (as train.py does for its default workdir)."""
  return name.replace(":", "_").replace("/", "_").replace(os.sep, "_")


def workdir_for(results: str, arch: str, dataset: str, strategy: str, budget: int | None,
                seed: int) -> str:
  """RESULTS/<arch>/<dataset>/<strategy>/b<budget>/s<seed> ('bfull' for the baseline)."""
  b = results_lib.FULL if budget is None else str(budget)
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
      if arch not in PAPER_BUDGETS:
        raise ValueError(f"no paper budgets for arch {arch!r}; known: {sorted(PAPER_BUDGETS)} "
                         "(give --budgets as integers)")
      out += PAPER_BUDGETS[arch]
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
  only_baseline = all(s == results_lib.BASELINE for s in strategies)
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
        b = None if s == results_lib.BASELINE else budget
        key = (seed, arch, dataset, s, b)
        if key in seen:  # the baseline appears once, whatever the budgets
          continue
        seen.add(key)
        runs.append(GridRun(arch, dataset, s, b, seed,
                            workdir_for(results, arch, dataset, s, b, seed),
                            SU_SCHEMES[arch][b] if s == "su" else None))
  return runs


def check_passthrough(extra: list[str]) -> list[str]:
  """Validate the flags passed to train.py: Config fields only, not those the grid sets."""
  fields = {f.name.replace("_", "-") for f in dataclasses.fields(config_lib.Config)}
  controlled = {f.replace("_", "-") for f in CONTROLLED} | {"workdir"}
  for tok in extra:
    if not tok.startswith("--"):
      if tok.startswith("-") and not _is_number(tok):
        raise ValueError(f"unknown option {tok!r}")
      continue
    name = tok[2:].split("=", 1)[0]
    if name in controlled:
      raise ValueError(f"--{name} is set by the grid per run; use --archs/--datasets/"
                       "--strategies/--budgets/--seeds instead")
    if name not in fields:
      raise ValueError(f"--{name} is neither a grid option nor a train.py flag "
                       f"(train.py flags: {', '.join(sorted(fields - controlled))})")
  if extra and not extra[0].startswith("--"):
    raise ValueError(f"unexpected argument {extra[0]!r}")
  return extra


def _is_number(tok: str) -> bool:
  try:
    float(tok)
    return True
  except ValueError:
    return False


def normalized_flags(extra: list[str]) -> dict[str, str]:
  """``{'--name': 'value'}`` of passthrough flags, '--a=b' and '--a b' alike."""
  out, i = {}, 0
  while i < len(extra):
    tok = extra[i]
    if "=" in tok:
      k, v = tok.split("=", 1)
      out[k] = v
    elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
      out[tok], i = extra[i + 1], i + 1
    else:
      out[tok] = ""
    i += 1
  return out


def record_protocol(results: str, extra: list[str], *, allow_mixed: bool = False) -> None:
  """Write RESULTS/grid.json, or check that it names the same train.py flags as ``extra``."""
  path = Path(results) / GRID_FILE
  flags = normalized_flags(extra)
  if path.exists():
    try:
      old = json.loads(path.read_text())["train_flags"]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise SystemExit(f"{path} is unreadable ({e}); fix or remove it") from None
    if old != flags and not allow_mixed:
      raise SystemExit(f"{results} holds runs made with train.py flags {old}, this grid passes "
                       f"{flags}: use another --results folder (or --allow-mixed)")
    if old == flags:
      return
  results_lib.write_json_atomic(path, {"train_flags": flags})


# ------------------------------------------------------------------------------------------------
# Local runs: locks and the sequential runner


def diverged(workdir: str) -> bool:
  """True when the run stopped at a non-finite loss or parameter (WORKDIR/diverged.json)."""
  return (Path(workdir) / results_lib.DIVERGED).exists()


def parse_shard(text: str | None) -> tuple[int, int]:
  """'K/N' -> (K, N) with 0 <= K < N; None -> (0, 1)."""
  if not text:
    return 0, 1
  try:
    k, n = (int(x) for x in text.split("/"))
  except ValueError:
    raise ValueError(f"--shard must look like K/N (e.g. 0/4), not {text!r}") from None
  if not 0 <= k < n:
    raise ValueError(f"--shard {text}: need 0 <= K < N")
  return k, n


def pending(runs: list[GridRun]) -> list[GridRun]:
  """The runs without a complete final.json."""
  return [r for r in runs if not results_lib.is_finished(r.workdir)]


def run_all(runs: list[GridRun], python: str, extra: list[str], *, shard: tuple[int, int] = (0, 1),
            stop_on_error: bool = False, verbose: bool = False) -> dict:
  """Run the grid here, sequentially; returns counts of done/skipped/busy/failed runs.

  A run whose folder a live process has locked is busy (skipped); one that diverged counts as
  failed without being retried. The lock itself is taken by each train.py process.
  """
  k, n = shard
  counts = {"done": 0, "finished_before": 0, "busy": 0, "failed": 0}
  mine = [r for i, r in enumerate(runs) if i % n == k]
  for i, r in enumerate(mine, 1):
    tag = f"[{i}/{len(mine)}] {r.arch} {r.dataset} {r.strategy} b{r.budget or 'full'} s{r.seed}"
    if results_lib.is_finished(r.workdir):
      counts["finished_before"] += 1
      continue
    owner = workdir_lib.holder(r.workdir)
    if owner is not None:
      print(f"{tag}: running elsewhere ({owner}), skipped", flush=True)
      counts["busy"] += 1
      continue
    if diverged(r.workdir):
      print(f"{tag}: diverged before, see {Path(r.workdir) / results_lib.DIVERGED}", flush=True)
      counts["failed"] += 1
      continue
    argv = r.argv(python, extra)
    print(f"{tag}: {shlex.join(argv)}", flush=True)
    t0 = time.time()
    Path(r.workdir).mkdir(parents=True, exist_ok=True)
    if verbose:
      rc = subprocess.run(argv).returncode
    else:
      with open(Path(r.workdir) / "train.log", "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n")
        log.flush()
        rc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc == workdir_lib.WorkdirBusy.exit_code:  # another process took the run meanwhile
      print(f"{tag}: running elsewhere ({workdir_lib.owner(r.workdir)}), skipped", flush=True)
      counts["busy"] += 1
      continue
    ok = rc == 0 and results_lib.is_finished(r.workdir)
    print(f"{tag}: {'done' if ok else f'FAILED (exit {rc})'} in {time.time() - t0:.0f} s"
          + ("" if ok or verbose else f", see {Path(r.workdir) / 'train.log'}"), flush=True)
    counts["done" if ok else "failed"] += 1
    if not ok and stop_on_error:
      break
  return counts


# ------------------------------------------------------------------------------------------------
# SLURM


def slurm_script(commands_file: str, n: int, *, job_name: str = "trady-grid",
                 log_dir: str = "slurm-logs", max_parallel: int = 0,
                 sbatch: list[str] = (), workdir: str = "") -> str:
  """An sbatch array script whose task i runs line i+1 of ``commands_file``."""
  if n < 1:
    raise ValueError("no commands for the array")
  array = f"0-{n - 1}" + (f"%{max_parallel}" if max_parallel else "")
  lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --array={array}",
           f"#SBATCH --output={log_dir}/%x-%A_%a.out"]
  lines += [f"#SBATCH {opt}" for opt in sbatch]
  lines += ["set -euo pipefail",
            f"cd {shlex.quote(workdir or os.getcwd())}",
            f'line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(commands_file)})',
            'if [ -z "$line" ]; then echo "no command for task $SLURM_ARRAY_TASK_ID" >&2; exit 1; '
            "fi",
            'echo "task $SLURM_ARRAY_TASK_ID on $(hostname): $line"',
            'exec bash -c "$line"', ""]
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter,
                               allow_abbrev=False)  # --seed must not abbreviate --seeds
  ap.add_argument("--archs", default="mbv2-w0.35", help="comma list of archs")
  ap.add_argument("--datasets", default="cifar10", help="comma list of datasets")
  ap.add_argument("--strategies", default="trady,su,baseline", help="comma list of strategies")
  ap.add_argument("--budgets", default="paper",
                  help="'paper' (each arch's three) or a comma list of units")
  ap.add_argument("--seeds", default="0,42,100", help="comma list of seeds")
  ap.add_argument("--results", default="results", help="results folder shared by all runs")
  mode = ap.add_mutually_exclusive_group(required=True)
  mode.add_argument("--emit-commands", action="store_true", help="print one command per run")
  mode.add_argument("--emit-slurm", metavar="FILE", help="write an sbatch array script to FILE")
  mode.add_argument("--run", action="store_true", help="run here, sequentially")
  mode.add_argument("--status", action="store_true", help="count finished/running/pending runs")
  ap.add_argument("--include-finished", action="store_true",
                  help="emit finished runs too (their guarded commands do nothing)")
  ap.add_argument("--no-guard", action="store_true",
                  help="emit bare train.py commands, without `test -f final.json ||`")
  ap.add_argument("--python", default=sys.executable, help="interpreter in the commands")
  ap.add_argument("--shard", help="--run only the runs i with i %% N == K (K/N)")
  ap.add_argument("--stop-on-error", action="store_true", help="--run: stop at the first failure")
  ap.add_argument("--verbose", action="store_true", help="--run: train output to the console")
  ap.add_argument("--allow-mixed", action="store_true",
                  help="allow train.py flags that differ from RESULTS/grid.json")
  ap.add_argument("--job-name", default="trady-grid", help="SLURM job name")
  ap.add_argument("--max-parallel", type=int, default=0, help="SLURM array throttle (%%N)")
  ap.add_argument("--sbatch", default="",
                  help="extra sbatch options, e.g. '--gres=gpu:1 --time=1-00:00:00'")
  return ap


def main(argv=None) -> int:
  ap = build_parser()
  args, extra = ap.parse_known_args(argv)
  try:
    extra = check_passthrough(extra)
    seeds = [int(s) for s in split_list(args.seeds)]
    runs = expand(split_list(args.archs), split_list(args.datasets),
                  [s.lower() for s in split_list(args.strategies)], args.budgets, seeds,
                  args.results)
    shard = parse_shard(args.shard)
  except ValueError as e:
    ap.error(str(e))

  if args.status:
    done = [r for r in runs if results_lib.is_finished(r.workdir)]
    busy = {r: workdir_lib.holder(r.workdir) for r in runs if r not in done}
    busy = {r: o for r, o in busy.items() if o is not None}
    bad = [r for r in runs if r not in done and r not in busy and diverged(r.workdir)]
    print(f"{len(runs)} runs: {len(done)} finished, {len(busy)} running (locked), "
          f"{len(bad)} diverged, {len(runs) - len(done) - len(busy) - len(bad)} pending")
    for r, o in busy.items():
      print(f"  running: {r.workdir} ({o})")
    for r in bad:
      print(f"  diverged: {r.workdir} (see {results_lib.DIVERGED})")
    for r in runs:
      if r not in busy and workdir_lib.stale(r.workdir):
        print(f"  stale lock (no live process holds it): {Path(r.workdir) / LOCK}")
    return 0

  record_protocol(args.results, extra, allow_mixed=args.allow_mixed)
  if args.run:
    counts = run_all(runs, args.python, extra, shard=shard, stop_on_error=args.stop_on_error,
                     verbose=args.verbose)
    print(", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()))
    return 1 if counts["failed"] else 0

  todo = runs if args.include_finished else pending(runs)
  lines = [r.command(args.python, extra, guard=not args.no_guard) for r in todo]
  if args.emit_commands:
    for line in lines:
      print(line)
    print(f"# {len(lines)} of {len(runs)} runs", file=sys.stderr)
    return 0
  script = Path(args.emit_slurm)
  commands = script.with_suffix(".commands")
  if not lines:
    print(f"all {len(runs)} runs are finished; nothing to write")
    return 0
  log_dir = Path(args.results) / "slurm-logs"
  log_dir.mkdir(parents=True, exist_ok=True)
  results_lib.write_text_atomic(commands, "\n".join(lines) + "\n")
  results_lib.write_text_atomic(script, slurm_script(
      str(commands.resolve()), len(lines), job_name=args.job_name, log_dir=str(log_dir.resolve()),
      max_parallel=args.max_parallel, sbatch=shlex.split(args.sbatch)))
  print(f"wrote {script} ({len(lines)} array tasks over {commands}); submit with: sbatch {script}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
