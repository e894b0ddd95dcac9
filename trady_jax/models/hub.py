"""The transformers' pretrained checkpoints: Hugging Face folders found on disk or downloaded.

A checkpoint is a folder holding ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``
(read without PyTorch by ``formats.files``), and for text models the tokenizer files
(``tokenizer.json`` or ``vocab.txt`` / ``vocab.json`` + ``merges.txt``) the GLUE data use. It is
looked for in ``weights_dir`` itself, then in ``<dir>/<name>`` for every weight directory
``store.search_dirs`` lists (the cache last); ``download=True`` fetches the public checkpoint
``HUB_IDS[name]`` into the cache with ``huggingface_hub`` (``pip install huggingface_hub``).
"""

from __future__ import annotations

from pathlib import Path

from trady_jax import paths
from trady_jax.models import store
from trady_jax.models.formats import files, hf_text, hf_vision
from trady_jax.models.registry import TEXT, TRANSFORMERS

# The public checkpoints of the papers' appendix models (method-spec 8 names no variant; these
# are the common base ones) and of ViT-B/16.
HUB_IDS = {"bert-base": "google-bert/bert-base-uncased", "roberta-base": "FacebookAI/roberta-base",
           "vit-b16": "google/vit-base-patch16-224",
           "swin-t": "microsoft/swin-tiny-patch4-window7-224"}
MODEL_TYPES = {"bert-base": "bert", "roberta-base": "roberta", "vit-b16": "vit", "swin-t": "swin"}
_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
          "vocab.txt", "vocab.json", "merges.txt", "special_tokens_map.json"]


def _is_checkpoint(d: Path) -> bool:
  return (d / "config.json").is_file() and any(
      (d / f).is_file() for f in ("model.safetensors", "pytorch_model.bin",
                                  "model.safetensors.index.json", "pytorch_model.bin.index.json"))


def find_checkpoint(name: str, weights_dir: str | Path | None = None) -> Path | None:
  """The checkpoint folder of transformer ``name``, or None.

  >>> find_checkpoint("bert-base", "/nonexistent") is None
  True
  """
  if name not in TRANSFORMERS:
    raise KeyError(f"{name!r} is not a transformer; known: {list(TRANSFORMERS)}")
  candidates = [Path(weights_dir)] if weights_dir else []
  candidates += [d / name for d in store.search_dirs(weights_dir)]
  return next((d for d in candidates if _is_checkpoint(d)), None)


def download_checkpoint(name: str, cache: str | Path | None = None) -> Path:
  """Fetch ``HUB_IDS[name]`` (weights as safetensors, config, tokenizer) into ``<cache>/<name>``."""
  try:
    from huggingface_hub import snapshot_download
  except ImportError as err:
    raise ImportError(f"downloading {HUB_IDS[name]} needs huggingface_hub: "
                      "pip install huggingface_hub (or put the checkpoint folder in a "
                      "weights directory by hand)") from err
  dest = Path(cache or paths.cache_dir()) / name
  try:
    snapshot_download(HUB_IDS[name], local_dir=dest, allow_patterns=_FILES)
  except Exception as err:  # network and hub errors come in many types
    raise OSError(f"downloading {HUB_IDS[name]} failed: {err}; put the checkpoint folder in "
                  f"{dest} by hand") from err
  return dest


def load_checkpoint(name: str, directory: str | Path, num_classes: int, *, image_size: int = 224,
                    seed: int = 0):
  """``(module, params)`` of transformer ``name`` from a checkpoint folder, with a fresh
  classifier head for ``num_classes`` when the checkpoint has none (or, for ViT / Swin, another
  class count); a checkpoint of another model type is a ``ValueError``."""
  directory = Path(directory)
  kind = files.read_json(directory / "config.json").get("model_type")
  if kind != MODEL_TYPES[name]:
    raise ValueError(f"{directory} holds a {kind!r} checkpoint, not {name} "
                     f"({MODEL_TYPES[name]!r})")
  if name in TEXT:
    return hf_text.load_hf_text(directory, num_classes)
  loaded = hf_vision.load_hf_vision(directory, num_classes, image_size=image_size, seed=seed)
  return loaded.module, loaded.params
