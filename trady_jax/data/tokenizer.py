"""A checkpoint's own tokenizer, read from its folder with Hugging Face's ``tokenizers`` library.

The papers fine-tune BERT-base and RoBERTa-base on GLUE QNLI, RTE and SST-2 (method-spec 11, TraDy
Table 4, MeDyate A.1). Their text goes in as one int32 array of token ids of ``max_length``
(default 128): ``[CLS] a [SEP] b [SEP] [PAD] ...`` for BERT, ``<s> a </s></s> b </s> <pad> ...``
for RoBERTa. The model derives the rest from the ids: attention mask ``ids != pad_id``, BERT token
types 1 after the first separator. Pairs too long are cut longest-first, as Hugging Face does.

A folder is read as the ``transformers`` tokenizers of the same checkpoint are built:

* ``tokenizer.json`` when present (the full pipeline, as saved);
* else ``vocab.txt``: BERT WordPiece (BERT normaliser, lower-cased per ``tokenizer_config.json``
  ``do_lower_case``, default True as for bert-base-uncased; accents stripped as ``strip_accents``,
  default: when lower-casing);
* else ``vocab.json`` + ``merges.txt``: RoBERTa byte-level BPE (``add_prefix_space`` default False).

Special tokens are those of ``tokenizer_config.json`` / ``special_tokens_map.json``, else the
family's (``[CLS] [SEP] [PAD]`` or ``<s> </s> <pad>``).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np

MAX_LENGTH = 128  # tokens per example (the papers' sequence length for GLUE)
INSTALL = 'pip install -e ".[text]"'
_FAMILIES = {  # family -> (cls, sep, pad, unk, mask)
    "bert": ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"),
    "roberta": ("<s>", "</s>", "<pad>", "<unk>", "<mask>"),
}


class TokenizerError(ValueError):
  """A tokenizer folder that cannot be read; the message says what it holds and needs."""


def _tokenizers():
  try:
    import tokenizers  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"text data needs Hugging Face's `tokenizers`: {INSTALL}") from e
  return tokenizers


def _read_json(path: Path) -> dict:
  if not path.is_file():
    return {}
  try:
    value = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise TokenizerError(f"{path}: not readable JSON ({e})") from e
  return value if isinstance(value, dict) else {}


def _token_name(value) -> str | None:
  """A special token as written in the config files: a string or ``{"content": ...}``."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) else None


def has_tokenizer_files(folder: str | os.PathLike) -> bool:
  """Whether ``folder`` holds ``tokenizer.json``, ``vocab.txt`` or ``vocab.json`` + merges."""
  folder = Path(folder).expanduser()
  return ((folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()
          or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()))


def _wordpiece(tk, vocab_file: Path, config: dict, specials: tuple[str, ...]):
  """BERT's pipeline, as ``transformers.BertTokenizer`` builds it from ``vocab.txt``."""
  with open(vocab_file, encoding="utf-8") as f:
    vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
  cls, sep, _, unk, _ = specials
  tok = tk.Tokenizer(tk.models.WordPiece(vocab, unk_token=unk))
  tok.normalizer = tk.normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=config.get("tokenize_chinese_chars", True),
      strip_accents=config.get("strip_accents"), lowercase=config.get("do_lower_case", True))
  tok.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
  tok.decoder = tk.decoders.WordPiece(prefix="##")
  tok.post_processor = tk.processors.TemplateProcessing(
      single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
      special_tokens=[(cls, vocab.get(cls, 2)), (sep, vocab.get(sep, 3))])
  return tok


def _byte_level_bpe(tk, vocab_file: Path, merges_file: Path, config: dict,
                    specials: tuple[str, ...]):
  """RoBERTa's pipeline, as ``transformers.RobertaTokenizer`` builds it from vocab + merges."""
  vocab, merges = tk.models.BPE.read_file(os.fspath(vocab_file), os.fspath(merges_file))
  tok = tk.Tokenizer(tk.models.BPE(vocab, merges, dropout=None, continuing_subword_prefix="",
                                   end_of_word_suffix="", fuse_unk=False))
  prefix_space = bool(config.get("add_prefix_space", False))
  trim = bool(config.get("trim_offsets", True))
  tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
  tok.decoder = tk.decoders.ByteLevel()
  cls, sep = specials[:2]
  tok.post_processor = tk.processors.RobertaProcessing(
      (sep, vocab.get(sep, 2)), (cls, vocab.get(cls, 0)), trim_offsets=trim,
      add_prefix_space=prefix_space)
  return tok


