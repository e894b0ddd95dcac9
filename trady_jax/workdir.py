"""One run, one folder, one process: the exclusive lock on a run folder, and what the folder holds.

``WORKDIR/.lock`` is held with ``fcntl.flock`` for as long as a process trains the run. The kernel
drops the lock when that process ends, however it ends, so a lock is never left behind by a dead
process: a lock file nobody holds (empty, or naming a dead process) is stale and simply taken.
The file's content, ``{"host", "pid", "time"}``, only says who holds it. Within one process the
lock is re-entrant (the training script and its ``Run`` both take it).

What a run folder holds besides: ``metrics.jsonl`` (one line per finished epoch, cut back to the
checkpoint on resume) and ``final.json``; a fresh start that would overwrite them is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from trady_jax import atomic

LOCK = ".lock"  # WORKDIR/.lock
_HELD: dict[str, list] = {}  # resolved lock path -> [open file, depth] held by this process


class WorkdirError(RuntimeError):
  """The run folder cannot be used as asked (it holds something a new run would throw away)."""
  exit_code = 1


class WorkdirBusy(WorkdirError):
  """Another live process is training in this run folder."""
  exit_code = 75  # EX_TEMPFAIL: try again later


def _path(workdir: str | os.PathLike) -> Path:
  return Path(workdir).absolute() / LOCK


def _try_flock(f, mode: int) -> bool:
  try:
    fcntl.flock(f.fileno(), mode | fcntl.LOCK_NB)
    return True
  except BlockingIOError:
    return False


def owner(workdir: str | os.PathLike) -> str:
  """'host:pid' written in the lock file ('unknown' when unreadable or empty)."""
  try:
    o = json.loads(_path(workdir).read_text())
    return f"{o['host']}:{o['pid']}"
  except (OSError, ValueError, TypeError, KeyError):
    return "unknown"


def holder(workdir: str | os.PathLike) -> str | None:
  """'host:pid' of the live process holding the folder's lock, or None when it is free."""
  path = _path(workdir)
  if str(path) in _HELD:
    return f"{socket.gethostname()}:{os.getpid()}"
  try:
    f = open(path, "rb")
  except OSError:  # missing, or not a file: nobody can hold it
    return None
  with f:
    if _try_flock(f, fcntl.LOCK_SH):
      return None
  return owner(workdir)


def stale(workdir: str | os.PathLike) -> bool:
  """True when a lock file exists but no live process holds it (left by a killed process)."""
  return _path(workdir).exists() and holder(workdir) is None


def acquire(workdir: str | os.PathLike) -> Path:
  """Take the folder's lock for this process (re-entrant); ``WorkdirBusy`` when another has it."""
  path = _path(workdir)
  key = str(path)
  if key in _HELD:
    _HELD[key][1] += 1
    return path
  while True:
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      f = open(path, "a+")
    except OSError as e:
      raise WorkdirError(f"cannot use {path.parent} as a run folder ({e})") from None
    if not _try_flock(f, fcntl.LOCK_EX):
      f.close()
      raise WorkdirBusy(f"{path.parent} is in use by process {owner(workdir)} (lock {path}); "
                        "wait for it to finish, stop it, or use another workdir")
    try:  # the file may have been removed by its last holder between our open and flock
      same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    f.close()
  f.truncate(0)
  f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}))
  f.flush()
  _HELD[key] = [f, 1]
  return path


def release(workdir: str | os.PathLike) -> None:
  """Give back one ``acquire``; the last one removes the lock file and unlocks."""
  key = str(_path(workdir))
  held = _HELD.get(key)
  if held is None:
    return
  held[1] -= 1
  if held[1] == 0:
    del _HELD[key]
    Path(key).unlink(missing_ok=True)  # while still locked: nobody can lock this inode after us
    held[0].close()


@contextlib.contextmanager
def locked(workdir: str | os.PathLike):
  """``with locked(path):`` holds the folder's lock for the block."""
  path = acquire(workdir)
  try:
    yield path
  finally:
    release(workdir)


# --- what a run folder holds ----------------------------------------------------------------

def metric_lines(path: Path) -> list[tuple[str, dict]]:
  """``(line, record)`` of every readable line of a metrics file (a damaged line is dropped)."""
  out = []
  for line in path.read_text(errors="replace").splitlines() if path.exists() else ():
    try:
      rec = json.loads(line)
    except ValueError:
      continue
    if isinstance(rec, dict) and isinstance(rec.get("epoch"), int):
      out.append((line, rec))
  return out


def truncate_metrics(path: Path, epochs: int) -> None:
  """Keep the metric lines of the first ``epochs`` epochs (those the checkpoint covers)."""
  if path.exists():
    kept = [l for l, rec in metric_lines(path) if rec["epoch"] <= epochs]
    atomic.write_text_atomic(path, "".join(l + "\n" for l in kept))


def check_nothing_to_lose(wd: Path) -> None:
  """``WorkdirError`` when a fresh start would throw away the results of an earlier run."""
  kept = [f for f in ("final.json", "metrics.jsonl") if (wd / f).exists()]
  if kept and (kept != ["metrics.jsonl"] or metric_lines(wd / "metrics.jsonl")):
    raise WorkdirError(
        f"{wd} holds {' and '.join(kept)} of an earlier run but no checkpoint to resume from "
        f"({wd / 'checkpoints'} is missing, empty or renamed): put the checkpoints back to "
        "resume, move those files away to start over, or use another workdir")
