"""Where the project's files live: the cache folder and the shared folder (weights, offline data).

* cache: ``$TRADY_JAX_CACHE``, else ``~/.cache/trady_jax``. Downloaded weights go there, and the
  offline CIFAR-10 copy is unpacked there (``CIFAR10_CACHE``).
* shared: ``$TRADY_JAX_SHARED`` when set (only it), else a ``shared/`` folder beside the current
  directory or beside the source checkout (``../shared``). It holds the shipped pretrained weights
  (``weights/``, method-spec 8) and the offline CIFAR-10 archive (``data/``, method-spec 9).
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "TRADY_JAX_CACHE"
SHARED_ENV = "TRADY_JAX_SHARED"
CHECKOUT = Path(__file__).resolve().parents[1]  # the folder holding the trady_jax package
CIFAR10_CACHE = "cifar10-jpeg"  # subfolder of the cache holding the unpacked offline CIFAR-10


def cache_dir() -> Path:
  """``$TRADY_JAX_CACHE``, else ``~/.cache/trady_jax`` (not created here)."""
  return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "trady_jax").expanduser()


def shared_dirs() -> list[Path]:
  """Candidate shared folders in search order: ``[$TRADY_JAX_SHARED]`` when set, else
  ``shared/`` beside the current directory and beside the checkout (existing or not, no
  duplicates)."""
  env = os.environ.get(SHARED_ENV)
  if env:
    return [Path(env).expanduser().resolve()]
  candidates = (Path.cwd().parent / "shared", CHECKOUT.parent / "shared")
  return list(dict.fromkeys(d.resolve() for d in candidates))


def shared_subdirs(name: str) -> list[Path]:
  """``<shared>/<name>`` for every candidate shared folder (``'weights'``, ``'data'``).

  >>> all(d.name == "weights" for d in shared_subdirs("weights"))
  True
  """
  return [d / name for d in shared_dirs()]
