"""Hugging Face BERT / RoBERTa checkpoints -> ``transformer.bert.TextClassifier`` parameters.

Reads what users have: a checkpoint folder (``config.json`` with ``model.safetensors`` or
``pytorch_model.bin``, sharded or not) through the project's safe readers (``files``: no code runs,
no PyTorch needed). Keys of ``BertForSequenceClassification`` / ``RobertaForSequenceClassification``
map one to one onto the Flax tree (Linear weights transposed to ``(in, out)``); the encoder may
come with or without its ``bert.`` / ``roberta.`` prefix (a plain ``BertModel``).

A checkpoint without a sequence-classification head (``BertModel``, ``RobertaModel``, the
pretraining checkpoints ``bert-base-uncased`` / ``roberta-base``) gets the missing ``classifier``
leaves drawn fresh as Hugging Face initialises them (kernels normal(0, 0.02), biases zero); BERT's
pooler still comes from the checkpoint when it holds one. The pretraining heads (``cls.*``,
``lm_head.*``), RoBERTa's unused pooler and the ``position_ids`` / ``token_type_ids`` buffers are
ignored; any other key is an error, as is a missing encoder key or a shape that does not match
the model (``jax.eval_shape`` of its init).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from trady_jax import selection as sel
from trady_jax.models.formats import files
from trady_jax.models.params import check_params, nest
from trady_jax.models.transformer.bert import TextClassifier, TextConfig

# Keys that carry nothing the classifier uses (matched after the bert. / roberta. prefix).
IGNORED = (r"^cls\.", r"^lm_head\.", r"(^|\.)position_ids$", r"(^|\.)token_type_ids$")
_SHAPE_KEYS = {"vocab_size": "vocab_size", "hidden": "hidden_size",
               "layers": "num_hidden_layers", "heads": "num_attention_heads",
               "intermediate": "intermediate_size", "max_positions": "max_position_embeddings"}


def config_from_hf(hf: Mapping[str, Any], num_classes: int | None = None,
                   **overrides) -> TextConfig:
  """A ``TextConfig`` from a Hugging Face ``config.json`` dict (``model_type`` bert / roberta).

  ``num_classes``: else the checkpoint's ``num_labels`` / ``id2label``, else 2. The separator is
  ``sep_token_id`` (RoBERTa: ``eos_token_id``) when given, else the flavor's (102, 2); missing
  optional keys take Hugging Face's defaults. ``overrides``: ``TextConfig`` fields.

  >>> c = config_from_hf({"model_type": "roberta", "vocab_size": 50265, "hidden_size": 768,
  ...     "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
  ...     "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-05,
  ...     "pad_token_id": 1, "eos_token_id": 2})
  >>> from trady_jax.models.transformer.bert import roberta_base
  >>> c == roberta_base(2)
  True
  """
  flavor = hf.get("model_type")
  if flavor not in ("bert", "roberta"):
    raise ValueError(f"model_type {flavor!r} is not a BERT or RoBERTa checkpoint")
  missing = [k for k in _SHAPE_KEYS.values() if k not in hf]
  if missing:
    raise ValueError(f"the {flavor} config lacks {missing}")
  if hf.get("hidden_act", "gelu") != "gelu":
    raise ValueError(f"hidden_act {hf['hidden_act']!r}: only the exact 'gelu' is implemented")
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"position_embedding_type {hf['position_embedding_type']!r}: only "
                     "'absolute' is implemented")
  sep = _named_separator(hf)
  if num_classes is None:
    num_classes = hf.get("num_labels") or len(hf.get("id2label") or {}) or 2
  fields = {ours: int(hf[theirs]) for ours, theirs in _SHAPE_KEYS.items()}
  fields.update(
      type_vocab_size=int(hf.get("type_vocab_size", 2)),
      layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
      pad_token_id=int(hf.get("pad_token_id", 0 if flavor == "bert" else 1)),
      sep_token_id=int(sep if sep is not None else (102 if flavor == "bert" else 2)),
      flavor=flavor, num_classes=int(num_classes))
  fields.update(overrides)
  return TextConfig(**fields)


def hf_names(config: TextConfig) -> dict[str, tuple[str, bool]]:
  """``{Flax leaf path: (Hugging Face key, base-model key?)}`` for ``config``. Base-model keys
  carry the ``bert.`` / ``roberta.`` prefix in a sequence-classification checkpoint."""
  names: dict[str, tuple[str, bool]] = {}

  def add(flax: str, hf: str, kind: str, base: bool = True) -> None:
    leaves = {"linear": (("kernel", "weight"), ("bias", "bias")),
              "norm": (("scale", "weight"), ("bias", "bias")),
              "embed": (("embedding", "weight"),)}[kind]
    for ours, theirs in leaves:
      names[f"{flax}/{ours}"] = (f"{hf}.{theirs}", base)

  for table in ("word", "position", "token_type"):
    add(f"{table}_embeddings", f"embeddings.{table}_embeddings", "embed")
  add("embeddings_norm", "embeddings.LayerNorm", "norm")
  for i in range(config.layers):
    ours, theirs = f"layers_{i}", f"encoder.layer.{i}"
    for p in ("query", "key", "value"):
      add(f"{ours}/attention/{p}", f"{theirs}.attention.self.{p}", "linear")
    add(f"{ours}/attention/out", f"{theirs}.attention.output.dense", "linear")
    add(f"{ours}/attention_norm", f"{theirs}.attention.output.LayerNorm", "norm")
    add(f"{ours}/mlp/fc1", f"{theirs}.intermediate.dense", "linear")
    add(f"{ours}/mlp/fc2", f"{theirs}.output.dense", "linear")
    add(f"{ours}/mlp_norm", f"{theirs}.output.LayerNorm", "norm")
  if config.flavor == "bert":
    add("classifier/pooler", "pooler.dense", "linear")
    add("classifier/out", "classifier", "linear", base=False)
  else:
    add("classifier/pooler", "classifier.dense", "linear", base=False)
    add("classifier/out", "classifier.out_proj", "linear", base=False)
  return names


def param_shapes(config: TextConfig) -> dict:
  """``jax.ShapeDtypeStruct`` tree of ``TextClassifier(config)``'s parameters (nothing computed)."""
  ids = jax.ShapeDtypeStruct((1, min(8, config.max_tokens)), jnp.int32)
  return jax.eval_shape(lambda x: TextClassifier(config).init(jax.random.key(0), x), ids)["params"]


