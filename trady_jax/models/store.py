"""Where a named network's weight files are: search, download, cache (nothing downloads unasked).

Weights are looked up, in order, in ``weights_dir`` (if given, only there), else in the
directories of ``$TRADY_JAX_WEIGHTS`` (``os.pathsep``-separated), the shipped ``weights/`` of the
shared folder (``paths.shared_dirs``: ``$TRADY_JAX_SHARED``, else ``../shared`` beside the
current directory and beside the checkout), and last the cache (``paths.cache_dir``:
``$TRADY_JAX_CACHE`` or ``~/.cache/trady_jax``). The first directory holding files of the
requested ``source`` wins (with ``'auto'``, a directory's fp32 zoo files before its int8 ones), so
downloaded or cached files never replace the shipped ones, and only a directory the user names
comes before them. For an MCU net a directory may hold the int8 files ``NAME.json + NAME.npz``
(``formats.int8``) or the fp32 model-zoo files ``<zoo id>.json + <zoo id>.pth``
(``formats.zoo``); ``download_weights(name)`` fetches the public fp32 files into the cache
(method-spec 8).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import NamedTuple

from trady_jax import paths
from trady_jax.models.registry import MCU_NETS, check_name

ZOO_URL = "https://hanlab18.mit.edu/projects/tinyml/mcunet/release/"
TORCHVISION_URLS = {"resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
                    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
                    "mobilenetv2": "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"}
SOURCES = ("auto", "int8", "zoo")


class WeightFiles(NamedTuple):
  """Where a model's weights are: ``kind`` is ``'int8' | 'zoo' | 'state_dict'``."""
  kind: str
  files: tuple[Path, ...]


def shipped_dirs() -> list[Path]:
  """The project's own weight copies: ``weights/`` in each shared folder."""
  return paths.shared_subdirs("weights")


def search_dirs(weights_dir: str | Path | None = None) -> list[Path]:
  """Directories searched for weights, in order (see the module docstring)."""
  if weights_dir is not None:
    return [Path(weights_dir)]
  env = [Path(p) for p in os.environ.get("TRADY_JAX_WEIGHTS", "").split(os.pathsep) if p]
  return list(dict.fromkeys(d.resolve() for d in env + shipped_dirs() + [paths.cache_dir()]))


def find_weights(name: str, weights_dir: str | Path | None = None,
                 source: str = "auto") -> WeightFiles | None:
  """The weight files of ``name``, or None. ``source``: ``'int8'``, ``'zoo'`` (fp32) or ``'auto'``
  (the fp32 zoo files the papers fine-tune, else int8).

  >>> find_weights("mbv2-w0.35", weights_dir="/nonexistent") is None
  True
  """
  check_name(name)
  if source not in SOURCES:
    raise ValueError(f"source must be 'auto', 'int8' or 'zoo', got {source!r}")
  kinds = {"int8": ["int8"], "zoo": ["zoo"], "auto": ["zoo", "int8"]}[source]
  for d in search_dirs(weights_dir):
    if name in MCU_NETS:
      zoo = MCU_NETS[name][0]
      files = {"int8": (d / f"{name}.json", d / f"{name}.npz"),
               "zoo": (d / f"{zoo}.json", d / f"{zoo}.pth")}
      for kind in kinds:
        if all(f.is_file() for f in files[kind]):
          return WeightFiles(kind, files[kind])
    else:
      stems = (name, Path(TORCHVISION_URLS[name]).stem)
      for f in (d / f"{s}{ext}" for s in stems for ext in (".safetensors", ".pth", ".npz")):
        if f.is_file():
          return WeightFiles("state_dict", (f,))
  return None


def announce(name: str, found: WeightFiles) -> None:
  """One line on stderr when the weights are not the shipped copies."""
  shipped = shipped_dirs()
  if any(f.resolve().parent not in shipped for f in found.files):
    print(f"trady_jax: {name}: loading {found.kind} weights from "
          f"{', '.join(str(f) for f in found.files)} (not the shipped copy)",
          file=sys.stderr, flush=True)


def download_weights(name: str, cache: str | Path | None = None, *,
                     force: bool = False) -> WeightFiles:
  """Fetch the public fp32 weights of ``name`` (MCUNet model zoo or torchvision) into ``cache``
  (default ``paths.cache_dir()``); files already there are kept unless ``force``."""
  check_name(name)
  cache = Path(cache or paths.cache_dir())
  cache.mkdir(parents=True, exist_ok=True)
  if name in MCU_NETS:
    zoo = MCU_NETS[name][0]
    urls, kind = [f"{ZOO_URL}{zoo}.json", f"{ZOO_URL}{zoo}.pth"], "zoo"
  else:
    urls, kind = [TORCHVISION_URLS[name]], "state_dict"
  files = []
  for url in urls:
    dest = cache / url.rsplit("/", 1)[1]
    if force or not dest.is_file():
      with tempfile.NamedTemporaryFile(dir=cache, delete=False) as tmp:
        try:
          with urllib.request.urlopen(url, timeout=60) as r:
            shutil.copyfileobj(r, tmp)
        except OSError as err:
          os.unlink(tmp.name)
          raise OSError(f"downloading {url} failed: {err}; "
                        f"put the file in {cache} by hand") from err
      os.replace(tmp.name, dest)
    files.append(dest)
  return WeightFiles(kind, tuple(files))
