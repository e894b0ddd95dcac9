"""Text datasets by name: the papers' GLUE tasks (method-spec 11) and generated text.

    from trady_jax import data
    train = data.open_text_dataset("glue/rte", "train", tokenizer="checkpoints/bert-base-uncased")
    ids, label = train[0]  # int32 (128,): [CLS] sentence1 [SEP] sentence2 [SEP] [PAD] ...
    for batch in data.batches(train, 32, train=True, seed=0, epoch=0):
      ...  # batch["image"]: int32 (32, 128) token ids, batch["label"]: int32 (32,)

Modules: :mod:`~trady_jax.data.tokenizer` (a checkpoint's tokenizer files),
:mod:`~trady_jax.data.glue` (tfds GLUE), :mod:`~trady_jax.data.synthetic_text` (generated).
"""

from __future__ import annotations

import os

from trady_jax.data.glue import GLUE_TASKS, GlueSource
from trady_jax.data.synthetic_text import SyntheticTextSource
from trady_jax.data.tokenizer import MAX_LENGTH, TextTokenizer

SYNTHETIC_TEXT = "synthetic-text"
TEXT_DATASETS = (*GLUE_TASKS, SYNTHETIC_TEXT)
SYNTHETIC_TEXT_SIZES = {"train": 2000, "test": 500}  # generated examples per split


def is_text_dataset(name: str) -> bool:
  """Whether ``name`` is one of :data:`TEXT_DATASETS` (token ids, not images)."""
  return name in TEXT_DATASETS


def open_text_dataset(name: str, split: str,
                      tokenizer: TextTokenizer | str | os.PathLike | None = None, *,
                      max_length: int = MAX_LENGTH, data_dir: str | os.PathLike | None = None,
                      download: bool = False, **synthetic_kwargs):
  """Open ``split`` (``'train'`` / ``'test'``) of a text dataset as token ids.

  * ``'glue/qnli'``, ``'glue/rte'``, ``'glue/sst2'``: a :class:`GlueSource` (tfds; ``'test'`` is
    GLUE's validation split), tokenised by ``tokenizer`` (a checkpoint folder; required).
  * ``'synthetic-text'``: a :class:`SyntheticTextSource` (2 000 train / 500 test examples unless
    ``num_examples`` is given); with ``tokenizer``, in its family's layout and vocabulary.
  """
  if name == SYNTHETIC_TEXT:
    kwargs = {"num_examples": SYNTHETIC_TEXT_SIZES.get(split, 500), **synthetic_kwargs}
    return SyntheticTextSource(max_length=max_length, split=split, tokenizer=tokenizer, **kwargs)
  if synthetic_kwargs:
    raise TypeError(f"unexpected arguments for {name!r}: {sorted(synthetic_kwargs)}")
  if name not in GLUE_TASKS:
    raise KeyError(f"unknown text dataset {name!r}; known: {', '.join(TEXT_DATASETS)}")
  if tokenizer is None:
    raise ValueError(f"{name} needs the checkpoint's tokenizer: pass its folder (holding "
                     "tokenizer.json, vocab.txt, or vocab.json + merges.txt)")
  return GlueSource(name, split, tokenizer, max_length=max_length, data_dir=data_dir,
                    download=download)
