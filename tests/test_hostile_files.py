"""Hostile input files: checkpoints, weight and architecture files, images and archives.

Every case is generated here (no network, no torch) and must end in a clear error that names the
file, or in a correct result; none may run code, crash the interpreter or go silently wrong.
"""

import io
import os
import pickle
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from trady_jax import data
from trady_jax.data import folder
from trady_jax import models
from trady_jax.models import store
from trady_jax.models.formats import files, int8, torch_file

from test_models import tiny_int8, write_int8

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


# ---------------------------------------------------------------- int8 weights and descriptions

def _int8_dir(tmp_path, edit_desc=None, edit_arrays=None) -> Path:
  desc, arrays = tiny_int8(np.random.default_rng(0))
  if edit_desc:
    edit_desc(desc)
  if edit_arrays:
    edit_arrays(arrays)
  write_int8(tmp_path, "mcunet-in1", desc, arrays)
  return tmp_path


def _set_q(path, key, value):
  def edit(desc):
    entry = desc["blocks"][0][path] if path != "first_conv" else desc["first_conv"]
    if value is None:
      entry["params"].pop(key)
    else:
      entry["params"][key] = value
  return edit


@pytest.mark.parametrize("edit,match", [
    (_set_q("depthwise", "x_scale", None), "x_scale"),
    (_set_q("depthwise", "x_scale", float("nan")), "x_scale must be finite"),
    (_set_q("first_conv", "x_scale", 0.0), "x_scale must be finite"),
    (_set_q("first_conv", "x_scale", 1e12), "x_scale must be finite"),
    (_set_q("first_conv", "x_scale", "two"), "x_scale"),
])
def test_bad_x_scale_is_a_clear_error(tmp_path, edit, match):
  d = _int8_dir(tmp_path, edit_desc=edit)
  with pytest.raises(ValueError, match=match) as err:
    models.load_model("mcunet-in1", weights_dir=d, source="int8")
  assert "mcunet-in1.json" in str(err.value)


@pytest.mark.parametrize("value", [np.nan, np.inf, -0.01, 1e30])
def test_nan_or_absurd_w_scales_are_refused(tmp_path, value):
  def edit(arrays):
    arrays["pw.s"][3] = value
  d = _int8_dir(tmp_path, edit_arrays=edit)
  with pytest.raises(ValueError, match="blocks_0/pointwise2: w_scales must be finite") as err:
    models.load_model("mcunet-in1", weights_dir=d, source="int8")
  assert "mcunet-in1.npz" in str(err.value)


def test_int8_arrays_of_the_wrong_kind_are_refused(tmp_path):
  def floats(arrays):
    arrays["dw.w"] = arrays["dw.w"].astype(np.float32)
  with pytest.raises(ValueError, match="dtype float32"):
    models.load_model("mcunet-in1", weights_dir=_int8_dir(tmp_path, edit_arrays=floats),
                      source="int8")

  def wide(arrays):
    arrays["dw.w"] = arrays["dw.w"].astype(np.int32) * 1000
  with pytest.raises(ValueError, match="not an int8"):
    models.load_model("mcunet-in1", weights_dir=_int8_dir(tmp_path, edit_arrays=wide),
                      source="int8")


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["blocks"].clear(), "non-empty|blocks"),
    (lambda d: d.pop("classifier"), "lacks"),
    (lambda d: d["classifier"].pop("out_channel"), "malformed"),
    (lambda d: d["blocks"][0].pop("depthwise"), "depthwise"),
    (lambda d: d["blocks"][0]["depthwise"].pop("stride"), "malformed"),
    (lambda d: d["blocks"][0].__setitem__("se", 5), "malformed"),
    (lambda d: d["blocks"][0]["pointwise2"].__setitem__("in_channel", 4), "reads 4 channels"),
    (lambda d: d["classifier"].__setitem__("in_channel", 16), "classifier: reads 16"),
    (lambda d: d["first_conv"].__setitem__("out_channel", 10 ** 9), "implausible"),
    (lambda d: d["blocks"][0]["depthwise"].__setitem__("stride", -1), "implausible"),
    (lambda d: d["blocks"][0]["depthwise"].__setitem__("kernel_size", [0, 0]), "implausible"),
    (lambda d: d["blocks"][0]["depthwise"].__setitem__("stride", 2), "identity shortcut"),
    (lambda d: d["first_conv"].__setitem__("in_channel", 1), "reads 1 channels but gets 3"),
])
def test_cut_down_or_inconsistent_arch_json_is_refused(tmp_path, edit, match):
  desc, _ = tiny_int8(np.random.default_rng(0))
  edit(desc)
  with pytest.raises(ValueError, match=match):
    int8.spec_from_description(desc)
  d = _int8_dir(tmp_path, edit_desc=edit)
  with pytest.raises(ValueError, match="mcunet-in1.json"):
    models.load_model("mcunet-in1", weights_dir=d, source="int8")


