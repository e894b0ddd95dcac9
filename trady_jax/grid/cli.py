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
import shlex
import sys
from pathlib import Path
from typing import Sequence

from trady_jax import atomic, config, paper
from trady_jax.grid import launch, plan
from trady_jax.report.records import is_finished

# Config fields the grid sets per run (and train.py's --workdir); passing them through is an error.
CONTROLLED = ("arch", "dataset", "strategy", "budget", "seed", "su_scheme", "workdir")


def check_passthrough(extra: list[str]) -> list[str]:
  """Validate the flags passed to train.py: ``Config`` fields with values train.py accepts, not
  those the grid sets per run."""
  given = {tok[2:].split("=", 1)[0] for tok in extra if tok.startswith("--")}
  set_by_grid = sorted(given & {f.replace("_", "-") for f in CONTROLLED})
  if set_by_grid:
    raise ValueError(f"--{set_by_grid[0]} is set by the grid per run; use --archs/--datasets/"
                     "--strategies/--budgets/--seeds instead")
  train_flags = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
  config.add_arguments(train_flags)
  try:
    _, unknown = train_flags.parse_known_args(extra)
  except argparse.ArgumentError as e:
    raise ValueError(str(e)) from None
  if unknown:
    raise ValueError(f"{unknown[0]!r} is neither a grid option nor a train.py flag "
                     "(see experiments/train.py --help)")
  return extra


def _rel(path: Path) -> str:
  """``path`` relative to the working directory when below it, else absolute."""
  try:
    return str(path.resolve().relative_to(Path.cwd().resolve()))
  except ValueError:
    return str(path.resolve())


def build_parser() -> argparse.ArgumentParser:
  """The grid's own options; every other ``--flag`` is passed to train.py."""
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter,
                               allow_abbrev=False)  # --seed must not abbreviate --seeds
  ap.add_argument("--archs", default="mbv2-w0.35", help="comma list of archs")
  ap.add_argument("--datasets", default="cifar10", help="comma list of datasets")
  ap.add_argument("--strategies", default="trady,su,baseline", help="comma list of strategies")
  ap.add_argument("--budgets", default="paper",
                  help="'paper' (each arch's three) or a comma list of units")
  ap.add_argument("--seeds", default=",".join(map(str, paper.SEEDS)), help="comma list of seeds")
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


def main(argv: Sequence[str] | None = None, *,
         train_script: str | Path = "experiments/train.py") -> int:
  """The command line above; ``train_script`` is the training script the runs call."""
  ap = build_parser()
  args, extra = ap.parse_known_args(argv)
  try:
    extra = check_passthrough(extra)
    seeds = [int(s) for s in plan.split_list(args.seeds)]
    runs = plan.expand(plan.split_list(args.archs), plan.split_list(args.datasets),
                       [s.lower() for s in plan.split_list(args.strategies)], args.budgets, seeds,
                       args.results)
    shard = launch.parse_shard(args.shard)
  except ValueError as e:
    ap.error(str(e))
  if args.status:
    print(launch.status(runs))
    return 0
  try:
    launch.record_protocol(args.results, extra, allow_mixed=args.allow_mixed)
  except ValueError as e:
    raise SystemExit(str(e)) from None
  train = [args.python, _rel(Path(train_script))]
  if args.run:
    counts = launch.run_all(runs, train, extra, shard=shard, stop_on_error=args.stop_on_error,
                            verbose=args.verbose)
    print(", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()))
    return 1 if counts["failed"] else 0
  todo = runs if args.include_finished else [r for r in runs if not is_finished(r.workdir)]
  lines = [r.command(train, extra, guard=not args.no_guard) for r in todo]
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
  atomic.write_text_atomic(commands, "\n".join(lines) + "\n")
  atomic.write_text_atomic(script, launch.slurm_script(
      str(commands.resolve()), len(lines), job_name=args.job_name, log_dir=str(log_dir.resolve()),
      max_parallel=args.max_parallel, sbatch=shlex.split(args.sbatch)))
  print(f"wrote {script} ({len(lines)} array tasks over {commands}); submit with: sbatch {script}")
  return 0
