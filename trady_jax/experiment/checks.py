"""Checks of a ``Config`` against what exists (arch, dataset, folders, ranking, SU scheme budget),
before any data or weights are loaded: one ``ConfigError`` naming the flag."""

from __future__ import annotations

from pathlib import Path

from trady_jax import costs as costs_lib
from trady_jax import models, strategies
from trady_jax.config import ConfigError
from trady_jax.models import schemes
from trady_jax.paper import BUDGET_SCHEMES, BUDGETS


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
  elif data.is_text_dataset(name):
    check_tokenizer(cfg)
  elif name != "synthetic" and name not in data.DATASETS:
    raise ConfigError(f"--dataset {name!r}: unknown; known: synthetic, folder:PATH, "
                      f"{', '.join(data.DATASETS)}, {', '.join(data.TEXT_DATASETS)}")
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
  if strategy.is_scheme:
    if cfg.arch not in schemes.SCHEMES:
      raise ConfigError(f"strategy 'su' needs a Sparse Update scheme; {cfg.arch} has none "
                        f"(known: {', '.join(schemes.SCHEMES)})")
    model = models.build_model(cfg.arch, 10)  # the classifier is in no scheme
    net = costs_lib.trace(model, models.registry.example_input(cfg.arch, cfg.image_size))
    check_scheme_budget(cfg, net.usage(schemes.scheme_counts(cfg.arch, cfg.su_scheme, net))[
        "units"])


def check_tokenizer(cfg) -> None:
  """``ConfigError`` when a text dataset's tokenizer folder is missing or holds no tokenizer
  (GLUE needs one; generated text uses one when given)."""
  from trady_jax.data import tokenizer
  if cfg.tokenizer and not tokenizer.has_tokenizer_files(cfg.tokenizer):
    raise ConfigError(f"--tokenizer {cfg.tokenizer}: " + (
        "no tokenizer.json, vocab.txt or vocab.json + merges.txt there"
        if Path(cfg.tokenizer).is_dir() else "no such folder"))
  if (cfg.dataset.startswith("glue/") and not cfg.tokenizer
      and not (cfg.weights_dir and tokenizer.has_tokenizer_files(cfg.weights_dir))):
    raise ConfigError(f"--dataset {cfg.dataset} needs the checkpoint's tokenizer: --tokenizer DIR "
                      "(a folder with tokenizer.json, vocab.txt, or vocab.json + merges.txt)")


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