def test_truncated_arch_json_names_the_file(tmp_path):
  d = _int8_dir(tmp_path)
  text = (d / "mcunet-in1.json").read_text()
  (d / "mcunet-in1.json").write_text(text[:len(text) // 2])
  with pytest.raises(ValueError, match="mcunet-in1.json is not valid JSON"):
    models.load_model("mcunet-in1", weights_dir=d, source="int8")
  (d / "mcunet-in1.json").write_text("[1, 2]")
  with pytest.raises(ValueError, match="mcunet-in1.json.*not a JSON object"):
    models.load_model("mcunet-in1", weights_dir=d, source="int8")


def test_weights_from_elsewhere_are_announced(tmp_path, capsys):
  d = _int8_dir(tmp_path)
  models.load_model("mcunet-in1", 3, weights_dir=d, source="int8")
  assert f"from {d / 'mcunet-in1.json'}" in capsys.readouterr().err


# ---------------------------------------------------------------- images

def _png(path: Path, pixels: np.ndarray | None, *, width=0, height=0, color_type=0) -> Path:
  """A PNG written byte by byte (16-bit samples, or only a header when ``pixels`` is None)."""
  def chunk(tag, body):
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

  if pixels is not None:
    height, width = pixels.shape[:2]
    color_type = 2 if pixels.ndim == 3 else 0
    rows = b"".join(b"\0" + r.astype(">u2").tobytes() for r in pixels)
  else:
    rows = b""
  ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                   + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
  return path


def _jpeg(path: Path, size=(40, 30)) -> Path:
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, "JPEG")
  return path


def test_corrupt_truncated_and_foreign_images_name_the_file(tmp_path):
  cases = {"noise.jpg": np.random.default_rng(1).bytes(3000), "empty.png": b""}
  good = _jpeg(tmp_path / "good.jpg").read_bytes()
  cases["cut.jpg"] = good[:len(good) // 2]
  png = io.BytesIO()
  Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(png, "PNG")
  cases["cut.png"] = png.getvalue()[:len(png.getvalue()) - 40]
  bmp = io.BytesIO()
  Image.new("RGB", (8, 8)).save(bmp, "BMP")
  cases["bitmap.png"] = bmp.getvalue()  # not a PNG, whatever its name says
  for name, raw in cases.items():
    (tmp_path / name).write_bytes(raw)
    with pytest.raises(folder.ImageError, match=f"cannot decode image {tmp_path / name}"):
      folder.load_rgb(tmp_path / name)
  assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_decompression_bombs_are_refused_without_decoding(tmp_path, monkeypatch):
  bomb = _png(tmp_path / "bomb.png", None, width=100_000, height=100_000)
  with pytest.raises(folder.ImageError, match="bomb.png.*decompression bomb"):
    folder.load_rgb(bomb)
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL itself only warns up to twice this
  with pytest.warns(Image.DecompressionBombWarning):
    with pytest.raises(folder.ImageError, match="small.jpg: 40x30 pixels.*decompression bomb"):
      folder.load_rgb(_jpeg(tmp_path / "small.jpg"))


def test_16_bit_pngs_are_scaled_to_8_bits(tmp_path):
  grey = np.array([[0, 257, 32768, 65535]], np.uint16)
  out = folder.load_rgb(_png(tmp_path / "grey16.png", grey))
  assert out.dtype == np.uint8 and out.shape == (1, 4, 3)
  np.testing.assert_array_equal(out[..., 0], [[0, 1, 128, 255]])
  assert (out == out[..., :1]).all()
  rgb = np.array([[[0x1234, 0xffff, 0x0080]]], np.uint16)
  np.testing.assert_array_equal(folder.load_rgb(_png(tmp_path / "rgb16.png", rgb)),
                                [[[0x12, 0xff, 0x00]]])
  Image.fromarray(np.full((2, 3), 65535, np.uint16)).save(tmp_path / "pil16.png")
  assert (folder.load_rgb(tmp_path / "pil16.png") == 255).all()


def test_other_modes_convert_to_rgb(tmp_path):
  palette = Image.new("P", (4, 4))
  palette.putpalette([10, 20, 30] * 256)
  palette.info["transparency"] = 0
  images = {"p.png": palette, "la.png": Image.new("LA", (4, 4), (90, 0)),
            "rgba.png": Image.new("RGBA", (4, 4), (1, 2, 3, 0)), "one.png": Image.new("1", (4, 4), 1),
            "cmyk.jpg": Image.new("CMYK", (4, 4), (0, 0, 0, 0)), "l.jpg": Image.new("L", (4, 4), 90)}
  want = {"p.png": (10, 20, 30), "la.png": (90, 90, 90), "rgba.png": (1, 2, 3),
          "one.png": (255, 255, 255), "cmyk.jpg": (255, 255, 255), "l.jpg": (90, 90, 90)}
  for name, image in images.items():
    image.save(tmp_path / name)
    out = folder.load_rgb(tmp_path / name)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8, name
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), want[name], atol=2, err_msg=name)


