"""Atomic file writes: readers see a file's old content or the whole new one, never a part.

Every file the library and its scripts share between processes (a run's ``final.json`` and
``diverged.json``, the trimmed ``metrics.jsonl``, a grid's ``grid.json``, report tables and plots)
is written this way, so a crash or a concurrent reader never meets a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


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
