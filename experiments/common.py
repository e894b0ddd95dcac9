"""Shared set-up for the experiment scripts: model, data and ranking from a ``Config``."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # let `python experiments/x.py` import the package from a checkout
  sys.path.insert(0, str(ROOT))

from trady_jax import ranking, rankings  # noqa: E402
from trady_jax.models import registry  # noqa: E402
from trady_jax.models.tiny import TinyCNN  # noqa: E402


def load_model(arch: str, num_classes: int, *, pretrained: bool = True, weights_dir: str = "",
               seed: int = 0, image_size: int = 128, download: bool = False):
  """``(module, params, pretrained_loaded)``: pretrained weights when found (local copies first,
  then, with ``download``, the public ones), else random weights, loudly."""
  if arch == "tiny":
    m = TinyCNN(num_classes=num_classes)
    return m, m.init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3)))["params"], False
  if pretrained:
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fresh feature-mix conv is reported below
        m, p = registry.load_model(arch, num_classes, weights_dir=weights_dir or None, seed=seed,
                                   download=download)
      return m, p, True
    except (FileNotFoundError, OSError) as e:
      print(f"WARNING: {e}\nWARNING: continuing with randomly initialised weights", flush=True)
  m, p = registry.load_model(arch, num_classes, pretrained=False, seed=seed)
  return m, p, False


def load_ranking(arch: str, path: str = "", costs=None):
  """The ranking at ``path`` or the one shipped for ``arch`` (``None`` when there is none)."""
  p = Path(path) if path else rankings.default_path(arch)
  if not p.exists():
    if path:
      raise FileNotFoundError(f"ranking file {p} not found")
    return None
  return ranking.load(p, costs)


def open_data(cfg):
  """``(train, test, num_classes, where)`` for a config: tfds, the offline copy, or generated data.

  ``cfg.offline`` uses only ``../shared`` (or an unpacked copy in the cache). When a dataset cannot
  be found anywhere, this says so plainly and falls back to generated data.
  """
  from trady_jax import data
  name = cfg.dataset
  kwargs = {}
  if name.startswith("folder:"):
    name, kwargs = "folder", {"data_dir": cfg.data_dir or cfg.dataset.split(":", 1)[1]}
  elif cfg.data_dir:
    kwargs = {"data_dir": cfg.data_dir}
  try:
    if cfg.offline and name == "cifar10":
      train, test = data.cifar10_offline()
      where = "offline CIFAR-10 copy"
    else:
      download = not cfg.offline and name in data.DATASETS
      train = data.open_dataset(name, "train", download=download, **kwargs)
      test = data.open_dataset(name, "test", download=download, **kwargs)
      where = type(train).__name__
  except data.DataUnavailableError as e:
    print(f"NOTE: {name} is not available here ({str(e).splitlines()[0]}).\n"
          "NOTE: no network and no local copy, so this run uses GENERATED data "
          "(class-dependent colour patterns); its accuracy says nothing about CIFAR-10.",
          flush=True)
    train, test = data.open_dataset("synthetic", "train"), data.open_dataset("synthetic", "test")
    where = "generated data"
  num_classes = getattr(train, "num_classes", None) or 10
  train = _limit(train, cfg.train_limit, num_classes, cfg.seed)
  test = _limit(test, cfg.test_limit, num_classes, cfg.seed)
  return train, test, num_classes, where


def _limit(source, n, num_classes, seed):
  """A class-balanced subset of ``n`` examples (the first ``n`` when labels are unknown)."""
  from trady_jax import data
  if not n or n >= len(source):
    return source
  if hasattr(source, "labels"):
    return data.balanced_subset(source, max(n // num_classes, 1), seed=seed)
  return data.Subset(source, range(n))


def make_run(cfg, workdir):
  """A ``trady_jax.train.Run`` for a config: model, data, ranking and SU scheme resolved."""
  from trady_jax import costs as costs_lib
  from trady_jax import data, strategies, train
  from trady_jax.models import schemes
  train_src, test_src, num_classes, where = open_data(cfg)
  model, params, pretrained = load_model(cfg.arch, num_classes, pretrained=cfg.pretrained,
                                         weights_dir=cfg.weights_dir, seed=cfg.seed,
                                         image_size=cfg.image_size, download=not cfg.offline)
  costs = costs_lib.trace(model, (1, cfg.image_size, cfg.image_size, 3))
  strategy = strategies.get(cfg.strategy)
  doc = load_ranking(cfg.arch, cfg.ranking, costs) if strategy.needs_ranking else None
  if strategy.needs_ranking and doc is None:
    raise SystemExit(f"strategy {cfg.strategy!r} needs a layer ranking for {cfg.arch}: run "
                     f"`python experiments/rank_layers.py --arch {cfg.arch}` and pass --ranking")
  counts = None
  if strategy.rule == "scheme":
    counts = schemes.scheme_counts(cfg.arch, cfg.su_scheme, costs)
  print(f"{cfg.arch} ({'pretrained' if pretrained else 'random init'}), {len(train_src)} train / "
        f"{len(test_src)} test images from {where}, strategy {cfg.strategy}, "
        f"budget {cfg.budget:,} units", flush=True)

  def batches(source, batch_size, *, train, seed, epoch):
    return data.batches(source, batch_size, train=train, seed=seed, epoch=epoch,
                        num_workers=cfg.num_workers, image_size=cfg.image_size,
                        pad_remainder=not train)

  run = train.Run(cfg, workdir, model=model, params=params, train_source=train_src,
                  test_source=test_src, batches=batches, ranking_doc=doc, scheme_counts=counts)
  run.info = {"pretrained": pretrained, "data": where, "train_images": len(train_src),
              "test_images": len(test_src)}
  return run
