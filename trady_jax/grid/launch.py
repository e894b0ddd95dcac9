"""Launching a grid's runs: here one after another, or as a SLURM array; its status; its protocol.

A run is finished when its ``final.json`` is a complete record (``report.records.is_finished``),
so finished runs are never repeated and an interrupted one resumes from its checkpoint. Every
training process holds its run folder's lock (``trady_jax.workdir``): runs locked by a live
process are skipped, never trained twice; a run that diverged is reported, never retried.
RESULTS/grid.json records the train.py flags of the grid, so one table never mixes protocols.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Sequence

from trady_jax import atomic, workdir
from trady_jax.grid.plan import GridRun
from trady_jax.report.records import DIVERGED, diverged, is_finished

GRID_FILE = "grid.json"  # RESULTS/grid.json: the train.py flags every run of the folder used


def normalized_flags(extra: Sequence[str]) -> dict[str, str]:
  """``{'--name': 'value'}`` of passthrough flags, '--a=b' and '--a b' alike.

  >>> normalized_flags(["--epochs", "5", "--offline=true", "--progress"])
  {'--epochs': '5', '--offline': 'true', '--progress': ''}
  """
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


def record_protocol(results: str, extra: Sequence[str], *, allow_mixed: bool = False) -> None:
  """Write RESULTS/grid.json, or check that it names the same train.py flags as ``extra``;
  ``ValueError`` when it does not (unless ``allow_mixed``) or cannot be read."""
  path = Path(results) / GRID_FILE
  flags = normalized_flags(extra)
  if path.exists():
    try:
      old = json.loads(path.read_text())["train_flags"]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{path} is unreadable ({e}); fix or remove it") from None
    if old != flags and not allow_mixed:
      raise ValueError(f"{results} holds runs made with train.py flags {old}, this grid passes "
                       f"{flags}: use another --results folder (or --allow-mixed)")
    if old == flags:
      return
  atomic.write_json_atomic(path, {"train_flags": flags})


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


def status(runs: Sequence[GridRun]) -> str:
  """Counts of finished, running (locked), diverged and pending runs, then the running and
  diverged runs and the stale locks (lock files no live process holds), one line each."""
  done = [r for r in runs if is_finished(r.workdir)]
  busy = {r: workdir.holder(r.workdir) for r in runs if r not in done}
  busy = {r: o for r, o in busy.items() if o is not None}
  bad = [r for r in runs if r not in done and r not in busy and diverged(r.workdir)]
  lines = [f"{len(runs)} runs: {len(done)} finished, {len(busy)} running (locked), "
           f"{len(bad)} diverged, {len(runs) - len(done) - len(busy) - len(bad)} pending"]
  lines += [f"  running: {r.workdir} ({o})" for r, o in busy.items()]
  lines += [f"  diverged: {r.workdir} (see {DIVERGED})" for r in bad]
  lines += [f"  stale lock (no live process holds it): {Path(r.workdir) / workdir.LOCK}"
            for r in runs if r not in busy and workdir.stale(r.workdir)]
  return "\n".join(lines)


def run_all(runs: Sequence[GridRun], train: Sequence[str], extra: Sequence[str], *,
            shard: tuple[int, int] = (0, 1), stop_on_error: bool = False,
            verbose: bool = False) -> dict:
  """Run the grid here, sequentially; returns counts of done/skipped/busy/failed runs.

  ``train`` starts one run (``GridRun.argv``). Output goes to WORKDIR/train.log unless
  ``verbose``. A run whose folder a live process has locked is busy (skipped); one that diverged
  counts as failed without being retried. The lock itself is taken by each training process.
  """
  k, n = shard
  counts = {"done": 0, "finished_before": 0, "busy": 0, "failed": 0}
  mine = [r for i, r in enumerate(runs) if i % n == k]
  for i, r in enumerate(mine, 1):
    tag = f"[{i}/{len(mine)}] {r.arch} {r.dataset} {r.strategy} b{r.budget or 'full'} s{r.seed}"
    if is_finished(r.workdir):
      counts["finished_before"] += 1
      continue
    owner = workdir.holder(r.workdir)
    if owner is not None:
      print(f"{tag}: running elsewhere ({owner}), skipped", flush=True)
      counts["busy"] += 1
      continue
    if diverged(r.workdir):
      print(f"{tag}: diverged before, see {Path(r.workdir) / DIVERGED}", flush=True)
      counts["failed"] += 1
      continue
    argv = r.argv(train, extra)
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
    if rc == workdir.WorkdirBusy.exit_code:  # another process took the run meanwhile
      print(f"{tag}: running elsewhere ({workdir.owner(r.workdir)}), skipped", flush=True)
      counts["busy"] += 1
      continue
    ok = rc == 0 and is_finished(r.workdir)
    print(f"{tag}: {'done' if ok else f'FAILED (exit {rc})'} in {time.time() - t0:.0f} s"
          + ("" if ok or verbose else f", see {Path(r.workdir) / 'train.log'}"), flush=True)
    counts["done" if ok else "failed"] += 1
    if not ok and stop_on_error:
      break
  return counts


def slurm_script(commands_file: str, n: int, *, job_name: str = "trady-grid",
                 log_dir: str = "slurm-logs", max_parallel: int = 0,
                 sbatch: Sequence[str] = (), cwd: str = "") -> str:
  """An sbatch array script whose task i runs line i+1 of ``commands_file`` in ``cwd`` (default:
  the current folder)."""
  if n < 1:
    raise ValueError("no commands for the array")
  array = f"0-{n - 1}" + (f"%{max_parallel}" if max_parallel else "")
  lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --array={array}",
           f"#SBATCH --output={log_dir}/%x-%A_%a.out"]
  lines += [f"#SBATCH {opt}" for opt in sbatch]
  lines += ["set -euo pipefail",
            f"cd {shlex.quote(cwd or os.getcwd())}",
            f'line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(commands_file)})',
            'if [ -z "$line" ]; then echo "no command for task $SLURM_ARRAY_TASK_ID" >&2; exit 1; '
            "fi",
            'echo "task $SLURM_ARRAY_TASK_ID on $(hostname): $line"',
            'exec bash -c "$line"', ""]
  return "\n".join(lines)
