"""Read PyTorch ``.pth`` checkpoints into numpy without PyTorch.

Supports both layouts ``torch.save`` writes: the zip archive (``<name>/data.pkl`` plus one file per
storage, the default since PyTorch 1.6) and the older sequence of pickles (magic number, protocol,
system info, the object, the storage keys, then the raw storages). Only tensors, storages and
plain containers are rebuilt; any other class in the pickle is refused, so a checkpoint cannot run
code while it loads.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64,
           "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
           "ByteStorage": np.uint8, "BoolStorage": np.bool_}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_SAFE_BUILTINS = {("collections", "OrderedDict"): collections.OrderedDict,
                  ("torch", "Size"): tuple}


class _StorageType:
  def __init__(self, name: str):
    self.dtype = np.dtype(_DTYPES[name])


class _Storage:
  def __init__(self, key: str, dtype: np.dtype):
    self.key, self.dtype, self.data = key, dtype, None


class _Tensor:
  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def array(self) -> np.ndarray:
    flat = self.storage.data
    if not self.size:
      return np.array(flat[self.offset])
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.size,
                                           strides=[s * item for s in self.stride])
    return np.array(view)


def _rebuild_tensor(storage, offset, size, stride, *unused):
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
  return data


class _Unpickler(pickle.Unpickler):
  def __init__(self, f, storages: dict[str, _Storage]):
    super().__init__(f)
    self.storages = storages

  def find_class(self, module, name):
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _DTYPES:
      return _StorageType(name)
    if (module, name) in _SAFE_BUILTINS:
      return _SAFE_BUILTINS[(module, name)]
    raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    storage_type, key = pid[1], str(pid[2])
    if key not in self.storages:
      self.storages[key] = _Storage(key, storage_type.dtype)
    return self.storages[key]


def _materialise(obj: Any) -> Any:
  if isinstance(obj, _Tensor):
    return obj.array()
  if isinstance(obj, dict):
    return type(obj)((k, _materialise(v)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v) for v in obj)
  return obj


def _load_zip(path: Path) -> Any:
  with zipfile.ZipFile(path) as z:
    pkl = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
    if pkl is None:
      raise ValueError(f"{path}: zip archive without data.pkl (not a PyTorch checkpoint)")
    prefix = pkl[:-len("data.pkl")]
    storages: dict[str, _Storage] = {}
    obj = _Unpickler(io.BytesIO(z.read(pkl)), storages).load()
    for key, s in storages.items():
      s.data = np.frombuffer(z.read(f"{prefix}data/{key}"), dtype=s.dtype.newbyteorder("<"))
  return _materialise(obj)


def _load_legacy(path: Path) -> Any:
  with path.open("rb") as f:
    if pickle.load(f) != _LEGACY_MAGIC:
      raise ValueError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    pickle.load(f)  # protocol version
    pickle.load(f)  # system info
    storages: dict[str, _Storage] = {}
    obj = _Unpickler(f, storages).load()
    for key in pickle.load(f):
      s = storages[str(key)]
      (n,) = struct.unpack("<q", f.read(8))
      raw = f.read(n * s.dtype.itemsize)
      if len(raw) != n * s.dtype.itemsize:
        raise ValueError(f"{path}: truncated storage {key}")
      s.data = np.frombuffer(raw, dtype=s.dtype.newbyteorder("<"))
  return _materialise(obj)


def load(path: str | Path) -> Any:
  """The object ``torch.save`` wrote to ``path``, with every tensor as a numpy array."""
  path = Path(path)
  try:
    return _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
  except (pickle.UnpicklingError, EOFError, KeyError, struct.error) as e:
    raise ValueError(f"{path} could not be read as a PyTorch checkpoint: {e}") from e