class TextTokenizer:
  """The tokenizer of a checkpoint folder: ``encode_pair(a, b, max_length) -> int32 ids``.

  Attributes: ``family`` ('bert' or 'roberta', from the special tokens), ``cls_id``, ``sep_id``,
  ``pad_id``, ``special_ids`` (every special token's id), ``vocab_size``, ``folder``.
  """

  def __init__(self, folder: str | os.PathLike):
    tk = _tokenizers()
    self.folder = Path(folder).expanduser()
    if not self.folder.is_dir():
      raise TokenizerError(f"tokenizer folder {self.folder} does not exist")
    config = _read_json(self.folder / "tokenizer_config.json")
    named = {**_read_json(self.folder / "special_tokens_map.json"), **config}
    files = ("tokenizer.json", "vocab.txt", "vocab.json")
    if (self.folder / "tokenizer.json").is_file():
      tok = tk.Tokenizer.from_file(os.fspath(self.folder / "tokenizer.json"))
      vocab = tok.get_vocab(with_added_tokens=True)
      self.family = "bert" if "[CLS]" in vocab or "[SEP]" in vocab else "roberta"
    elif (self.folder / "vocab.txt").is_file():
      self.family = "bert"
    elif (self.folder / "vocab.json").is_file() and (self.folder / "merges.txt").is_file():
      self.family = "roberta"
    else:
      raise TokenizerError(f"{self.folder} holds no tokenizer: expected {files[0]}, {files[1]} "
                           f"(BERT) or {files[2]} + merges.txt (RoBERTa)")
    specials = tuple(_token_name(named.get(f"{k}_token")) or default for k, default in
                     zip(("cls", "sep", "pad", "unk", "mask"), _FAMILIES[self.family]))
    if not (self.folder / "tokenizer.json").is_file():
      tok = (_wordpiece(tk, self.folder / "vocab.txt", config, specials) if self.family == "bert"
             else _byte_level_bpe(tk, self.folder / "vocab.json", self.folder / "merges.txt",
                                  config, specials))
      present = [t for t in dict.fromkeys(specials) if tok.token_to_id(t) is not None]
      tok.add_special_tokens([tk.AddedToken(t, special=True, normalized=False,
                                            lstrip=t == "<mask>") for t in present])
    tok.no_truncation()
    tok.no_padding()
    ids = [tok.token_to_id(t) for t in specials[:3]]
    missing = [t for t, i in zip(specials[:3], ids) if i is None]
    if missing:
      raise TokenizerError(f"{self.folder}: the vocabulary has no {', '.join(missing)}")
    self.cls_id, self.sep_id, self.pad_id = ids
    self.cls_token, self.sep_token, self.pad_token = specials[:3]
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
    self.special_ids = tuple(sorted(i for i, t in tok.get_added_tokens_decoder().items()
                                    if t.special))
    self._base = tok
    self._by_length: dict[int, object] = {}
    self._lock = threading.Lock()

  def _configured(self, max_length: int):
    """A copy of the pipeline that truncates (longest first) and pads to ``max_length``."""
    with self._lock:
      tok = self._by_length.get(max_length)
      if tok is None:
        tok = type(self._base).from_str(self._base.to_str())
        tok.enable_truncation(max_length, strategy="longest_first")
        tok.enable_padding(length=max_length, pad_id=self.pad_id, pad_token=self.pad_token)
        self._by_length[max_length] = tok
    return tok

  def encode_pair(self, a: str, b: str | None = None,
                  max_length: int = MAX_LENGTH) -> np.ndarray:
    """int32 ``(max_length,)`` ids of ``a`` (and ``b``) with the family's special tokens, cut
    longest-first and padded with ``pad_id``."""
    return self.encode_pairs([a], None if b is None else [b], max_length)[0]

  def encode_pairs(self, a: list[str], b: list[str] | None = None,
                   max_length: int = MAX_LENGTH) -> np.ndarray:
    """int32 ``(len(a), max_length)``: :meth:`encode_pair` of many, in one parallel call."""
    if max_length < (4 if b is not None else 2):
      raise ValueError(f"max_length {max_length} leaves no room for the text")
    inputs = list(a) if b is None else list(zip(a, b))
    encodings = self._configured(int(max_length)).encode_batch(inputs)
    return np.asarray([e.ids for e in encodings], np.int32).reshape(len(inputs), max_length)

  def __repr__(self) -> str:
    return f"TextTokenizer({str(self.folder)!r}, {self.family}, {self.vocab_size} tokens)"
