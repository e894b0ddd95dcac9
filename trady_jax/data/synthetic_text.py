"""Generated text for runs with neither network nor data: token ids whose label is learnable.

The stand-in for the papers' GLUE tasks (method-spec 11) when none is at hand. Every class owns a
few *marker* tokens; an example is a pair of random-length segments of random filler tokens with
one to three markers of its class at random places, laid out as the checkpoint family lays out a
pair (``[CLS] a [SEP] b [SEP] [PAD] ...`` or ``<s> a </s></s> b </s> <pad> ...``). A bag of tokens
separates the classes, so a transformer learns them within a few epochs. Examples are generated on
access from ``(seed, split, index)``: nothing is stored; labels alternate, so classes are balanced.

Without a tokenizer the ids follow a generated vocabulary laid out as the checkpoints' (BERT:
``[PAD]`` 0, ``[UNK]`` 100, ``[CLS]`` 101, ``[SEP]`` 102, ``[MASK]`` 103; RoBERTa: ``<s>`` 0,
``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<mask>`` 4), so a model with a real checkpoint's special
ids reads them right; :func:`write_generated_vocab` writes the BERT one as a ``vocab.txt``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from trady_jax.data.synthetic import GeneratedExamples
from trady_jax.data.tokenizer import MAX_LENGTH, TextTokenizer

GENERATED_VOCAB_SIZE = 1000  # fits the embedding table of any BERT / RoBERTa checkpoint
GENERATED_SPECIALS = {  # family -> {token role: id}, as in bert-base-uncased and roberta-base
    "bert": {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103},
    "roberta": {"cls": 0, "pad": 1, "sep": 2, "unk": 3, "mask": 4},
}


def generated_vocab(vocab_size: int = GENERATED_VOCAB_SIZE) -> list[str]:
  """BERT's layout: ``[PAD]``, ``[unused0..98]``, ``[UNK] [CLS] [SEP] [MASK]``, then ``w104``..."""
  if vocab_size < 120:
    raise ValueError(f"vocab_size must be >= 120, got {vocab_size}")
  return (["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
          + [f"w{i}" for i in range(104, vocab_size)])


def write_generated_vocab(folder: str | os.PathLike,
                          vocab_size: int = GENERATED_VOCAB_SIZE) -> Path:
  """Write :func:`generated_vocab` as ``folder/vocab.txt`` (a BERT tokenizer folder); ``folder``."""
  folder = Path(folder).expanduser()
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "vocab.txt").write_text("\n".join(generated_vocab(vocab_size)) + "\n",
                                    encoding="utf-8")
  return folder


class SyntheticTextSource(GeneratedExamples):
  """``num_examples`` generated pairs; ``src[i] -> (int32 (max_length,) ids, i % num_classes)``.

  Args:
    num_examples, num_classes: size and classes (labels alternate: balanced).
    max_length: tokens per example.
    seed: fixes the class markers (shared by the splits) and every example.
    split: ``'train'`` or ``'test'``: same classes, different examples.
    tokenizer: take the family, special ids and vocabulary size from this checkpoint tokenizer
      (or its folder); ``None``: the generated vocabulary of ``family`` and ``vocab_size``.
    markers_per_class: marker tokens owned by each class.
  """

  protocol = "text"

  def __init__(self, num_examples: int = 2000, num_classes: int = 2, *,
               max_length: int = MAX_LENGTH, seed: int = 0, split: str = "train",
               tokenizer: TextTokenizer | str | os.PathLike | None = None, family: str = "bert",
               vocab_size: int = GENERATED_VOCAB_SIZE, markers_per_class: int = 4):
    self.check_split(split)
    if num_examples < 1 or num_classes < 1 or max_length < 16:
      raise ValueError(f"need num_examples >= 1, num_classes >= 1, max_length >= 16; got "
                       f"{num_examples}, {num_classes}, {max_length}")
    if tokenizer is not None and not isinstance(tokenizer, TextTokenizer):
      tokenizer = TextTokenizer(tokenizer)
    if tokenizer is not None:
      family, vocab_size = tokenizer.family, tokenizer.vocab_size
      self.cls_id, self.sep_id, self.pad_id = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
      specials = tokenizer.special_ids
    elif family in GENERATED_SPECIALS:
      ids = GENERATED_SPECIALS[family]
      self.cls_id, self.sep_id, self.pad_id = ids["cls"], ids["sep"], ids["pad"]
      specials = tuple(range(104)) if family == "bert" else tuple(ids.values())  # [unusedN] too
    else:
      raise ValueError(f"unknown family {family!r}; expected one of {sorted(GENERATED_SPECIALS)}")
    self.family, self.vocab_size = family, int(vocab_size)
    self.num_examples, self.num_classes = int(num_examples), int(num_classes)
    self.max_length, self.seed, self.split = int(max_length), int(seed), split
    self.class_names = tuple(f"class_{c}" for c in range(self.num_classes))
    self.labels = np.arange(self.num_examples, dtype=np.int64) % self.num_classes
    words = np.setdiff1d(np.arange(self.vocab_size), np.asarray(specials, np.int64))
    if len(words) < 2 * num_classes * markers_per_class:
      raise ValueError(f"a vocabulary of {len(words)} ordinary tokens is too small for "
                       f"{num_classes} x {markers_per_class} markers and fillers")
    rng = np.random.default_rng([self.seed, 0, 0, 0])  # markers, shared by the splits
    chosen = rng.choice(words, size=(num_classes, markers_per_class), replace=False)
    self.markers = chosen.astype(np.int32)  # (num_classes, markers_per_class)
    self._fillers = np.setdiff1d(words, chosen.ravel()).astype(np.int32)
    self._separator = [self.sep_id] * (2 if family == "roberta" else 1)  # between a and b

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    label, rng = self.example(index)
    room = self.max_length - 2 - len(self._separator)  # [CLS] a SEP b [SEP]
    n_a = int(rng.integers(4, room // 2 + 1))
    n_b = int(rng.integers(4, room - n_a + 1))
    text = rng.choice(self._fillers, size=n_a + n_b)
    places = rng.choice(n_a + n_b, size=int(rng.integers(1, 4)), replace=False)
    text[places] = rng.choice(self.markers[label], size=len(places))
    ids = np.full(self.max_length, self.pad_id, np.int32)
    tokens = [self.cls_id, *text[:n_a], *self._separator, *text[n_a:], self.sep_id]
    ids[:len(tokens)] = tokens
    return ids, label

  def __repr__(self) -> str:
    return (f"SyntheticTextSource({self.num_examples} examples, {self.num_classes} classes, "
            f"{self.family} layout, max_length={self.max_length}, seed={self.seed}, "
            f"split={self.split!r})")
