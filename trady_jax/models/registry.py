"""Named models with pretrained weights: ``load_model(name, num_classes) -> (module, params)``.

Names: the papers' MCU networks ``'mbv2-w0.35'``, ``'mcunet-in1'``, ``'proxyless-w0.3'``
(method-spec 8) and the generic ``'resnet18'``, ``'resnet50'``, ``'mobilenetv2'`` (torchvision /
timm checkpoints).

Weights are looked up, in order, in ``weights_dir`` (if given, only there), else in the directories
of ``$TRADY_JAX_WEIGHTS`` (``os.pathsep``-separated), the shipped ``../shared/weights`` beside the
current directory and beside the repository, and last the cache ``$TRADY_JAX_CACHE`` or
``~/.cache/trady_jax``. The first directory holding files of the requested ``source`` wins (with
``'auto'``, a directory's fp32 zoo files before its int8 ones), so downloaded or cached files never
replace the shipped ones, and only a directory the user names (``weights_dir``,
``$TRADY_JAX_WEIGHTS``) comes before them. Loading weights from anywhere but the shipped
directories prints one line naming the files.
For an MCU net a directory may hold the int8 files ``NAME.json + NAME.npz`` or the fp32 model-zoo
files ``<zoo id>.json + <zoo id>.pth`` (read without torch, and without running code: see
``torch_file``); ``download_weights(name)`` fetches the public
files into the cache (``load_model(..., download=True)`` calls it); nothing is downloaded unless
asked. A malformed weight or architecture file is a ``ValueError`` naming it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trady_jax import batchnorm, paths
from trady_jax import selection as sel
from trady_jax.models import calibration as calibration_lib
from trady_jax.models import mcunet, mobilenetv2, resnet, weights

ZOO_URL = "https://hanlab18.mit.edu/projects/tinyml/mcunet/release/"
# name: (MCUNet model-zoo id, feature-mix channels to add when the int8 description lacks it)
MCU_NETS = {"mbv2-w0.35": ("mbv2-w0.35-r144_imagenet", 448),
            "mcunet-in1": ("mcunet-5fps_imagenet", None),
            "proxyless-w0.3": ("proxyless-w0.3-r176_imagenet", 384)}
TORCHVISION_URLS = {"resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
                    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
                    "mobilenetv2": "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"}
NAMES = tuple(MCU_NETS) + tuple(TORCHVISION_URLS)


class WeightFiles(NamedTuple):
  """Where a model's weights are: ``kind`` is ``'int8' | 'zoo' | 'state_dict'``."""
  kind: str
  files: tuple[Path, ...]


def _check(name: str) -> None:
  if name not in NAMES:
    raise KeyError(f"unknown model {name!r}; known: {list(NAMES)}")


cache_dir = paths.cache_dir


def search_dirs(weights_dir: str | Path | None = None) -> list[Path]:
  """Directories searched for weights, in order (see the module docstring)."""
  if weights_dir is not None:
    return [Path(weights_dir)]
  env = [Path(p) for p in os.environ.get("TRADY_JAX_WEIGHTS", "").split(os.pathsep) if p]
  return list(dict.fromkeys(d.resolve() for d in env + shipped_dirs() + [cache_dir()]))


def shipped_dirs() -> list[Path]:
  """The project's own weight copies: ``weights/`` in the shared folders (``paths.shared_dirs``:
  ``$TRADY_JAX_SHARED``, else ``../shared`` beside the current directory and the checkout)."""
  return paths.shared_subdirs("weights")


def find_weights(name: str, weights_dir: str | Path | None = None,
                 source: str = "auto") -> WeightFiles | None:
  """The weight files of ``name``, or None. ``source``: ``'int8'``, ``'zoo'`` (fp32) or ``'auto'``
  (the fp32 zoo files the papers fine-tune, else int8)."""
  _check(name)
  if source not in ("auto", "int8", "zoo"):
    raise ValueError(f"source must be 'auto', 'int8' or 'zoo', got {source!r}")
  kinds = {"int8": ["int8"], "zoo": ["zoo"], "auto": ["zoo", "int8"]}[source]
  for d in search_dirs(weights_dir):
    if name in MCU_NETS:
      zoo = MCU_NETS[name][0]
      files = {"int8": (d / f"{name}.json", d / f"{name}.npz"),
               "zoo": (d / f"{zoo}.json", d / f"{zoo}.pth")}
      for kind in kinds:
        if all(f.is_file() for f in files[kind]):
          return WeightFiles(kind, files[kind])
    else:
      stems = (name, Path(TORCHVISION_URLS[name]).stem)
      for f in (d / f"{s}{ext}" for s in stems for ext in (".safetensors", ".pth", ".npz")):
        if f.is_file():
          return WeightFiles("state_dict", (f,))
  return None


