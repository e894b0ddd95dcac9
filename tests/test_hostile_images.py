"""Hostile images, class folders and dataset archives: corrupt, bombs, odd modes, unsafe members.

Every case is generated here (no network, no torch) and must end in a clear error that names the
file, or in a correct result; none may run code, crash the interpreter or go silently wrong.
"""

import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from trady_jax import data
from trady_jax.data import folder


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
