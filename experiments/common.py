"""Shared set-up for the experiment scripts: model, data and ranking from a ``Config``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # let `python experiments/x.py` import the package from a checkout
  sys.path.insert(0, str(ROOT))

from trady_jax import checkpoint, ranking, rankings, strategies, train, workdir  # noqa: E402
from trady_jax import costs as costs_lib  # noqa: E402
from trady_jax.config import ConfigError  # noqa: E402
from trady_jax.data.folder import ImageError  # noqa: E402
from trady_jax import models  # noqa: E402
from trady_jax.models import schemes  # noqa: E402
from trady_jax.models.tiny import TinyCNN  # noqa: E402
from trady_jax.paper import BUDGET_SCHEMES, BUDGETS  # noqa: E402


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
                                 download=download), True
    except (FileNotFoundError, OSError) as e:
      print(f"WARNING: {e}\nWARNING: continuing with randomly initialised weights", flush=True)
  return models.load_network(arch, num_classes, bn=bn, pretrained=False, seed=seed), False


def load_ranking(arch: str, path: str = "", costs=None):
  """The ranking at ``path`` or the one shipped for ``arch`` (``None`` when there is none)."""
  p = Path(path) if path else rankings.default_path(arch)
  if not p.exists():
    if path:
      raise FileNotFoundError(f"ranking file {p} not found")
    return None
  try:
    return ranking.load(p, costs)
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"ranking file {p} cannot be used ({type(e).__name__}: {e})") from None


# Failures the user can act on: one line on stderr, no traceback (see ``cli``).
USER_ERRORS = (ConfigError, workdir.WorkdirError, train.DivergedError, checkpoint.CheckpointError,
               ImageError)


def cli(main: Callable[[], object]) -> int:
  """``main()``'s exit status: 0, or a user error's ``exit_code`` after ``error: ...`` on stderr."""
  try:
    main()
  except USER_ERRORS as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    return getattr(e, "exit_code", 1)
  return 0


def check_config(cfg) -> None:
  """``ConfigError`` for settings out of range or naming what does not exist (arch, dataset,
  folders, ranking, SU scheme over budget), before any data or weights are loaded."""
  from trady_jax import data
  cfg.validate()
  if cfg.arch != "tiny" and cfg.arch not in models.NAMES:
    raise ConfigError(f"--arch {cfg.arch!r}: unknown; known: tiny, {', '.join(models.NAMES)}")
  name = cfg.dataset
  if name.startswith("folder:"):
    root = Path(cfg.data_dir or name.split(":", 1)[1])
    missing = [s for s in ("train", "test") if not (root / s).is_dir()]
    if missing:
      raise ConfigError(f"--dataset {name}: " + (
          f"{root} has no {' or '.join(missing)} folder" if root.is_dir()
          else f"{root} does not exist") + " (expected ROOT/{train,test}/<class>/<images>)")
  elif name != "synthetic" and name not in data.DATASETS:
    raise ConfigError(f"--dataset {name!r}: unknown; known: synthetic, folder:PATH, "
                      f"{', '.join(data.DATASETS)}")
  elif cfg.data_dir and not Path(cfg.data_dir).is_dir() and (cfg.offline or name == "vww"):
    raise ConfigError(f"--data-dir {cfg.data_dir}: no such folder")
  if cfg.weights_dir and not Path(cfg.weights_dir).is_dir():
    raise ConfigError(f"--weights-dir {cfg.weights_dir}: no such folder")
  if cfg.ranking and not Path(cfg.ranking).is_file():
    raise ConfigError(f"--ranking {cfg.ranking}: no such file")
  if 0 < cfg.train_limit < cfg.batch_size:
    raise ConfigError(f"--train-limit {cfg.train_limit} is less than one batch "
                      f"(--batch-size {cfg.batch_size})")
  strategy = strategies.get(cfg.strategy)
  if strategy.needs_ranking and not (cfg.ranking or rankings.default_path(cfg.arch).exists()):
    raise ConfigError(f"strategy {cfg.strategy!r} needs a layer ranking for {cfg.arch}: run "
                      f"`python experiments/rank_layers.py --arch {cfg.arch}` and pass --ranking")
  if strategy.rule == "scheme":
    if cfg.arch not in schemes.SCHEMES:
      raise ConfigError(f"strategy 'su' needs a Sparse Update scheme; {cfg.arch} has none "
                        f"(known: {', '.join(schemes.SCHEMES)})")
    model = models.build_model(cfg.arch, 10)  # the classifier is in no scheme
    net = costs_lib.trace(model, (1, cfg.image_size, cfg.image_size, 3))
    check_scheme_budget(cfg, net.usage(schemes.scheme_counts(cfg.arch, cfg.su_scheme, net))[
        "units"])


def check_scheme_budget(cfg, units: int) -> None:
  """``ConfigError`` when SU scheme ``cfg.su_scheme`` costs more than ``cfg.budget`` units.

  The one exception is the papers' own pairing of budget and scheme (mbv2-w0.35 scheme 1 costs
  28 282 units, its paper budget is 27 946; see ``models.schemes``): it runs, with a note, and
  its records show the units it really uses.
  """
  if units <= cfg.budget:
    return
  paper = dict(zip(BUDGET_SCHEMES, BUDGETS.get(cfg.arch, ())))
  if paper.get(cfg.su_scheme) == cfg.budget:
    print(f"NOTE: SU scheme {cfg.su_scheme} of {cfg.arch} uses {units:,} units, more than its "
          f"paper budget {cfg.budget:,} (a known discrepancy); the records show {units:,}",
          flush=True)
    return
  raise ConfigError(f"SU scheme {cfg.su_scheme} of {cfg.arch} uses {units:,} units, more than "
                    f"--budget {cfg.budget:,}: raise --budget to {units} or pick a smaller "
                    "--su-scheme")


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
    if name == "folder":  # the user's own images: never replaced by generated ones
      raise ConfigError(f"--dataset {cfg.dataset}: {' '.join(str(e).split())}") from None
    print(f"NOTE: {name} is not available here ({str(e).splitlines()[0]}).\n"
          "NOTE: no network and no local copy, so this run uses GENERATED data "
          "(class-dependent colour patterns); its accuracy says nothing about CIFAR-10.",
          flush=True)
    train, test = data.open_dataset("synthetic", "train"), data.open_dataset("synthetic", "test")
    where = "generated data"
  except ValueError as e:  # e.g. an undecodable image or an empty class folder
    raise ConfigError(f"--dataset {cfg.dataset}: {' '.join(str(e).split())}") from None
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


def calibration_batches(cfg, source, images: int = 256):
  """Batches of the first ``images`` training images, no augmentation: the calibration data that
  restores BatchNorm in the BN-folded int8 weights (drawn only when used: a generator)."""
  from trady_jax import data
  n = max(1, min(images, len(source)) // cfg.batch_size)
  it = data.batches(source, cfg.batch_size, train=False, seed=cfg.seed, epoch=0,
                    num_workers=cfg.num_workers, image_size=cfg.image_size, pad_remainder=False)
  return (b["image"] for _, b in zip(range(n), it))


def make_run(cfg, workdir):
  """A ``trady_jax.train.Run`` for a config: model, data, ranking and SU scheme resolved."""
  from trady_jax import data
  train_src, test_src, num_classes, where = open_data(cfg)
  net, pretrained = load_network(cfg.arch, num_classes, bn=cfg.bn,
                                 calibration=calibration_batches(cfg, train_src),
                                 pretrained=cfg.pretrained, weights_dir=cfg.weights_dir,
                                 seed=cfg.seed, image_size=cfg.image_size,
                                 download=not cfg.offline)
  model, params = net.module, net.params
  costs = costs_lib.trace(model, (1, cfg.image_size, cfg.image_size, 3))
  strategy = strategies.get(cfg.strategy)
  doc = load_ranking(cfg.arch, cfg.ranking, costs) if strategy.needs_ranking else None
  if strategy.needs_ranking and doc is None:
    raise ConfigError(f"strategy {cfg.strategy!r} needs a layer ranking for {cfg.arch}: run "
                      f"`python experiments/rank_layers.py --arch {cfg.arch}` and pass --ranking")
  notes = []
  if doc is not None:
    try:
      notes = ranking.check_network(
          doc, ranking.network_key(net.weights, cfg.bn, net.random_init_layers),
          source=f"the layer ranking {cfg.ranking or rankings.default_path(cfg.arch).name}")
    except ranking.RankingMismatch as e:
      raise ConfigError(f"{e} --arch {cfg.arch} --bn {cfg.bn} --out FILE` and pass "
                        "--ranking FILE") from None
  for note in notes:
    print(f"NOTE: {note}", flush=True)
  counts, biases = None, ()
  if strategy.rule == "scheme":
    counts = schemes.scheme_counts(cfg.arch, cfg.su_scheme, costs)
    biases = schemes.bias_paths(cfg.arch, cfg.su_scheme, costs)
    check_scheme_budget(cfg, costs.usage(counts)["units"])
  print(f"{cfg.arch} ({'pretrained' if pretrained else 'random init'}), {len(train_src)} train / "
        f"{len(test_src)} test images from {where}, strategy {cfg.strategy}, "
        f"budget {cfg.budget:,} units", flush=True)
  print(f"training on {len(train_src)} images, {cfg.total_epochs()} epochs "
        f"({cfg.warmup_epochs} warm-up), lr {cfg.lr}, bn {cfg.bn}, weights "
        f"{net.weights or 'none (random init)'}; random-init layers: "
        f"{', '.join(net.random_init_layers) or 'none'}", flush=True)

  def batches(source, batch_size, *, train, seed, epoch):
    return data.batches(source, batch_size, train=train, seed=seed, epoch=epoch,
                        num_workers=cfg.num_workers, image_size=cfg.image_size,
                        pad_remainder=not train)

  run = train.Run(cfg, workdir, model=model, params=params, train_source=train_src,
                  test_source=test_src, batches=batches, ranking_doc=doc, scheme_counts=counts,
                  batch_stats=net.batch_stats, scheme_biases=biases)
  # Velocity holds NEq's images out of the training split: the run's own count.
  run.info = {"pretrained": pretrained, "data": where, "train_images": len(run.train_source),
              "test_images": len(test_src), "bn": cfg.bn, "weights_file": net.weights,
              "random_init_layers": list(net.random_init_layers), "ranking_notes": notes}
  return run