def _announce(name: str, found: WeightFiles) -> None:
  """One line on stderr when the weights are not the shipped copies."""
  shipped = shipped_dirs()
  if any(f.resolve().parent not in shipped for f in found.files):
    print(f"trady_jax: {name}: loading {found.kind} weights from "
          f"{', '.join(str(f) for f in found.files)} (not the shipped copy)",
          file=sys.stderr, flush=True)


def download_weights(name: str, cache: str | Path | None = None, *,
                     force: bool = False) -> WeightFiles:
  """Fetch the public fp32 weights of ``name`` (MCUNet model zoo or torchvision) into ``cache``."""
  _check(name)
  cache = Path(cache or cache_dir())
  cache.mkdir(parents=True, exist_ok=True)
  if name in MCU_NETS:
    zoo = MCU_NETS[name][0]
    urls, kind = [f"{ZOO_URL}{zoo}.json", f"{ZOO_URL}{zoo}.pth"], "zoo"
  else:
    urls, kind = [TORCHVISION_URLS[name]], "state_dict"
  files = []
  for url in urls:
    dest = cache / url.rsplit("/", 1)[1]
    if force or not dest.is_file():
      with tempfile.NamedTemporaryFile(dir=cache, delete=False) as tmp:
        try:
          with urllib.request.urlopen(url, timeout=60) as r:
            shutil.copyfileobj(r, tmp)
        except OSError as err:
          os.unlink(tmp.name)
          raise OSError(f"downloading {url} failed: {err}; "
                        f"put the file in {cache} by hand") from err
      os.replace(tmp.name, dest)
    files.append(dest)
  return WeightFiles(kind, tuple(files))


def build_model(name: str, num_classes: int = 1000, *, feature_mix: bool = True,
                bn: str = "folded") -> nn.Module:
  """The architecture only (no weights); MCU nets come from the shipped ``arch/*.json`` (the
  papers' architecture: with the feature-mix conv unless ``feature_mix=False``)."""
  _check(name)
  if name in MCU_NETS:
    fm = MCU_NETS[name][1] if feature_mix else None
    return mcunet.MCUNet(mcunet.spec_from_description(mcunet.load_arch(name), feature_mix=fm),
                         num_classes, bn=bn)
  if name == "mobilenetv2":
    return mobilenetv2.mobilenetv2(num_classes).clone(bn=bn)
  return resnet.resnet(name, num_classes).clone(bn=bn)


def param_shapes(module: nn.Module) -> dict:
  """``jax.ShapeDtypeStruct`` tree of ``module``'s parameters (nothing computed)."""
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)["params"]


def init_params(module: nn.Module, seed: int = 0) -> dict:
  """Fresh parameters: kernels LeCun-normal (truncated at 2 sigma, fan-in = all but the last axis,
  as the layers' default initialiser), biases zero, BN scales one.

  Drawn with numpy: XLA on CPU compiles one random kernel per distinct shape (about 0.5 s each).
  """
  rng = np.random.default_rng(seed)

  def draw(path, s):
    leaf = jax.tree_util.keystr(path[-1:], simple=True)
    if leaf != "kernel":
      return (jnp.ones if leaf == "scale" else jnp.zeros)(s.shape, s.dtype)
    z = rng.standard_normal(s.shape)
    while (bad := np.abs(z) > 2).any():
      z[bad] = rng.standard_normal(int(bad.sum()))
    std = np.sqrt(1.0 / np.prod(s.shape[:-1])) / 0.87962566103423978
    return jnp.asarray(z * std, s.dtype)

  return jax.tree_util.tree_map_with_path(draw, param_shapes(module))


def init_batch_stats(module: nn.Module) -> dict:
  """BN running statistics of a fresh ``module``: means 0, variances 1 (PyTorch's)."""
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x).get("batch_stats", {})
  return jax.tree_util.tree_map_with_path(
      lambda p, s: (jnp.ones if jax.tree_util.keystr(p[-1:], simple=True) == "var"
                    else jnp.zeros)(s.shape, s.dtype), dict(shapes))


def _load_mcu(name: str, found: WeightFiles, feature_mix: bool | None,
              keep_bn: bool = False) -> tuple[mcunet.NetSpec, dict]:
  if found.kind == "int8":
    desc = weights.read_json(found.files[0])
    fm = MCU_NETS[name][1] if feature_mix else None
    spec = mcunet.spec_from_description(desc, feature_mix=fm)
    return spec, weights.int8_params(mcunet.iter_entries(desc), weights.read_npz(found.files[1]))
  cfg = weights.read_json(found.files[0])
  spec = mcunet.spec_from_zoo_config(cfg)
  sd = weights.normalise_keys(weights.load_state_dict(found.files[1]), mcunet.ZOO_RENAMES)
  params = weights.convert_state_dict(sd, mcunet.zoo_key_map(spec),
                                      eps=(cfg.get("bn") or {}).get("eps", 1e-5), keep_bn=keep_bn)
  if feature_mix is False and spec.feature_mix is not None:
    spec = dataclasses.replace(spec, feature_mix=None)
    params.pop("feature_mix")
  return spec, params


