"""Weight and description files read safely: JSON, ``.npz`` archives and PyTorch-style state dicts.

``.npz`` files are checked before numpy allocates (no pickles, no zip bombs, no entry larger than
it declares), ``.pth`` files go through ``torch_file`` (no code runs), and every error names the
file. State dicts come back as ``{key: numpy array}`` with ``module.`` prefixes and
``num_batches_tracked`` dropped.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from trady_jax.models.formats import torch_file


def read_json(path: str | Path) -> dict:
  """A JSON file, with errors that name it."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"architecture file not found: {path}")
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise ValueError(f"{path} is not valid JSON: {err}") from err


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
  """All arrays of an ``.npz`` file, loaded eagerly so corruption shows here."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"weights file not found: {path}")
  try:
    _check_npz(path)
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
    raise ValueError(f"{path} is not a readable .npz archive: {err}") from err


def _check_npz(path: Path) -> None:
  """Refuse an ``.npz`` whose entries declare more data than they hold, before numpy allocates it."""
  with zipfile.ZipFile(path) as z:
    torch_file.check_inflation(z, path.stat().st_size)
    for info in z.infolist():
      with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
          raise ValueError(f"{info.filename}: unsupported .npy version {version}")
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(f)
      if dtype.hasobject:
        raise ValueError(f"{info.filename} holds Python objects")
      if math.prod(shape) * dtype.itemsize > info.file_size:
        raise ValueError(f"{info.filename} declares a {shape} {dtype} array but holds only "
                         f"{info.file_size} bytes")


def normalise_keys(state_dict: Mapping[str, Any],
                   renames: Sequence[tuple[str, str]] = ()) -> dict[str, np.ndarray]:
  """Numpy float arrays; drops ``module.`` prefixes and ``num_batches_tracked``; regex renames."""
  out = {}
  for k, v in state_dict.items():
    if k.endswith("num_batches_tracked"):
      continue
    k = re.sub(r"^(module\.)+", "", k)
    for pattern, repl in renames:
      k = re.sub(pattern, repl, k)
    out[k] = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
  return out


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
  """``.pth/.pt`` (read without torch), ``.safetensors`` (needs safetensors) or ``.npz`` -> numpy.

  A checkpoint dict holding ``'state_dict'`` or ``'model'`` is unwrapped.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"state dict file not found: {path}")
  if path.suffix in (".pth", ".pt", ".bin"):
    sd = torch_file.load(path)  # no PyTorch needed, and no code runs while loading
  elif path.suffix == ".safetensors":
    try:
      from safetensors.numpy import load_file
    except ImportError as err:
      raise ImportError(f"reading {path.name} needs safetensors: pip install safetensors") from err
    try:
      sd = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
      raise ValueError(f"{path} could not be read as safetensors: {err}") from err
  elif path.suffix == ".npz":
    sd = read_npz(path)
  else:
    raise ValueError(f"unknown state dict format {path.suffix!r} ({path}); "
                     "use .pth, .pt, .safetensors or .npz")
  for key in ("state_dict", "model"):
    if isinstance(sd, dict) and isinstance(sd.get(key), dict):
      sd = sd[key]
  if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
    raise ValueError(f"{path} holds a {type(sd).__name__}, not a state dict of named arrays")
  return normalise_keys(sd)
