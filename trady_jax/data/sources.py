"""Opening datasets: tensorflow-datasets, image folders, the offline CIFAR-10 copy, generated data.

Every source is random access: ``len(src)``, ``src[i] -> (uint8 HWC RGB image, int label)``,
``src.num_classes``, ``src.class_names`` and ``src.protocol`` (which transform family applies).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

from trady_jax import paths
from trady_jax.data.folder import ImageFolderSource, Source, Subset, balanced_subset
from trady_jax.data.synthetic import SyntheticSource, synthetic
from trady_jax.data.tfds_source import (DATASETS, DataUnavailableError, DatasetSpec, TfdsSource,
                                        dataset_spec)

__all__ = [
    "DATASETS", "CIFAR10_CLASSES", "VWW_HELP", "DataUnavailableError", "DatasetSpec",
    "ImageFolderSource", "Source", "Subset", "SyntheticSource", "TfdsSource", "balanced_subset",
    "cifar10_offline", "dataset_spec", "find_cifar10_archive", "image_folder", "open_dataset",
    "synthetic", "vww",
]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")  # the official label order (also the sorted folder names)
CIFAR10_ARCHIVE = "cifar10-jpeg.tar.gz"  # offline copy: cifar10/{train,test}/<class>/NNNN.jpg

VWW_HELP = """\
Visual Wake Words is not part of tensorflow-datasets; open it as an image folder
  ROOT/train/person/*.jpg  ROOT/train/no_person/*.jpg
  ROOT/test/person/*.jpg   ROOT/test/no_person/*.jpg
and pass data_dir=ROOT. To build it (as the predecessor code did, from COCO-2014 with pyvww):
  1. pip install pyvww pycocotools; download COCO-2014 train2014/val2014 images and annotations;
  2. with the scripts of github.com/Mxbonn/visualwakewords, run create_coco_train_minival_split.py
     (maxitrain / minival) then create_visualwakewords_annotations.py (foreground class 'person',
     small-object area threshold 0.005), which write instances_train.json / instances_val.json;
  3. save each image of pyvww.utils.VisualWakeWords(instances_train.json) under ROOT/train/<label>/
     and of instances_val.json under ROOT/test/<label>/, label 'person' if any person annotation.
Alternative without COCO: the newer Wake Vision person detection set from tfds,
open_dataset('wake_vision', split, data_dir=TFDS_DIR)."""


def image_folder(root: str | os.PathLike, split: str, *, limit_per_class: int | None = None,
                 protocol: str = "standard") -> ImageFolderSource:
  """``root/<split>/<class>/*.{jpg,jpeg,png}``; class names from ``root/train`` when it exists."""
  root = Path(root).expanduser()
  if not (root / split).is_dir():
    raise DataUnavailableError(
        f"{root / split} not found; expected root/{{train,test}}/<class>/<image>")
  train_dir = root / "train"
  classes = None
  if train_dir.is_dir():
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
  return ImageFolderSource(root / split, class_names=classes, limit_per_class=limit_per_class,
                           protocol=protocol)


def vww(root: str | os.PathLike | None, split: str, *,
        limit_per_class: int | None = None) -> ImageFolderSource:
  """Visual Wake Words from an image folder (labels 0 = no_person, 1 = person), VWW transforms."""
  if root is None or not (Path(root).expanduser() / split).is_dir():
    raise DataUnavailableError(f"no Visual Wake Words folder at {root!r}.\n{VWW_HELP}")
  return ImageFolderSource(Path(root).expanduser() / split, class_names=("no_person", "person"),
                           limit_per_class=limit_per_class, protocol="resize")


def find_cifar10_archive(shared_dir: str | os.PathLike | None = None) -> Path | None:
  """The offline CIFAR-10 archive, or ``None``.

  Looks in ``shared_dir`` (a folder holding ``data/<archive>`` or ``<archive>``, or the archive
  itself), else in the shared folders of ``paths.shared_dirs`` (``$TRADY_JAX_SHARED``, else
  ``../shared``).
  """
  if shared_dir is not None:
    candidates = [Path(shared_dir).expanduser()]
  else:
    candidates = paths.shared_dirs()
  for base in candidates:
    for path in (base, base / "data" / CIFAR10_ARCHIVE, base / CIFAR10_ARCHIVE):
      if path.is_file():
        return path
  return None


def _is_unpacked(directory: Path) -> bool:
  return (directory / "train").is_dir() and (directory / "test").is_dir()


def _unpack_once(archive: Path, target: Path, top: str = "cifar10") -> Path:
  """Unpack ``archive``'s ``top/`` to ``target``: into a temporary sibling, then one rename."""
  if _is_unpacked(target):
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
  try:
    try:
      with tarfile.open(archive, "r:*") as tar:
        if hasattr(tarfile, "data_filter"):  # no absolute or ../ names, links out, or devices
          tar.extractall(tmp, filter="data")
        else:  # Python < 3.10.12 / 3.11.4: plain files and folders with relative names only
          for member in tar.getmembers():
            if (member.name.startswith("/") or ".." in Path(member.name).parts
                or not (member.isfile() or member.isdir())):
              raise ValueError(f"unsafe member {member.name!r}")
          tar.extractall(tmp)
    except (tarfile.TarError, ValueError, EOFError, OSError, zlib.error) as err:
      raise ValueError(f"{archive} could not be unpacked: {err}") from err
    if not _is_unpacked(tmp / top):
      raise ValueError(f"{archive} does not hold {top}/train and {top}/test")
    try:
      os.rename(tmp / top, target)
    except OSError:  # another process finished first
      if not _is_unpacked(target):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return target


def cifar10_offline(shared_dir: str | os.PathLike | None = None,
                    cache_dir: str | os.PathLike | None = None, *,
                    limit_per_class: int | None = None
                    ) -> tuple[ImageFolderSource, ImageFolderSource]:
  """``(train, test)`` image-folder sources of the offline CIFAR-10 JPEG copy.

  The archive (see :func:`find_cifar10_archive`) is unpacked once into ``cache_dir`` (default
  ``cifar10-jpeg`` in ``paths.cache_dir()``), atomically; later calls only list the files. The JPEG
  re-encoding makes pixels differ slightly from the original CIFAR-10 release.
  """
  target = Path(cache_dir).expanduser() if cache_dir is not None else (
      paths.cache_dir() / paths.CIFAR10_CACHE)
  if not _is_unpacked(target):
    archive = find_cifar10_archive(shared_dir)
    if archive is None:
      raise DataUnavailableError(
          f"the offline CIFAR-10 copy is neither unpacked in {target} nor found as "
          f"{CIFAR10_ARCHIVE} "
          f"(looked in {shared_dir or [str(d) for d in paths.shared_dirs()]})")
    _unpack_once(archive, target)
  return tuple(ImageFolderSource(target / split, class_names=CIFAR10_CLASSES,
                                 limit_per_class=limit_per_class) for split in ("train", "test"))


def open_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
                 download: bool = False, shared_dir: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, limit_per_class: int | None = None,
                 **synthetic_kwargs) -> Source:
  """Open ``split`` (``'train'`` / ``'test'``) of a dataset, from wherever it is available.

  * a :data:`DATASETS` name: a prepared tfds copy in ``data_dir`` (or tfds' default); for
    ``'cifar10'`` then the offline copy (:func:`cifar10_offline`); then, with ``download=True``,
    tfds download-and-prepare. ``'vww'`` is an image folder at ``data_dir`` (see :data:`VWW_HELP`).
  * ``'folder'``: your own image folder ``data_dir/{train,test}/<class>/*.jpg``.
  * ``'synthetic'``: generated data; ``synthetic_kwargs`` go to :func:`synthetic` (defaults:
    5 000 train / 1 000 test examples, 10 classes, 32 px).

  ``limit_per_class`` keeps the first ``n`` examples of every class (not for tfds sources; slice the
  split instead, e.g. ``'train[:10%]'``). Raises :class:`DataUnavailableError` when nothing works.
  """
  if name == "synthetic":
    kwargs = {"num_examples": 5000 if split == "train" else 1000, **synthetic_kwargs}
    source = synthetic(split=split, **kwargs)
    return balanced_subset(source, limit_per_class) if limit_per_class else source
  if synthetic_kwargs:
    raise TypeError(f"unexpected arguments for {name!r}: {sorted(synthetic_kwargs)}")
  if name == "folder":
    if data_dir is None:
      raise ValueError(
          "open_dataset('folder', ...) needs data_dir=ROOT with ROOT/{train,test}/<class>/")
    return image_folder(data_dir, split, limit_per_class=limit_per_class)
  if name == "vww":
    return vww(data_dir, split, limit_per_class=limit_per_class)
  spec = dataset_spec(name)
  errors = []
  try:
    source = TfdsSource(name, split, data_dir=data_dir)
  except DataUnavailableError as e:
    errors.append(str(e).splitlines()[0])
  else:
    if limit_per_class:
      raise ValueError("limit_per_class needs labels up front, which tfds sources do not have; "
                       f"slice the split instead, e.g. split='{split}[:1000]'")
    return source
  if name == "cifar10" and split in ("train", "test"):
    try:
      train, test = cifar10_offline(shared_dir, cache_dir, limit_per_class=limit_per_class)
      return train if split == "train" else test
    except DataUnavailableError as e:
      errors.append(str(e))
  if download:
    return TfdsSource(name, split, data_dir=data_dir, download=True)
  raise DataUnavailableError(
      f"dataset {name!r} ({spec.tfds_name}) is not available here:\n  - " + "\n  - ".join(errors)
      + f"\nPass download=True to let tensorflow-datasets fetch it (network needed), or prepare it "
      f"elsewhere with `tfds build {spec.tfds_name} --file_format=array_record --data_dir=DIR` and "
      "pass data_dir=DIR. For runs without any data use open_dataset('synthetic', split).")