def test_empty_class_folder_is_an_error(tmp_path):
  for name in ("cat", "dog"):
    (tmp_path / "train" / name).mkdir(parents=True)
  _jpeg(tmp_path / "train" / "cat" / "a.jpg")
  (tmp_path / "train" / "dog" / "notes.txt").write_text("no images")
  with pytest.raises(ValueError, match=f"class folder {tmp_path / 'train' / 'dog'} holds no"):
    data.image_folder(tmp_path, "train")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_image_in_a_loader_thread_stops_the_epoch_with_its_path(tmp_path, workers):
  d = tmp_path / "train" / "cat"
  d.mkdir(parents=True)
  for i in range(6):
    _jpeg(d / f"{i}.jpg")
  (d / "3.jpg").write_bytes(b"\xff\xd8\xff broken")
  source = data.image_folder(tmp_path, "train")
  with pytest.raises(folder.ImageError, match=str(d / "3.jpg")):
    for _ in data.batches(source, 2, train=False, num_workers=workers, image_size=16):
      pass


# ---------------------------------------------------------------- archives

@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink", "device"])
def test_unsafe_tar_members_are_refused(tmp_path, kind):
  archive = tmp_path / "cifar10-jpeg.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    member = tarfile.TarInfo({"parent": "cifar10/../../escaped", "absolute": str(tmp_path / "abs"),
                              "symlink": "cifar10/train/link", "device": "cifar10/dev"}[kind])
    if kind == "symlink":
      member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "device":
      member.type, member.devmajor, member.devminor = tarfile.CHRTYPE, 1, 3
    tar.addfile(member, io.BytesIO(b""))
  with pytest.raises(ValueError, match=str(archive)):  # refused, or made relative ("absolute")
    data.cifar10_offline(archive, tmp_path / "cache" / "cifar10-jpeg")
  assert not (tmp_path / "escaped").exists() and not (tmp_path / "abs").exists()


def test_truncated_archive_names_itself(tmp_path):
  archive = tmp_path / "cifar10-jpeg.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    info = tarfile.TarInfo("cifar10/train/cat/0.jpg")
    payload = np.random.default_rng(0).bytes(50_000)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))
  archive.write_bytes(archive.read_bytes()[:20_000])
  with pytest.raises(ValueError, match=f"{archive} could not be unpacked"):
    data.cifar10_offline(archive, tmp_path / "cache" / "cifar10-jpeg")
