"""The papers' datasets and their tensorflow-datasets sources (``tfds.data_source``, no TensorFlow).

Splits follow the code of the WACV-W 2024 predecessor; TraDy and MeDyate do not state theirs:

=========== ===================== ================ ============== ==============================
name        tfds builder          train split      test split     note
=========== ===================== ================ ============== ==============================
cifar10     cifar10               train (50 000)   test (10 000)
cifar100    cifar100              train (50 000)   test (10 000)  fine labels
cub200      caltech_birds2011     train (5 994)    test (5 794)   official train_test_split.txt
flowers102  oxford_flowers102     train (1 020)    test (6 149)   validation (1 020) unused
food101     food101               train (75 750)   validation     tfds 'validation' = official test
pets        oxford_iiit_pet       train (3 680)    test (3 669)   tfds 'train' = official trainval
vww         (not in tfds)         image folder     image folder   see ``sources.VWW_HELP``
wake_vision wake_vision           train_quality    test           newer person / no-person set
=========== ===================== ================ ============== ==============================

Flowers: the predecessor trains on the 1 020 ``trnid`` images only; pass
``split='train+validation'`` to train on both official training folds. Any tfds split string
(``'train[:10%]'``) is accepted.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How one of the papers' datasets is read."""

  tfds_name: str | None  # tensorflow-datasets builder name; None when tfds does not provide it
  train_split: str  # tfds split used for fine-tuning
  test_split: str  # tfds split on which the final top-1 is reported
  num_classes: int  # size of the new classifier head (epochs: ``trady_jax.paper.epochs``)
  image_key: str = "image"  # feature holding the image
  label_key: str = "label"  # feature holding the class id
  protocol: str = "standard"  # transform family: 'standard' (crop + jitter) or 'resize' (VWW)


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec("cifar10", "train", "test", 10),
    "cifar100": DatasetSpec("cifar100", "train", "test", 100),
    "cub200": DatasetSpec("caltech_birds2011", "train", "test", 200),
    "flowers102": DatasetSpec("oxford_flowers102", "train", "test", 102),
    "food101": DatasetSpec("food101", "train", "validation", 101),
    "pets": DatasetSpec("oxford_iiit_pet", "train", "test", 37),
    "vww": DatasetSpec(None, "train", "test", 2, protocol="resize"),
    "wake_vision": DatasetSpec("wake_vision", "train_quality", "test", 2,
                               label_key="person", protocol="resize"),
}


def dataset_spec(name: str) -> DatasetSpec:
  """The :data:`DATASETS` entry of ``name``, with a helpful error for unknown names."""
  try:
    return DATASETS[name]
  except KeyError:
    raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def tfds_split(spec: DatasetSpec, split: str) -> str:
  """Our ``'train'``/``'test'`` -> the tfds split; any other string is passed to tfds unchanged."""
  return {"train": spec.train_split, "test": spec.test_split}.get(split, split)


def as_rgb(image: np.ndarray) -> np.ndarray:
  """uint8 HW, HW1 or HWC(3/4) -> uint8 HW3."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  return image[..., :3]


class DataUnavailableError(FileNotFoundError):
  """A dataset is neither prepared locally nor obtainable here; the message says how to get it."""


def open_data_source(tfds_name: str, split: str, data_dir: str | os.PathLike | None = None,
                     download: bool = False):
  """``tfds.data_source`` of a split in ArrayRecord; :class:`DataUnavailableError` saying how to
  prepare it when it is not there."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    return tfds.data_source(tfds_name, split=split,
                            data_dir=None if data_dir is None else os.fspath(data_dir),
                            download=download, builder_kwargs={"file_format": "array_record"})
  except Exception as e:  # tfds raises several types for "not prepared"; report them uniformly
    where = data_dir or "the default tfds data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
    raise DataUnavailableError(
        f"cannot open tfds dataset {tfds_name!r} split {split!r} from {where}"
        f"{' (download=True)' if download else ''}: {type(e).__name__}: {e}\n"
        f"Prepare it once on a machine with network access: `tfds build {tfds_name} "
        "--file_format=array_record --data_dir=DIR` (preparing some datasets needs TensorFlow), "
        "then pass data_dir=DIR; or pass download=True.") from e


class TfdsSource:
  """A tfds split read with ``tfds.data_source`` (ArrayRecord, random access, no TensorFlow).

  Args:
    name: one of :data:`DATASETS` with a tfds builder.
    split: ``'train'``, ``'test'`` (mapped by the table) or any tfds split string.
    data_dir: tfds data directory; ``None`` uses tfds' default (``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``).
    download: let tfds download and prepare the dataset if it is missing (needs network; preparing
      some datasets needs TensorFlow, so prefer ``tfds build <name> --file_format=array_record``).
  """

  def __init__(self, name: str, split: str, *, data_dir: str | os.PathLike | None = None,
               download: bool = False):
    self.spec = dataset_spec(name)
    if self.spec.tfds_name is None:
      raise ValueError(f"{name!r} is not in tensorflow-datasets; open it as an image folder")
    self.name, self.split = name, tfds_split(self.spec, split)
    self.protocol = self.spec.protocol
    self._ds = open_data_source(self.spec.tfds_name, self.split, data_dir, download)
    label = self._ds.dataset_info.features[self.spec.label_key]
    self.num_classes = int(label.num_classes)
    self.class_names = tuple(label.names)

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    example = self._ds[int(index)]
    return as_rgb(example[self.spec.image_key]), int(example[self.spec.label_key])

  def __repr__(self) -> str:
    return f"TfdsSource({self.spec.tfds_name!r}, split={self.split!r}, {len(self)} examples)"
