"""Hostile checkpoints: code in pickles, tensor views outside storages, truncation, zip bombs.

Every case is generated here (no network, no torch) and must end in a clear error that names the
file, or in a correct result; none may run code, crash the interpreter or go silently wrong.
"""

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from trady_jax import models
from trady_jax.models import store
from trady_jax.models.formats import files, torch_file

DATA = Path(__file__).parent / "data"
SYS_INFO = {"protocol_version": 1001, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4}}


# ---------------------------------------------------------------- pickles written by hand

def _str(s: str) -> bytes:
  b = s.encode()
  return b"X" + struct.pack("<I", len(b)) + b


def _int(i: int) -> bytes:
  b = i.to_bytes((i.bit_length() + 8) // 8, "little", signed=True)
  return b"\x8a" + bytes([len(b)]) + b


def _global(module: str, name: str) -> bytes:
  return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tuple(*items: bytes) -> bytes:
  return b"(" + b"".join(items) + b"t"


def _tensor(size, stride, offset=0, key="0", storage="FloatStorage", numel=4) -> bytes:
  """Pickle opcodes of ``torch._utils._rebuild_tensor_v2`` on persistent storage ``key``."""
  pid = _tuple(_str("storage"), _global("torch", storage), _str(key), _str("cpu"), _int(numel))
  args = _tuple(pid + b"Q", _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)),
                b"\x89", _global("collections", "OrderedDict") + b")R")
  return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _dict_pickle(**tensors: bytes) -> bytes:
  return b"\x80\x02}" + b"".join(_str(k) + v + b"s" for k, v in tensors.items()) + b"."


def _zip_pth(path: Path, pkl: bytes, storages: dict[str, bytes], byteorder: bytes | None = None):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pkl)
    if byteorder is not None:
      z.writestr("archive/byteorder", byteorder)
    for key, raw in storages.items():
      z.writestr(f"archive/data/{key}", raw)
  return path


def _legacy_pth(path: Path, obj_pkl: bytes, keys=("0",), storages=(np.arange(4, dtype="<f4"),),
                header: bytes | None = None) -> Path:
  head = header if header is not None else b"".join(
      pickle.dumps(x, protocol=2) for x in (torch_file._LEGACY_MAGIC, 1001, SYS_INFO))
  body = b"".join(struct.pack("<q", a.size) + a.tobytes() for a in storages)
  path.write_bytes(head + obj_pkl + pickle.dumps(list(keys), protocol=2) + body)
  return path


FLOATS = np.arange(4, dtype="<f4").tobytes()


def test_hand_written_checkpoints_load(tmp_path):
  """The writers above produce files the reader accepts (so the refusals below are meaningful)."""
  pkl = _dict_pickle(w=_tensor((2, 2), (1, 2)), s=_tensor((), (), offset=3))
  for path in (_zip_pth(tmp_path / "zip.pth", pkl, {"0": FLOATS}),
               _legacy_pth(tmp_path / "legacy.pth", pkl)):
    sd = torch_file.load(path)
    np.testing.assert_array_equal(sd["w"], [[0, 2], [1, 3]])
    assert sd["s"] == 3 and sd["s"].shape == ()


# ---------------------------------------------------------------- code in pickles

def _code_pickles(marker: Path) -> dict[str, bytes]:
  cmd = f"touch {marker}"

  class Evil:
    def __reduce__(self):
      return (os.system, (cmd,))

  return {
      "reduce_p2": pickle.dumps({"w": Evil()}, protocol=2),
      "reduce_p4": pickle.dumps({"w": Evil()}, protocol=4),
      "inst": b"(S'" + cmd.encode() + b"'\nios\nsystem\n.",
      "obj": b"(cos\nsystem\nS'" + cmd.encode() + b"'\no.",
      "eval": _global("builtins", "eval") + _tuple(_str(f"__import__('os').system('{cmd}')"))
      + b"R.",
      "newobj": b"\x80\x02" + _global("os", "system") + _tuple(_str(cmd)) + b"\x81.",
      "ext": b"\x80\x02\x82\x01.",
      "memo_bomb": b"\x80\x02}r\xff\xff\xff\x7f.",
      "tensor_on_system": b"\x80\x02" + _global("torch._utils", "_rebuild_tensor_v2")
      + _tuple(_global("os", "system"), _int(0), _tuple(), _tuple()) + b"R.",
  }