def convert_generic(name: str, state_dict: dict, num_classes: int = 1000,
                    input_stats: Any = (weights.IMAGENET_MEAN, weights.IMAGENET_STD), *,
                    keep_bn: bool = False):
  """``(module, params)`` of a torchvision / timm ResNet or MobileNetV2 state dict (numpy arrays).

  ``input_stats``: the checkpoint's input ``(mean, std)``, folded into the first conv so that the
  model reads ``[-1, 1]`` inputs; None keeps the first conv as is. ``keep_bn``: BatchNorm kept
  (``weights.convert_state_dict``), the input's constant term then joins the first running mean.
  """
  if name == "mobilenetv2":
    module, first = mobilenetv2.mobilenetv2(num_classes), "first_conv"
    key_map = mobilenetv2.key_map(module.spec, state_dict)
  else:
    module, first = resnet.resnet(name, num_classes), "conv1"
    key_map = resnet.torch_key_map(module)
  params = weights.convert_state_dict(state_dict, key_map, keep_bn=keep_bn)
  if input_stats is not None:
    p = params[first]
    if keep_bn:
      p["kernel"], shift = weights.fold_input_norm(p["kernel"], 0.0, *input_stats)
      p["bn"]["mean"] = (p["bn"]["mean"] - shift).astype(np.float32)
    else:
      p["kernel"], p["bias"] = weights.fold_input_norm(p["kernel"], p["bias"], *input_stats)
  return module, params


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
                 download: bool = False, seed: int = 0) -> Network:
  """A named network, pretrained unless ``pretrained=False``.

  Args:
    name: one of ``NAMES``.
    num_classes: size of the fresh classifier head (ignored with ``imagenet_head``).
    bn: ``batchnorm.MODES``. fp32 checkpoints keep their BatchNorm; the int8 MCU weights (BN
      folded) get it back by calibration on ``calibration`` (batches of training images,
      ``models.calibration``; ``unit_variance`` chooses how the scale is split); with a fresh
      classifier, a BN feeding it directly is standardised
      (``calibration.standardize_head_input``).
    weights_dir: look for weights only there (see the module docstring for the default search).
    feature_mix: the final 1x1 feature-mix conv (mbv2-w0.35 112->448, proxyless-w0.3 96->384) the
      papers' memory totals count. None: as the weights describe (the int8 copies lack it, so the
      network is built without it, with a warning); True: added, freshly initialised when the
      weights lack it (then listed in ``random_init_layers``); False: dropped.
    source: ``'int8'``, ``'zoo'`` (fp32 MCUNet model zoo) or ``'auto'`` for the MCU nets.
    imagenet_head: keep the pretrained 1000-way classifier instead of a fresh one.
    download: fetch the public weights into the cache when none are found.
    seed: PRNG seed of the fresh layers.
  """
  _check(name)
  batchnorm.check_mode(bn)
  if not pretrained:
    module = build_model(name, num_classes, feature_mix=feature_mix is not False, bn=bn)
    params = init_params(module, seed)
    stats = init_batch_stats(module) if bn != "folded" else None
    return Network(module, params, stats, tuple(_module_paths(params, "classifier")), "")
  found = find_weights(name, weights_dir, source)
  if found is None:
    if not download:
      raise FileNotFoundError(
          f"no weights for {name!r} in {[str(d) for d in search_dirs(weights_dir)]}; pass "
          "download=True (or call trady_jax.models.registry.download_weights), set "
          "TRADY_JAX_WEIGHTS, or use pretrained=False")
    found = download_weights(name)
  _announce(name, found)
  keep_bn = bn != "folded" and found.kind != "int8"
  try:
    loaded = (_load_mcu(name, found, feature_mix, keep_bn) if name in MCU_NETS
              else convert_generic(name, weights.load_state_dict(found.files[0]),
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
    loaded, stats = weights.split_bn(loaded)
  init = init_params(module, seed)
  head = () if imagenet_head else ("classifier",)
  params = weights.merge_params(init, loaded, head)
  weights.check_params(params, init, where=f"{name} weights from {found.files[-1]}")
  fresh = tuple(_module_paths(init, *head, *loaded))
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
    stats = weights.merge_params(init_batch_stats(module), stats)
  return Network(module, params, stats, fresh, str(found.files[-1]))


def _module_paths(params: dict, *skip: str) -> list[str]:
  """Paths of the layers owning ``params``' leaves (``'blocks_0/depthwise'``), top-level names in
  ``skip`` left out."""
  out = []
  for p in sel.leaf_paths(params):
    layer = p.rsplit("/", 1)[0].removesuffix("/bn")
    if p.split("/", 1)[0] not in skip and layer not in out:
      out.append(layer)
  return out