def convert_hf_text(state_dict: Mapping[str, Any], config: TextConfig, *, seed: int = 0) -> dict:
  """Flax parameters of ``TextClassifier(config)`` from a Hugging Face state dict.

  ``seed``: draws the head leaves a checkpoint without one lacks (module docstring).
  """
  sd = {re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight",
               re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)): v
        for k, v in files.normalise_keys(state_dict).items()}
  prefix = config.flavor + "."
  prefixed = any(k.startswith(prefix) for k in sd)
  reference = param_shapes(config)
  shapes = {sel.path_str(p): s.shape for p, s in jax.tree_util.tree_leaves_with_path(reference)}
  rng = np.random.default_rng(seed)
  flat, used, missing = {}, set(), []
  for path, (key, base) in hf_names(config).items():
    key = prefix + key if base and prefixed else key
    if key not in sd:
      if path.startswith("classifier/"):
        flat[path] = (rng.normal(0, 0.02, shapes[path]) if path.endswith("kernel")
                      else np.zeros(shapes[path])).astype(np.float32)
      else:
        missing.append(key)
      continue
    value = np.asarray(sd[key], np.float32)
    value = value.T if path.endswith("kernel") else value
    if value.shape != tuple(shapes[path]):
      raise ValueError(f"{key} of shape {np.shape(sd[key])} -> {path} {value.shape}, the "
                       f"{config.flavor} model expects {tuple(shapes[path])} (config: "
                       f"{_describe(config)})")
    flat[path] = value
    used.add(key)
  ignored = [k for k in sd if any(re.search(p, k.removeprefix(prefix)) for p in IGNORED)
             or (config.flavor == "roberta" and k.removeprefix(prefix).startswith("pooler."))]
  unexpected = sorted(set(sd) - used - set(ignored))
  if missing or unexpected:
    raise ValueError(f"the state dict does not match a {config.flavor} sequence classifier "
                     f"({_describe(config)}): missing {len(missing)} keys {missing[:6]}, "
                     f"unexpected {len(unexpected)} keys {unexpected[:6]}")
  params = nest({k: jnp.asarray(v) for k, v in flat.items()})
  check_params(params, reference, where=f"{config.flavor} weights")
  return params


