"""Read PyTorch ``.pth`` checkpoints into numpy without PyTorch, and without trusting them.

Supports both layouts ``torch.save`` writes: the zip archive (``<name>/data.pkl`` plus one file per
storage, the default since PyTorch 1.6) and the older sequence of pickles (magic number, protocol,
system info, the object, the storage keys, then the raw storages; pickle protocol 2 or later, as
``torch.save`` writes).

A checkpoint is untrusted input:

* every pickle in it (the legacy header pickles too) is first scanned opcode by opcode without
  running it (no opcodes that build arbitrary objects, bounded memo indices, arguments present),
  then loaded by one restricted unpickler whose only globals are the tensor rebuilders, the storage
  types, ``collections.OrderedDict`` and ``torch.Size``: a checkpoint cannot run code;
* every tensor view (offset, sizes, strides) is checked against its storage before numpy sees it,
  and views larger than their storage (stride 0) count against a budget of twice the storages;
* zip entries may declare at most ``MAX_INFLATE`` times the archive's size in total (zip bombs),
  legacy storages may not declare more bytes than the file holds;
* a file starting like a zip archive is read as one (a truncated archive is an error, never
  retried as a legacy pickle).

Any failure is a ``ValueError`` that names the file.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import pickletools
import re
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
_LEGACY_PROTOCOL = 1001
_SAFE_BUILTINS = {("collections", "OrderedDict"): collections.OrderedDict,
                  ("torch", "Size"): tuple}
# Opcodes that build objects other than through REDUCE of an allowed global, or need outside help.
_REFUSED_OPCODES = {"INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "PERSID",
                    "BYTEARRAY8", "NEXT_BUFFER", "READONLY_BUFFER"}
_MEMO_LIMIT = 1 << 20  # largest memo index accepted (the unpickler allocates up to it)
MAX_INFLATE = 32  # zip entries may declare at most this many times the archive's size in total
_VIEW_SLACK = 256 << 20  # bytes of stride-0 views allowed beyond twice the storages


class _StorageType:
  def __init__(self, name: str):
    self.dtype = np.dtype(_DTYPES[name])


class _Storage:
  def __init__(self, key: str, dtype: np.dtype):
    self.key, self.dtype, self.data = key, dtype, None


def _ints(values: Any, what: str) -> tuple[int, ...]:
  if not isinstance(values, (tuple, list)) or not all(type(v) is int for v in values):
    raise pickle.UnpicklingError(f"tensor {what} {values!r:.80} is not a tuple of integers")
  return tuple(values)


class _Tensor:
  def __init__(self, storage: _Storage, offset: int, size, stride):
    if not isinstance(storage, _Storage):
      raise pickle.UnpicklingError(f"tensor built on {type(storage).__name__}, not a storage")
    if type(offset) is not int:
      raise pickle.UnpicklingError(f"tensor offset {offset!r:.80} is not an integer")
    self.storage, self.offset = storage, offset
    self.size, self.stride = _ints(size, "size"), _ints(stride, "stride")
    if len(self.size) != len(self.stride):
      raise pickle.UnpicklingError(f"tensor size {self.size} and stride {self.stride} differ in "
                                   "length")

  def array(self, budget: list[int]) -> np.ndarray:
    """A copy of the view, after checking that it lies inside its storage."""
    flat, where = self.storage.data, f"tensor on storage {self.storage.key!r}"
    if flat is None:
      raise ValueError(f"storage {self.storage.key!r} is referenced but not in the file")
    if self.offset < 0 or min(self.size + self.stride, default=0) < 0:
      raise ValueError(f"{where}: negative offset, size or stride (offset {self.offset}, size "
                       f"{self.size}, stride {self.stride})")
    count = math.prod(self.size)
    if count == 0:
      return np.empty(self.size, flat.dtype)
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if last >= flat.size:
      raise ValueError(f"{where}: view (offset {self.offset}, size {self.size}, stride "
                       f"{self.stride}) reaches element {last} of a storage of {flat.size}")
    budget[0] -= count * flat.dtype.itemsize
    if budget[0] < 0:
      raise ValueError(f"{where}: views of size {self.size} exceed the storages' size")
    strides = [s * flat.dtype.itemsize if n > 1 else 0 for n, s in zip(self.size, self.stride)]
    return np.array(np.lib.stride_tricks.as_strided(flat[self.offset:], self.size, strides))


def _rebuild_tensor(storage, offset, size, stride, *unused):
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
  return data


class _Unpickler(pickle.Unpickler):
  """The only unpickler used: allowed globals only; storages only where ``storages`` is given."""

  def __init__(self, f, storages: dict[str, _Storage] | None):
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
    if (self.storages is None or not isinstance(pid, tuple) or len(pid) < 3
        or pid[0] != "storage" or not isinstance(pid[1], _StorageType)
        or type(pid[2]) not in (str, int)):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
    if len(pid) > 5 and pid[5] is not None:
      raise pickle.UnpicklingError("legacy storage views are not supported")
    key, dtype = str(pid[2]), pid[1].dtype
    if not re.fullmatch(r"[\w.-]{1,64}", key):
      raise pickle.UnpicklingError(f"bad storage key {key!r:.80}")
    storage = self.storages.setdefault(key, _Storage(key, dtype))
    if storage.dtype != dtype:
      raise pickle.UnpicklingError(f"storage {key!r} is used as both {storage.dtype} and {dtype}")
    return storage


def _unpickle(data: bytes, pos: int = 0,
              storages: dict[str, _Storage] | None = None) -> tuple[Any, int]:
  """The object pickled at ``data[pos:]`` and the position after it, scanned before it is run."""
  f = io.BytesIO(data)
  f.seek(pos)
  for op, arg, at in pickletools.genops(f):
    if op.name in _REFUSED_OPCODES:
      raise pickle.UnpicklingError(f"refusing pickle opcode {op.name} at byte {at}")
    if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and int(arg) > _MEMO_LIMIT:
      raise pickle.UnpicklingError(f"memo index {arg} at byte {at} is too large")
    if op.name == "FRAME" and arg > len(data) - at:
      raise pickle.UnpicklingError(f"frame of {arg} bytes at byte {at} exceeds the file")
  end = f.tell()
  return _Unpickler(io.BytesIO(data[pos:end]), storages).load(), end


def _materialise(obj: Any, budget: list[int]) -> Any:
  if isinstance(obj, _Tensor):
    return obj.array(budget)
  if isinstance(obj, (_Storage, _StorageType)):
    raise ValueError("a bare storage outside a tensor is not supported")
  if isinstance(obj, dict):
    return type(obj)((k, _materialise(v, budget)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v, budget) for v in obj)
  return obj


def _view_budget(storages: dict[str, _Storage]) -> list[int]:
  return [2 * sum(s.data.nbytes for s in storages.values() if s.data is not None) + _VIEW_SLACK]


def check_inflation(archive: zipfile.ZipFile, file_size: int) -> None:
  """Refuse a zip archive whose entries declare more than ``MAX_INFLATE`` times its size."""
  declared = sum(i.file_size for i in archive.infolist())
  if declared > MAX_INFLATE * max(file_size, 1 << 20):
    raise ValueError(f"its entries declare {declared} bytes, more than {MAX_INFLATE} times the "
                     f"archive's {file_size} (a zip bomb?)")


def _load_zip(path: Path) -> Any:
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile as err:
    raise ValueError(f"truncated or corrupt zip archive ({err})") from err
  with archive as z:
    check_inflation(z, path.stat().st_size)
    names = set(z.namelist())
    pkl = next((n for n in sorted(names) if n.endswith("/data.pkl") or n == "data.pkl"), None)
    if pkl is None:
      raise ValueError("zip archive without data.pkl (not a PyTorch checkpoint)")
    prefix = pkl[:-len("data.pkl")]
    if f"{prefix}byteorder" in names and z.read(f"{prefix}byteorder").strip() != b"little":
      raise ValueError("big-endian checkpoints are not supported")
    storages: dict[str, _Storage] = {}
    obj, _ = _unpickle(z.read(pkl), 0, storages)
    for key, s in storages.items():
      name = f"{prefix}data/{key}"
      if name not in names:
        raise ValueError(f"storage {key!r} is referenced but {name} is not in the archive")
      raw = z.read(name)
      if len(raw) % s.dtype.itemsize:
        raise ValueError(f"storage {key!r} holds {len(raw)} bytes, not a whole number of "
                         f"{s.dtype} elements")
      s.data = np.frombuffer(raw, dtype=s.dtype.newbyteorder("<"))
  return _materialise(obj, _view_budget(storages))


def _load_legacy(data: bytes) -> Any:
  magic, pos = _unpickle(data)
  if magic != _LEGACY_MAGIC:
    raise ValueError("not a PyTorch checkpoint (bad magic number)")
  protocol, pos = _unpickle(data, pos)
  if protocol != _LEGACY_PROTOCOL:
    raise ValueError(f"unsupported legacy protocol {protocol!r:.40}")
  info, pos = _unpickle(data, pos)
  if not isinstance(info, dict) or info.get("little_endian") is False:
    raise ValueError("big-endian or unknown system info; only little-endian files are supported")
  storages: dict[str, _Storage] = {}
  obj, pos = _unpickle(data, pos, storages)
  keys, pos = _unpickle(data, pos)
  if not isinstance(keys, list):
    raise ValueError(f"storage keys are {type(keys).__name__}, not a list")
  for key in keys:
    s = storages.get(str(key))
    if s is None:
      raise ValueError(f"storage {key!r:.40} is listed but no tensor uses it")
    n = int.from_bytes(data[pos:pos + 8], "little", signed=True) if pos + 8 <= len(data) else -1
    end = pos + 8 + n * s.dtype.itemsize
    if n < 0 or end > len(data):
      raise ValueError(f"truncated storage {key}: it declares {n} elements, the file holds "
                       f"{max(len(data) - pos - 8, 0)} bytes")
    s.data = np.frombuffer(data, dtype=s.dtype.newbyteorder("<"), count=n, offset=pos + 8)
    pos = end
  return _materialise(obj, _view_budget(storages))


def load(path: str | Path) -> Any:
  """The object ``torch.save`` wrote to ``path``, with every tensor as a numpy array."""
  path = Path(path)
  try:
    with path.open("rb") as f:
      head = f.read(2)
    if head == b"PK":
      return _load_zip(path)
    if head[:1] == b"\x80":
      return _load_legacy(path.read_bytes())
    raise ValueError(f"neither a zip archive nor a pickle (starts with {head!r})")
  except Exception as e:  # whatever a hostile file provokes, the error names it
    raise ValueError(f"{path} could not be read as a PyTorch checkpoint: {e}") from e
