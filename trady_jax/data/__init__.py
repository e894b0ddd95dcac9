"""Data for fine-tuning: the papers' datasets and transforms, and a deterministic batch loader.

    from trady_jax import data
    train = data.open_dataset("cifar10", "train")       # tfds, else the offline copy
    for batch in data.batches(train, 32, train=True, seed=0, epoch=3):
      ...  # batch["image"]: float32 (32, 128, 128, 3) in [-1, 1], batch["label"]: int32 (32,)
"""

from trady_jax.data import transforms
from trady_jax.data.loader import batches, default_workers, epoch_order, steps_per_epoch
from trady_jax.data.sources import (CIFAR10_CLASSES, DATASETS, VWW_HELP, DataUnavailableError,
                                    DatasetSpec, ImageFolderSource, Source, Subset,
                                    SyntheticSource, TfdsSource, balanced_subset, cifar10_offline,
                                    dataset_spec, find_cifar10_archive, image_folder, open_dataset,
                                    synthetic, vww)
from trady_jax.data.transforms import (IMAGE_SIZE, TransformConfig, eval_transform, example_rng,
                                       make_transform, train_transform)
from trady_jax.data.text import (TEXT_DATASETS, GlueSource, SyntheticTextSource, TextTokenizer,
                                 is_text_dataset, open_text_dataset)

__all__ = [
    "CIFAR10_CLASSES", "DATASETS", "IMAGE_SIZE", "VWW_HELP", "DataUnavailableError", "DatasetSpec",
    "GlueSource", "ImageFolderSource", "Source", "Subset", "SyntheticSource",
    "SyntheticTextSource", "TEXT_DATASETS", "TextTokenizer", "TfdsSource", "TransformConfig",
    "balanced_subset", "batches", "cifar10_offline", "dataset_spec", "default_workers",
    "epoch_order", "eval_transform", "example_rng", "find_cifar10_archive", "image_folder",
    "is_text_dataset", "make_transform", "open_dataset", "open_text_dataset", "steps_per_epoch",
    "synthetic", "train_transform",
    "transforms", "vww",
]
