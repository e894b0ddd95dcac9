"""Networks to fine-tune: named architectures, their pretrained weights, and the loaders.

>>> from trady_jax import models
>>> "mbv2-w0.35" in models.NAMES
True

``load_network`` / ``load_model`` (``load``) give a named network with its weights;
``build_model`` (``registry``) the architecture alone; ``find_weights`` / ``download_weights``
(``store``) where the weight files are. Architectures: ``mcunet``, ``mobilenetv2``, ``resnet``,
``tiny``; file readers: ``formats``; conversion maths: ``convert``; BN restored by calibration:
``calibration``; the MIT Sparse Update schemes: ``schemes``.
"""

from trady_jax.models.load import Network, load_model, load_network
from trady_jax.models.registry import MCU_NETS, NAMES, build_model
from trady_jax.models.store import WeightFiles, download_weights, find_weights

__all__ = ["MCU_NETS", "NAMES", "Network", "WeightFiles", "build_model", "download_weights",
           "find_weights", "load_model", "load_network"]
