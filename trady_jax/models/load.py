"""Named networks with pretrained weights: ``load_network(name, num_classes) -> Network``.

The weight files come from ``store`` (nothing is downloaded unless asked), are read by
``formats`` (int8 MIT networks, fp32 model-zoo networks, torchvision / timm state dicts; a
malformed file is a ``ValueError`` naming it) and put into the architecture ``registry`` builds,
with a fresh classifier head for the new task (method-spec 8 and 10: the classifier is always
trained). BatchNorm is folded, kept (fp32 checkpoints) or restored by ``calibration`` (int8
weights, BN folded). Loading weights from anywhere but the shipped directories prints one line
naming the files.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Iterable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trady_jax import batchnorm
from trady_jax.models import calibration as calibration_lib
from trady_jax.models import convert, hub, mcunet, registry, store
from trady_jax.models import params as params_lib
from trady_jax.models.formats import files, int8, torchvision, zoo
from trady_jax.models.registry import MCU_NETS


def _load_mcu(name: str, found: store.WeightFiles, feature_mix: bool | None,
              keep_bn: bool = False) -> tuple[mcunet.NetSpec, dict]:
  if found.kind == "int8":
    desc = files.read_json(found.files[0])
    fm = MCU_NETS[name][1] if feature_mix else None
    spec = int8.spec_from_description(desc, feature_mix=fm)
    return spec, int8.int8_params(int8.iter_entries(desc), files.read_npz(found.files[1]))
  cfg = files.read_json(found.files[0])
  spec = zoo.spec_from_zoo_config(cfg)
  sd = files.normalise_keys(files.load_state_dict(found.files[1]), zoo.ZOO_RENAMES)
  params = convert.convert_state_dict(sd, zoo.zoo_key_map(spec),
                                      eps=(cfg.get("bn") or {}).get("eps", 1e-5), keep_bn=keep_bn)
  if feature_mix is False and spec.feature_mix is not None:
    spec = dataclasses.replace(spec, feature_mix=None)
    params.pop("feature_mix")
  return spec, params


def _load_transformer(name: str, num_classes: int, weights_dir, download: bool, seed: int,
                      image_size: int) -> "Network":
  """A transformer from its Hugging Face checkpoint folder (``hub``)."""
  directory = hub.find_checkpoint(name, weights_dir)
  if directory is None:
    if not download:
      raise FileNotFoundError(
          f"no {name} checkpoint (config.json + model.safetensors / pytorch_model.bin) in "
          f"{weights_dir or [str(d / name) for d in store.search_dirs(weights_dir)]}; pass "
          f"download=True to fetch {hub.HUB_IDS[name]}, or use pretrained=False")
    directory = hub.download_checkpoint(name)
  print(f"trady_jax: {name}: loading the checkpoint in {directory}", file=sys.stderr, flush=True)
  try:
    module, params = hub.load_checkpoint(name, directory, num_classes, image_size=image_size,
                                         seed=seed)
  except (KeyError, TypeError, ValueError) as err:
    raise ValueError(f"{name} checkpoint {directory}: {err}") from err
  return Network(module, params, None, (), str(directory))


class Network(NamedTuple):
  """A loaded network: ``module``, ``params``, BN running statistics (``batch_stats``, None when
  BN is folded), ``random_init_layers``: module paths not loaded from pretrained weights (a fresh
  classifier head excepted), ``weights``: the weight file (``''`` for random weights)."""
  module: nn.Module
  params: dict
  batch_stats: dict | None
  random_init_layers: tuple[str, ...]
  weights: str


def load_model(name: str, num_classes: int = 1000, *, weights_dir: str | Path | None = None,
               feature_mix: bool | None = None, pretrained: bool = True, source: str = "auto",
               imagenet_head: bool = False, download: bool = False,
               seed: int = 0) -> tuple[nn.Module, dict]:
  """``(module, params)`` of a named model with BatchNorm folded (``load_network``)."""
  net = load_network(name, num_classes, weights_dir=weights_dir, feature_mix=feature_mix,
                     pretrained=pretrained, source=source, imagenet_head=imagenet_head,
                     download=download, seed=seed)
  return net.module, net.params


def load_network(name: str, num_classes: int = 1000, *, bn: str = "folded",
                 calibration: Iterable[np.ndarray] | None = None, unit_variance: bool = True,
                 weights_dir: str | Path | None = None, feature_mix: bool | None = None,
                 pretrained: bool = True, source: str = "auto", imagenet_head: bool = False,
                 download: bool = False, seed: int = 0, image_size: int = 224) -> Network:
  """A named network, pretrained unless ``pretrained=False``.

  Args:
    name: one of ``NAMES``.
    num_classes: size of the fresh classifier head (ignored with ``imagenet_head``).
    bn: ``batchnorm.MODES``. fp32 checkpoints keep their BatchNorm; the int8 MCU weights (BN
      folded) get it back by calibration on ``calibration`` (batches of training images,
      ``models.calibration``; ``unit_variance`` chooses how the scale is split); with a fresh
      classifier, a BN feeding it directly is standardised
      (``calibration.standardize_head_input``).
    weights_dir: look for weights only there (``store`` describes the default search).
    feature_mix: the final 1x1 feature-mix conv (mbv2-w0.35 112->448, proxyless-w0.3 96->384) the
      papers' memory totals count. None: as the weights describe (the int8 copies lack it, so the
      network is built without it, with a warning); True: added, freshly initialised when the
      weights lack it (then listed in ``random_init_layers``); False: dropped.
    source: ``'int8'``, ``'zoo'`` (fp32 MCUNet model zoo) or ``'auto'`` for the MCU nets.
    imagenet_head: keep the pretrained 1000-way classifier instead of a fresh one.
    download: fetch the public weights into the cache when none are found.
    seed: PRNG seed of the fresh layers.
    image_size: the resolution a vision transformer runs at (its position embeddings and
      windows; ``hub``). Transformers have no BatchNorm: ``bn`` does not apply to them.
  """
  registry.check_name(name)
  batchnorm.check_mode(bn)
  if not pretrained:
    module = registry.build_model(name, num_classes, feature_mix=feature_mix is not False, bn=bn,
                                  image_size=image_size)
    params = params_lib.init_params(module, seed)
    stats = params_lib.init_batch_stats(module) if bn != "folded" else None
    return Network(module, params, stats, tuple(params_lib.module_paths(params, "classifier")), "")
  if name in registry.TRANSFORMERS:
    return _load_transformer(name, num_classes, weights_dir, download, seed, image_size)
  found = store.find_weights(name, weights_dir, source)
  if found is None:
    if not download:
      raise FileNotFoundError(
          f"no weights for {name!r} in {[str(d) for d in store.search_dirs(weights_dir)]}; pass "
          "download=True (or call trady_jax.models.download_weights), set "
          "TRADY_JAX_WEIGHTS, or use pretrained=False")
    found = store.download_weights(name)
  store.announce(name, found)
  keep_bn = bn != "folded" and found.kind != "int8"
  try:
    loaded = (_load_mcu(name, found, feature_mix, keep_bn) if name in MCU_NETS
              else torchvision.convert_generic(name, files.load_state_dict(found.files[0]),
                                               keep_bn=keep_bn))
  except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
    raise ValueError(f"{name} weights {' + '.join(str(f) for f in found.files)}: {err}") from err
  if name in MCU_NETS:
    spec, loaded = loaded
    if imagenet_head and spec.added_feature_mix:
      c = spec.blocks[-1].pointwise2.out_channels
      raise ValueError(f"the {name} ImageNet head reads the {c} block features; with "
                       "imagenet_head=True pass feature_mix=False")
    if spec.added_feature_mix:
      warnings.warn(f"{name}: the {found.kind} weights have no feature-mix conv; 'feature_mix' "
                    f"({spec.feature_mix.in_channels}->{spec.feature_mix.out_channels}) is freshly "
                    "initialised", stacklevel=2)
    elif feature_mix is None and MCU_NETS[name][1] and spec.feature_mix is None:
      warnings.warn(f"{name}: the {found.kind} weights have no feature-mix conv; the network is "
                    f"built without it (the papers' has {MCU_NETS[name][1]} channels there)",
                    stacklevel=2)
    module = mcunet.MCUNet(spec, spec.head_classes if imagenet_head else num_classes)
  else:
    module, loaded = loaded
    module = module.clone(num_classes=1000 if imagenet_head else num_classes)
  module = module.clone(bn=bn if keep_bn else "folded")
  stats = None
  if keep_bn:
    loaded, stats = params_lib.split_bn(loaded)
  init = params_lib.init_params(module, seed)
  head = () if imagenet_head else ("classifier",)
  params = params_lib.merge_params(init, loaded, head)
  params_lib.check_params(params, init, where=f"{name} weights from {found.files[-1]}")
  fresh = tuple(params_lib.module_paths(init, *head, *loaded))
  if bn != "folded" and not keep_bn:
    if calibration is None:
      raise ValueError(f"{name}: the {found.kind} weights have BatchNorm folded; restoring it "
                       f"(bn={bn!r}) needs calibration images")
    module, params, stats = calibration_lib.restore_bn(module, params, calibration, mode=bn,
                                                       unit_variance=unit_variance)
    if not imagenet_head:
      params, _ = calibration_lib.standardize_head_input(module, params)
    params = jax.tree.map(jnp.asarray, params)
  if stats is not None:
    stats = params_lib.merge_params(params_lib.init_batch_stats(module), stats)
  return Network(module, params, stats, fresh, str(found.files[-1]))