@pytest.mark.parametrize("case", list(_code_pickles(Path("m"))))
@pytest.mark.parametrize("layout", ["zip", "legacy_header", "legacy_object", "legacy_keys"])
def test_code_in_any_pickle_is_refused(tmp_path, case, layout):
  marker = tmp_path / "pwned"
  evil = _code_pickles(marker)[case]
  path = tmp_path / "resnet18.pth"
  if layout == "zip":
    _zip_pth(path, evil, {})
  elif layout == "legacy_header":
    _legacy_pth(path, _dict_pickle(), header=evil)
  elif layout == "legacy_object":
    _legacy_pth(path, evil)
  else:
    good = pickle.dumps(torch_file._LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
    path.write_bytes(good + pickle.dumps(SYS_INFO, protocol=2) + _dict_pickle() + evil)
  with pytest.raises(ValueError, match=str(path)):
    torch_file.load(path)
  with pytest.raises(ValueError, match="resnet18.pth"):
    models.load_model("resnet18", weights_dir=tmp_path)
  assert not marker.exists()


def test_crafted_zoo_file_in_the_cache_is_refused_and_never_preferred(tmp_path, monkeypatch,
                                                                     capsys):
  marker = tmp_path / "pwned"
  cache = tmp_path / "cache"
  cache.mkdir()
  zoo = models.MCU_NETS["mbv2-w0.35"][0]
  (cache / f"{zoo}.json").write_text("{}")
  _zip_pth(cache / f"{zoo}.pth", _code_pickles(marker)["reduce_p2"], {})
  monkeypatch.setenv("TRADY_JAX_CACHE", str(cache))
  monkeypatch.delenv("TRADY_JAX_WEIGHTS", raising=False)
  found = models.find_weights("mbv2-w0.35")
  shipped = store.shipped_dirs()
  if any((d / "mbv2-w0.35.npz").is_file() for d in shipped):
    assert found.kind == "int8" and found.files[0].parent in shipped  # shipped beats the cache
  with pytest.raises(ValueError, match=f"{zoo}.pth"):
    models.load_model("mbv2-w0.35", source="zoo")
  assert "not the shipped copy" in capsys.readouterr().err
  assert not marker.exists()


# ---------------------------------------------------------------- tensor views and storages

@pytest.mark.parametrize("tensor,match", [
    (_tensor((3, 3), (1, 3)), "reaches element 8 of a storage of 4"),
    (_tensor((4,), (2,)), "reaches element 6"),
    (_tensor((2,), (-1,), offset=1), "negative"),
    (_tensor((-2,), (1,)), "negative"),
    (_tensor((2,), (1,), offset=-1), "negative"),
    (_tensor((1,), (1,), offset=2 ** 40), "reaches element"),
    (_tensor((2 ** 62, 2 ** 62), (2 ** 62, 1)), "reaches element"),
    (_tensor((2 ** 40, 2 ** 40), (0, 0)), "exceed the storages"),
    (_tensor((), (), offset=4), "reaches element 4"),
    (_tensor((2, 2), (1,)), "differ in length"),
    (_tensor((2,), (1,), key="../../etc/passwd"), "bad storage key"),
    (_tensor((2,), (1,), key="7"), "'7' is referenced but"),
])
def test_tensor_views_outside_their_storage_are_refused(tmp_path, tensor, match):
  path = _zip_pth(tmp_path / "view.pth", _dict_pickle(w=tensor), {"0": FLOATS})
  with pytest.raises(ValueError, match=match):
    torch_file.load(path)
  legacy = _legacy_pth(tmp_path / "view_legacy.pth", _dict_pickle(w=tensor))
  with pytest.raises(ValueError, match="view_legacy.pth"):
    torch_file.load(legacy)


def test_storage_type_and_size_mismatches_are_refused(tmp_path):
  two_types = _dict_pickle(a=_tensor((1,), (1,)), b=_tensor((1,), (1,), storage="LongStorage"))
  with pytest.raises(ValueError, match="used as both"):
    torch_file.load(_zip_pth(tmp_path / "a.pth", two_types, {"0": FLOATS}))
  with pytest.raises(ValueError, match="whole number"):
    torch_file.load(_zip_pth(tmp_path / "b.pth", _dict_pickle(w=_tensor((1,), (1,))),
                             {"0": b"\0" * 7}))
  with pytest.raises(ValueError, match="big-endian"):
    torch_file.load(_zip_pth(tmp_path / "c.pth", _dict_pickle(), {}, byteorder=b"big"))
  bare = b"\x80\x02}" + _str("s") + _tuple(_str("storage"), _global("torch", "FloatStorage"),
                                           _str("0"), _str("cpu"), _int(4)) + b"Qs."
  with pytest.raises(ValueError, match="bare storage"):
    torch_file.load(_zip_pth(tmp_path / "d.pth", bare, {"0": FLOATS}))


def test_legacy_storages_cannot_claim_more_than_the_file(tmp_path):
  pkl = _dict_pickle(w=_tensor((4,), (1,)))
  path = _legacy_pth(tmp_path / "big.pth", pkl)
  raw = path.read_bytes()
  at = raw.rindex(struct.pack("<q", 4))
  path.write_bytes(raw[:at] + struct.pack("<q", 2 ** 60) + raw[at + 8:])
  with pytest.raises(ValueError, match="truncated storage"):
    torch_file.load(path)
  path.write_bytes(raw[:at] + struct.pack("<q", -5) + raw[at + 8:])
  with pytest.raises(ValueError, match="truncated storage"):
    torch_file.load(path)
  unused = _legacy_pth(tmp_path / "unused.pth", pkl, keys=("0", "1"),
                       storages=(np.zeros(4, "<f4"),) * 2)
  with pytest.raises(ValueError, match="no tensor uses it"):
    torch_file.load(unused)
  header = b"".join(pickle.dumps(x, protocol=2) for x in (torch_file._LEGACY_MAGIC, 1001,
                                                          dict(SYS_INFO, little_endian=False)))
  with pytest.raises(ValueError, match="big-endian"):
    torch_file.load(_legacy_pth(tmp_path / "be.pth", pkl, header=header))


@pytest.mark.parametrize("name", ["tiny_zip.pth", "tiny_legacy.pth"])
@pytest.mark.parametrize("keep", [0.02, 0.3, 0.6, 0.97])
def test_truncated_checkpoints_are_clear_errors(tmp_path, name, keep):
  raw = (DATA / name).read_bytes()
  path = tmp_path / name
  path.write_bytes(raw[:int(len(raw) * keep)])
  with pytest.raises(ValueError, match=str(path)) as err:
    torch_file.load(path)
  if name == "tiny_zip.pth":  # never retried as a legacy pickle
    assert "zip" in str(err.value) and "magic" not in str(err.value)


def test_zip_bomb_is_refused_before_inflating(tmp_path):
  path = tmp_path / "bomb.pth"
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("archive/data.pkl", _dict_pickle(w=_tensor((4,), (1,))))
    z.writestr("archive/data/0", b"\0" * (48 << 20))
  assert path.stat().st_size < 1 << 20
  with pytest.raises(ValueError, match="zip bomb"):
    torch_file.load(path)
  bomb_npz = tmp_path / "bomb.npz"
  with zipfile.ZipFile(bomb_npz, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("a.npy", b"\0" * (48 << 20))
  with pytest.raises(ValueError, match="bomb.npz.*zip bomb"):
    files.read_npz(bomb_npz)


def test_npz_entries_that_overstate_their_size_or_hold_objects(tmp_path):
  buf = io.BytesIO()
  np.lib.format.write_array(buf, np.zeros(4, np.float32))
  header = buf.getvalue().replace(b"(4,)", b"(10000000000,)".ljust(4))
  fixed = header[:8] + struct.pack("<H", len(header) - 10 - 16) + header[10:]
  path = tmp_path / "liar.npz"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("a.npy", fixed[:-16])
  with pytest.raises(ValueError, match="liar.npz.*declares"):
    files.read_npz(path)
  np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
  with pytest.raises(ValueError, match="objects.npz.*Python objects"):
    files.read_npz(tmp_path / "objects.npz")
