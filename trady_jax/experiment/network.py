"""The network a run trains: pretrained weights (or random ones, loudly) and its layer ranking."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from trady_jax import models, rankings
from trady_jax.config import Config, ConfigError
from trady_jax.experiment.inputs import calibration_batches
from trady_jax.models.tiny import TinyCNN


def load_model(arch: str, num_classes: int, *, pretrained: bool = True, weights_dir: str = "",
               seed: int = 0, image_size: int = 128, download: bool = False):
  """``(module, params, pretrained_loaded)`` with BatchNorm folded (``load_network``)."""
  net, loaded = load_network(arch, num_classes, pretrained=pretrained, weights_dir=weights_dir,
                             seed=seed, image_size=image_size, download=download)
  return net.module, net.params, loaded


def load_network(arch: str, num_classes: int, *, bn: str = "folded", calibration=None,
                 pretrained: bool = True, weights_dir: str = "", seed: int = 0,
                 image_size: int = 128, download: bool = False):
  """``(models.Network, pretrained_loaded)``: pretrained weights when found (local copies
  first, then, with ``download``, the public ones), else random weights, loudly. ``calibration``:
  training-image batches that restore BN in BN-folded weights (``models.load_network``)."""
  if arch == "tiny":
    m = TinyCNN(num_classes=num_classes, bn=bn)
    v = m.init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3)))
    fresh = tuple(k for k in v["params"] if k != "classifier")
    return models.Network(m, v["params"], v.get("batch_stats"), fresh, ""), False
  if pretrained:
    try:
      return models.load_network(arch, num_classes, bn=bn, calibration=calibration,
                                 weights_dir=weights_dir or None, seed=seed,
                                 download=download, image_size=image_size), True
    except (FileNotFoundError, OSError, ImportError) as e:
      print(f"WARNING: {e}\nWARNING: continuing with randomly initialised weights", flush=True)
  return models.load_network(arch, num_classes, bn=bn, pretrained=False, seed=seed,
                             image_size=image_size), False


def network_for(cfg: Config, train_source, num_classes: int):
  """``load_network`` for a config: its arch, BN mode, weights and seed, BN restored on the first
  images of ``train_source``, downloading unless ``cfg.offline``."""
  return load_network(cfg.arch, num_classes, bn=cfg.bn,
                      calibration=calibration_batches(cfg, train_source),
                      pretrained=cfg.pretrained, weights_dir=cfg.weights_dir, seed=cfg.seed,
                      image_size=cfg.image_size, download=not cfg.offline)


def load_ranking(arch: str, path: str = "", costs=None):
  """The ranking at ``path`` or the one shipped for ``arch`` (``None`` when there is none)."""
  p = Path(path) if path else rankings.default_path(arch)
  if not p.exists():
    if path:
      raise FileNotFoundError(f"ranking file {p} not found")
    return None
  try:
    return rankings.load(p, costs)
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"ranking file {p} cannot be used ({type(e).__name__}: {e})") from None
