"""The named networks and their builders: ``build_model(name, num_classes)`` -> Flax module.

Names: the papers' MCU networks ``'mbv2-w0.35'``, ``'mcunet-in1'``, ``'proxyless-w0.3'``
(method-spec 8), built from the shipped arch-only descriptions ``arch/*.json``, the generic
``'resnet18'``, ``'resnet50'``, ``'mobilenetv2'`` (torchvision / timm checkpoints), and the
transformers of the papers' appendices, ``'swin-t'``, ``'bert-base'``, ``'roberta-base'``, with
``'vit-b16'`` (Hugging Face / timm checkpoints; ``models.transformer``). Weights: ``store`` finds
and downloads them, ``load`` puts them in.
"""

from __future__ import annotations

import importlib
import warnings

import flax.linen as nn

import jax
import jax.numpy as jnp

from trady_jax.models import mcunet, mobilenetv2, resnet
from trady_jax.models.formats import int8
from trady_jax.models.transformer import bert, swin, vit

# name: (MCUNet model-zoo id, feature-mix channels to add when the int8 description lacks it)
MCU_NETS = {"mbv2-w0.35": ("mbv2-w0.35-r144_imagenet", 448),
            "mcunet-in1": ("mcunet-5fps_imagenet", None),
            "proxyless-w0.3": ("proxyless-w0.3-r176_imagenet", 384)}
GENERIC = ("resnet18", "resnet50", "mobilenetv2")
# Text models take one int32 array of token ids (``models.transformer.bert``).
TEXT = {"bert-base": bert.bert_base, "roberta-base": bert.roberta_base}
VISION_TRANSFORMERS = {"vit-b16": vit.vit_b16, "swin-t": swin.swin_t}
TRANSFORMERS = tuple(TEXT) + tuple(VISION_TRANSFORMERS)
NAMES = tuple(MCU_NETS) + GENERIC + TRANSFORMERS
# Loaders this module held before ``load`` and ``store`` (reached through ``__getattr__``).
_MOVED = {"load_model": "load", "load_network": "load", "Network": "load",
          "find_weights": "store", "download_weights": "store", "WeightFiles": "store"}


def check_name(name: str) -> None:
  """``KeyError`` listing the known names unless ``name`` is one of ``NAMES``."""
  if name not in NAMES:
    raise KeyError(f"unknown model {name!r}; known: {list(NAMES)}")


def build_model(name: str, num_classes: int = 1000, *, feature_mix: bool = True,
                bn: str = "folded", image_size: int = 224) -> nn.Module:
  """The architecture only (no weights); MCU nets come from the shipped ``arch/*.json`` (the
  papers' architecture: with the feature-mix conv unless ``feature_mix=False``). ``image_size``:
  the input resolution a vision transformer is built for (its position embeddings and windows);
  transformers have LayerNorm, no BatchNorm, and ignore ``bn``.

  >>> build_model("resnet18", 10).num_classes
  10
  >>> build_model("bert-base", 2).config.layers
  12
  """
  check_name(name)
  if name in TEXT:
    return bert.TextClassifier(TEXT[name](num_classes))
  if name in VISION_TRANSFORMERS:
    return VISION_TRANSFORMERS[name](num_classes, image_size)
  if name in MCU_NETS:
    fm = MCU_NETS[name][1] if feature_mix else None
    return mcunet.MCUNet(int8.spec_from_description(int8.load_arch(name), feature_mix=fm),
                         num_classes, bn=bn)
  if name == "mobilenetv2":
    return mobilenetv2.mobilenetv2(num_classes).clone(bn=bn)
  return resnet.resnet(name, num_classes).clone(bn=bn)


def bn_mode(name: str, bn: str) -> str:
  """The BatchNorm mode network ``name`` runs in under ``--bn bn``: ``'none'`` for the
  transformers (LayerNorm only), else ``bn``; what run records and ranking keys say.

  >>> bn_mode("swin-t", "train"), bn_mode("mbv2-w0.35", "train")
  ('none', 'train')
  """
  return "none" if name in TRANSFORMERS else bn


def example_input(name: str, size: int) -> jax.ShapeDtypeStruct:
  """The shape of one input of network ``name``: ``(1, size)`` int32 token ids for a text model
  (``size`` tokens), else (any other name) a ``(1, size, size, 3)`` float32 image.

  >>> example_input("bert-base", 128).shape, example_input("mbv2-w0.35", 128).shape
  ((1, 128), (1, 128, 128, 3))
  """
  if name in TEXT:
    return jax.ShapeDtypeStruct((1, size), jnp.int32)
  return jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)


def __getattr__(name: str):
  """``registry.load_model`` and the other loaders that lived here: still found, with a
  ``DeprecationWarning`` naming their home (``trady_jax.models.load_model``, ...)."""
  if name not in _MOVED:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  warnings.warn(f"trady_jax.models.registry.{name} is now trady_jax.models.{name}",
                DeprecationWarning, stacklevel=2)
  return getattr(importlib.import_module(f"trady_jax.models.{_MOVED[name]}"), name)
