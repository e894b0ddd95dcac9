"""The named networks and their builders: ``build_model(name, num_classes)`` -> Flax module.

Names: the papers' MCU networks ``'mbv2-w0.35'``, ``'mcunet-in1'``, ``'proxyless-w0.3'``
(method-spec 8), built from the shipped arch-only descriptions ``arch/*.json``, and the generic
``'resnet18'``, ``'resnet50'``, ``'mobilenetv2'`` (torchvision / timm checkpoints). Weights:
``store`` finds and downloads them, ``load`` puts them in.
"""

from __future__ import annotations

import importlib
import warnings

import flax.linen as nn

from trady_jax.models import mcunet, mobilenetv2, resnet
from trady_jax.models.formats import int8

# name: (MCUNet model-zoo id, feature-mix channels to add when the int8 description lacks it)
MCU_NETS = {"mbv2-w0.35": ("mbv2-w0.35-r144_imagenet", 448),
            "mcunet-in1": ("mcunet-5fps_imagenet", None),
            "proxyless-w0.3": ("proxyless-w0.3-r176_imagenet", 384)}
GENERIC = ("resnet18", "resnet50", "mobilenetv2")
NAMES = tuple(MCU_NETS) + GENERIC
# Loaders this module held before ``load`` and ``store`` (reached through ``__getattr__``).
_MOVED = {"load_model": "load", "load_network": "load", "Network": "load",
          "find_weights": "store", "download_weights": "store", "WeightFiles": "store"}


def check_name(name: str) -> None:
  """``KeyError`` listing the known names unless ``name`` is one of ``NAMES``."""
  if name not in NAMES:
    raise KeyError(f"unknown model {name!r}; known: {list(NAMES)}")


def build_model(name: str, num_classes: int = 1000, *, feature_mix: bool = True,
                bn: str = "folded") -> nn.Module:
  """The architecture only (no weights); MCU nets come from the shipped ``arch/*.json`` (the
  papers' architecture: with the feature-mix conv unless ``feature_mix=False``).

  >>> build_model("resnet18", 10).num_classes
  10
  """
  check_name(name)
  if name in MCU_NETS:
    fm = MCU_NETS[name][1] if feature_mix else None
    return mcunet.MCUNet(int8.spec_from_description(int8.load_arch(name), feature_mix=fm),
                         num_classes, bn=bn)
  if name == "mobilenetv2":
    return mobilenetv2.mobilenetv2(num_classes).clone(bn=bn)
  return resnet.resnet(name, num_classes).clone(bn=bn)


def __getattr__(name: str):
  """``registry.load_model`` and the other loaders that lived here: still found, with a
  ``DeprecationWarning`` naming their home (``trady_jax.models.load_model``, ...)."""
  if name not in _MOVED:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  warnings.warn(f"trady_jax.models.registry.{name} is now trady_jax.models.{name}",
                DeprecationWarning, stacklevel=2)
  return getattr(importlib.import_module(f"trady_jax.models.{_MOVED[name]}"), name)
