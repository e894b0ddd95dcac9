"""Host memory on CPU: where a compiled step's scratch buffer comes from, and what that costs.

XLA's CPU runtime allocates a compiled program's temporary buffer (one block of
``memory_analysis().temp_size_in_bytes``) with ``malloc`` when the program is called and frees it
when the call returns. glibc serves a block above its mmap threshold (at most 32 MiB) from a fresh
``mmap`` and hands it back with ``munmap`` when it is freed. So every call gets new pages, and the
kernel zero-fills each one at its first touch.

For full fine-tuning of mbv2-w0.35 (batch 32, 128x128, temp 229 MiB) that is 58,659 minor page
faults and 110-150 ms of kernel time per step (``resource.getrusage``): up to half the step. A
selective step's temp is small (9.5 MiB) and pays little. PyTorch's CPU tensors go through the same
``malloc`` and pay the same way for their large blocks.

glibc's tunables change this, but only from process start: the dynamic loader reads
``GLIBC_TUNABLES``, and ``mallopt`` at run time does not reach the arenas XLA's threads already
use. ``TUNABLES``:

* ``glibc.malloc.hugetlb=1``: malloc asks for transparent huge pages (``madvise``) on its
  mappings, so a step's fresh buffer faults in 2 MiB pages instead of 4 KiB ones. That is about
  500 faults instead of 58,659, and fewer TLB misses while the step runs. The kernel still
  zero-fills the buffer at every call.

``reexec_with_tunables()`` restarts the running script with them. The experiment scripts call it
first; ``TRADY_JAX_HOST_MEMORY=default`` keeps glibc's defaults. In a notebook, set the variable
before the kernel starts. ``minor_faults()`` counts page faults, and ``bench_step.py`` reports them
per step.
"""

from __future__ import annotations

import builtins
import os
import platform
import resource
import sys
from typing import Mapping, MutableMapping

ENV = "TRADY_JAX_HOST_MEMORY"  # "tuned" (default) or "default"
MODES = ("tuned", "default")
TUNABLES = {"glibc.malloc.hugetlb": "1"}


def parse(tunables: str) -> dict[str, str]:
  """``'a=1:b=2'`` -> ``{'a': '1', 'b': '2'}`` (the ``GLIBC_TUNABLES`` syntax).

  >>> parse("glibc.malloc.hugetlb=1:glibc.malloc.arena_max=2")
  {'glibc.malloc.hugetlb': '1', 'glibc.malloc.arena_max': '2'}
  """
  out = {}
  for item in filter(None, tunables.split(":")):
    key, _, value = item.partition("=")
    out[key] = value
  return out


def merged(existing: str, tunables: Mapping[str, str] = TUNABLES) -> str:
  """``existing`` with ``tunables`` added: a setting already there (the user's) wins.

  >>> merged("glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2")
  'glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2'
  >>> merged("")
  'glibc.malloc.hugetlb=1'
  """
  own = parse(existing)
  out = {**own, **{k: v for k, v in tunables.items() if k not in own}}
  return ":".join(f"{k}={v}" for k, v in out.items())


def mode(environ: Mapping[str, str] = os.environ) -> str:
  """``$TRADY_JAX_HOST_MEMORY``, checked: 'tuned' (unset) or 'default'."""
  value = environ.get(ENV, "tuned") or "tuned"
  if value not in MODES:
    raise ValueError(f"{ENV}={value!r}: expected one of {MODES}")
  return value


def supported() -> bool:
  """True on Linux with glibc, the only C library whose tunables these are."""
  return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def active(environ: Mapping[str, str] = os.environ) -> bool:
  """True when this process started with every key of ``TUNABLES`` set (to any value: a user's
  own setting counts, and is not overridden)."""
  return set(TUNABLES) <= set(parse(environ.get("GLIBC_TUNABLES", "")))


def describe(environ: Mapping[str, str] = os.environ) -> str:
  """One line for reports: which host-memory settings this process runs under."""
  if not supported():
    return "C library defaults (not glibc)"
  if active(environ):
    return f"GLIBC_TUNABLES={environ['GLIBC_TUNABLES']}"
  return f"glibc defaults ({ENV}={mode(environ)})"


def reexec_with_tunables(environ: MutableMapping[str, str] | None = None) -> None:
  """Restart the running script with ``TUNABLES`` (returns only if no restart is needed).

  Does nothing unless on glibc, when they are already set, under ``TRADY_JAX_HOST_MEMORY=default``,
  or in an interactive session. Call it first thing in a script's ``__main__`` block: the restart
  runs the same command line (``sys.orig_argv``) again from the start.
  """
  environ = os.environ if environ is None else environ
  if (mode(environ) == "default" or not supported() or active(environ)
      or hasattr(sys, "ps1") or hasattr(builtins, "__IPYTHON__")):
    return
  env = dict(environ, GLIBC_TUNABLES=merged(environ.get("GLIBC_TUNABLES", "")))
  argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], env)


def minor_faults() -> int:
  """Minor page faults of this process so far (each a fresh page the kernel mapped and zeroed)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