def load_hf_text(directory: str | Path, num_classes: int | None = None,
                 **overrides) -> tuple[TextClassifier, dict]:
  """``(module, params)`` from a Hugging Face checkpoint folder: ``config.json`` and
  ``model.safetensors`` or ``pytorch_model.bin`` (or their sharded ``*.index.json``).

  ``num_classes`` and ``overrides``: as ``config_from_hf``; a separator the config does not name
  is looked up in the folder's tokenizer files (``tokenizer.json``, ``vocab.txt``) when present.
  """
  directory = Path(directory)
  if not (directory / "config.json").is_file():
    raise FileNotFoundError(f"{directory} holds no config.json: not a Hugging Face checkpoint")
  hf = files.read_json(directory / "config.json")
  if "sep_token_id" not in overrides and _named_separator(hf) is None:
    sep = separator_from_tokenizer(directory, hf.get("model_type"))
    overrides = overrides if sep is None else {**overrides, "sep_token_id": sep}
  config = config_from_hf(hf, num_classes, **overrides)
  return TextClassifier(config), convert_hf_text(read_checkpoint(directory), config)


def separator_from_tokenizer(directory: str | Path, flavor: str | None) -> int | None:
  """The id of ``[SEP]`` (BERT) or ``</s>`` (RoBERTa) in a checkpoint folder's ``tokenizer.json``
  or ``vocab.txt``; ``None`` when neither names it."""
  directory, token = Path(directory), "[SEP]" if flavor == "bert" else "</s>"
  if (directory / "tokenizer.json").is_file():
    tok = files.read_json(directory / "tokenizer.json")
    for added in tok.get("added_tokens") or ():
      if added.get("content") == token:
        return int(added["id"])
    vocab = (tok.get("model") or {}).get("vocab")
    if isinstance(vocab, dict) and token in vocab:
      return int(vocab[token])
  if (directory / "vocab.txt").is_file():
    lines = (directory / "vocab.txt").read_text(encoding="utf-8").splitlines()
    if token in lines:
      return lines.index(token)
  return None


def read_checkpoint(directory: str | Path) -> dict[str, np.ndarray]:
  """The state dict of a Hugging Face checkpoint folder, safetensors preferred, shards merged."""
  directory = Path(directory)
  for name in ("model.safetensors", "pytorch_model.bin"):
    if (directory / name).is_file():
      return files.load_state_dict(directory / name)
    index = directory / f"{name}.index.json"
    if index.is_file():
      shards = sorted(set(files.read_json(index).get("weight_map", {}).values()))
      if not shards or any(Path(s).name != s for s in shards):
        raise ValueError(f"{index}: expected a weight_map of file names in the same folder")
      sd: dict[str, np.ndarray] = {}
      for shard in shards:
        sd.update(files.load_state_dict(directory / shard))
      return sd
  raise FileNotFoundError(f"{directory} holds no model.safetensors or pytorch_model.bin "
                          "(nor a sharded index of them)")


def _named_separator(hf: Mapping[str, Any]) -> int | None:
  """The separator a config names: ``sep_token_id``, or RoBERTa's ``eos_token_id``."""
  sep = hf.get("sep_token_id")
  return hf.get("eos_token_id") if sep is None and hf.get("model_type") == "roberta" else sep


def _describe(config: TextConfig) -> str:
  return (f"hidden {config.hidden}, {config.layers} layers, vocabulary {config.vocab_size}, "
          f"{config.num_classes} classes")
