"""Random-access image sources over local files, and subsets of any source.

A *source* is a sequence of ``(uint8 HWC RGB image, int label)`` pairs with ``num_classes``,
``class_names`` and ``protocol`` (``'standard'`` or ``'resize'``, which transform family applies).
Sources that know their labels without decoding images also expose ``labels`` (int64 array).

Image files are untrusted: a file that is not a JPEG or PNG, or is corrupt, truncated (PIL's
``LOAD_TRUNCATED_IMAGES`` stays False) or larger than ``PIL.Image.MAX_IMAGE_PIXELS`` (a
decompression bomb) aborts the run with an ``ImageError`` naming its path, also when it is decoded
in a loader thread; bad files are never skipped, so batches stay what ``(seed, epoch, step)``
says. 16-bit greyscale PNGs are scaled to 8 bits; palette, grey, alpha and CMYK images are
converted to RGB as PIL does (alpha dropped). A class folder without image files is an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # file suffixes read by ImageFolderSource (any case)
IMAGE_FORMATS = ("JPEG", "PNG")  # the only decoders PIL may use, whatever the suffix says
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit greyscale (PNG), scaled to 8 bits


class ImageError(ValueError):
  """An image file that cannot be decoded; the message names it."""


class Source(Protocol):
  """What the loader needs from a dataset."""

  num_classes: int
  class_names: tuple[str, ...]
  protocol: str

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]: ...


def load_rgb(path: str | os.PathLike) -> np.ndarray:
  """Decode a JPEG or PNG file to uint8 HWC RGB; ``ImageError`` naming ``path`` if it cannot be."""
  try:
    with Image.open(path, formats=IMAGE_FORMATS) as image:
      limit = Image.MAX_IMAGE_PIXELS
      if limit and image.width * image.height > limit:
        raise ImageError(f"{image.width}x{image.height} pixels, more than "
                         f"PIL.Image.MAX_IMAGE_PIXELS = {limit} (a decompression bomb?)")
      image.load()
      rgb = _to_rgb(image)
  except Exception as err:  # PIL raises many types for broken files; all name the file here
    raise ImageError(f"cannot decode image {os.fspath(path)}: {err}") from err
  if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
    raise ImageError(f"cannot decode image {os.fspath(path)}: decoded to shape {rgb.shape}")
  return rgb


def _to_rgb(image: Image.Image) -> np.ndarray:
  if image.mode not in _WIDE_MODES:
    return np.asarray(image.convert("RGB"))
  wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
  grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)  # round(v / 257)
  return np.repeat(grey[..., None], 3, axis=-1)


def _list_images(directory: Path) -> list[str]:
  names = [e.name for e in os.scandir(directory)
           if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
  return sorted(names)


class ImageFolderSource:
  """Images in ``directory/<class name>/*.{jpg,jpeg,png}``; labels follow the sorted class names.

  Args:
    directory: the split folder (e.g. ``root/train``).
    class_names: label order; defaults to the sorted sub-folders of ``directory``. Pass the training
      split's classes when opening the test split so both use the same labels.
    limit_per_class: keep only the first ``n`` files (sorted by name) of each class, a
      class-balanced subset for quick runs.
    protocol: transform family, ``'standard'`` or ``'resize'`` (VWW).
  """

  def __init__(self, directory: str | os.PathLike, *, class_names: Sequence[str] | None = None,
               limit_per_class: int | None = None, protocol: str = "standard"):
    self.directory = Path(directory)
    if not self.directory.is_dir():
      raise FileNotFoundError(f"image folder {self.directory} does not exist")
    found = sorted(e.name for e in os.scandir(self.directory) if e.is_dir())
    if class_names is None:
      class_names = found
    unknown = sorted(set(found) - set(class_names))
    if unknown:
      raise ValueError(f"{self.directory} has class folders {unknown} that are not in class_names")
    if limit_per_class is not None and limit_per_class < 1:
      raise ValueError(f"limit_per_class must be >= 1, got {limit_per_class}")
    self.class_names = tuple(class_names)
    self.num_classes = len(self.class_names)
    self.protocol = protocol
    paths, labels = [], []
    for label, name in enumerate(self.class_names):
      if not (self.directory / name).is_dir():
        continue
      files = _list_images(self.directory / name)[:limit_per_class]
      if not files:
        raise ValueError(f"class folder {self.directory / name} holds no "
                         f"{'/'.join(IMAGE_EXTENSIONS)} files: add images or remove the folder "
                         "(it would be a class without examples)")
      paths += [os.path.join(self.directory, name, f) for f in files]
      labels += [label] * len(files)
    if not paths:
      raise FileNotFoundError(
          f"no {'/'.join(IMAGE_EXTENSIONS)} files in {self.directory}/<class>/; expected the "
          "layout root/{train,test}/<class name>/<image file>")
    self.paths = paths
    self.labels = np.asarray(labels, np.int64)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return load_rgb(self.paths[index]), int(self.labels[index])

  def __repr__(self) -> str:
    return (f"ImageFolderSource({str(self.directory)!r}, {len(self)} images, "
            f"{self.num_classes} classes)")


class Subset:
  """The examples ``indices`` of ``source``, in that order."""

  def __init__(self, source: Source, indices: Sequence[int]):
    self.source = source
    self.indices = np.asarray(indices, np.int64)
    if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(source)):
      raise IndexError(f"subset indices out of range for a source of length {len(source)}")
    self.num_classes = source.num_classes
    self.class_names = source.class_names
    self.protocol = getattr(source, "protocol", "standard")
    if hasattr(source, "labels"):
      self.labels = np.asarray(source.labels)[self.indices]

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return self.source[int(self.indices[index])]

  def __repr__(self) -> str:
    return f"Subset({self.source!r}, {len(self)} examples)"


def balanced_subset(source: Source, per_class: int, *, seed: int | None = None) -> Subset:
  """``per_class`` examples of every class: the first ones, or a random choice when ``seed`` is set.

  Needs ``source.labels``; for tensorflow-datasets sources slice the split instead
  (``'train[:10%]'``).
  """
  if not hasattr(source, "labels"):
    raise TypeError(f"{type(source).__name__} has no `labels`; a balanced subset needs them "
                    "(for tfds sources use a split slice such as 'train[:1000]')")
  labels = np.asarray(source.labels)
  rng = None if seed is None else np.random.default_rng(seed)
  chosen = []
  for c in range(source.num_classes):
    idx = np.flatnonzero(labels == c)
    if rng is not None:
      idx = np.sort(rng.permutation(idx)[:per_class])
    chosen.append(idx[:per_class])
  return Subset(source, np.sort(np.concatenate(chosen)))
