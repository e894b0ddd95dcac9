"""Run configuration: one dataclass, a comment on every field, overridable from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import re
from typing import Any

from trady_jax import paper

ALLOCATIONS = ("padded", "fixed", "exact")  # samplers.py
MEDYATE_NORMS = ("last", "epoch", "sum")


@dataclasses.dataclass
class Config:
  """Everything a fine-tuning run depends on; a run is reproducible from ``(config, seed)``."""
  # --- model ---
  arch: str = "mbv2-w0.35"          # 'mbv2-w0.35' | 'mcunet-in1' | 'proxyless-w0.3' | 'tiny' | ...
  pretrained: bool = True           # load ImageNet weights (falls back to random init, loudly)
  weights_dir: str = ""             # folder of pretrained weights; '' = ../shared/weights or cache
  image_size: int = 128             # input resolution (the papers: 128); text models: tokens
                                    # per example (the papers: 128)
  bn: str = "train"                 # BatchNorm: 'train' (the papers: batch statistics, scale and
                                    # shift trained), 'folded' (int8 deployment form) or 'shift'
                                    # (batch statistics as constants, shift trained); batchnorm.py
  # --- data ---
  dataset: str = "cifar10"          # 'cifar10', 'cifar100', 'cub200', 'flowers102', 'food101',
                                    # 'pets', 'vww', 'folder:<root>' or 'synthetic'; text:
                                    # 'glue/qnli', 'glue/rte', 'glue/sst2', 'synthetic-text'
  data_dir: str = ""                # tfds data_dir or image-folder root; '' = defaults
  tokenizer: str = ""               # text datasets: the checkpoint's tokenizer folder
                                    # (tokenizer.json, vocab.txt, or vocab.json + merges.txt);
                                    # '' = weights_dir when it holds one (data.tokenizer)
  offline: bool = False             # use the CIFAR-10 copy in ../shared/data, never the network
  train_limit: int = 0              # use only this many (class-balanced) train images; 0 = all
  test_limit: int = 0               # likewise for the test split
  batch_size: int = paper.BATCH_SIZE  # the predecessor code's 32
  num_workers: int = 2              # decoding/augmentation threads (>= 1)
  # --- strategy and budget ---
  strategy: str = "trady"           # a name from trady_jax.strategies.REGISTRY
  budget: int = paper.BUDGETS["mbv2-w0.35"][0]  # B_mem in units (elements of weights +
                                    # activations per sample)
  su_scheme: int = 1                # MIT Sparse Update scheme (1-5) for strategy 'su'
  ranking: str = ""                 # ranking JSON from experiments/rank_layers.py; '' = shipped one
  topk_share: float = paper.TOPK_SHARE  # TraDy: keep the top layers holding this share of layer RGN
  alpha: float = paper.ALPHA_OPT    # MeDyate: smallest K with B_mem / M_K <= alpha
  allocation: str = "padded"        # channels per layer: 'padded' (the papers' fill rule, budget
                                    # moves across layers; index arrays padded to power-of-two
                                    # capacities that only grow: a few compilations), 'fixed'
                                    # (uniform counts per run, one compilation, no budget moves
                                    # across layers) or 'exact' (papers' rule, exact shapes:
                                    # recompiles per count vector); samplers.py
  prefix_chunks: int = 8            # run the frozen layers below the shallowest trained one
                                    # (and evaluation) in this many batch chunks: less memory,
                                    # same result; 1 = off
  oracle_batches: int = 0           # Det RGN / Det Raw / Prob Raw's full gradient: 0 = the whole
                                    # training split (an epoch's batches, the papers' complete
                                    # gradient); n > 0 = an approximation from n batches
  medyate_norm: str = "last"        # MeDyate's stored norm of a trained channel: 'last' (its
                                    # gradient in the epoch's last step, PyTorch's .grad; Eq. 11),
                                    # 'epoch' (norm of the gradient summed over the epoch) or
                                    # 'sum' (sum of per-step norms); steps.py
  # --- optimisation (method-spec 10) ---
  epochs: int = 0                   # training epochs after warm-up; 0 = the papers' default for
                                    # the dataset (cifar10 100, cub200/pets/flowers102 200, else 50)
  warmup_epochs: int = paper.WARMUP_EPOCHS  # linear warm-up from 0 to lr, counted on top of
                                    # `epochs`
  lr: float = paper.LR              # peak learning rate (SGD, no momentum, no weight decay)
  seed: int = 0                     # 0 <= seed < 2**32; the papers use 0, 42, 100
  # --- bookkeeping ---
  eval_every: int = 1               # evaluate the test split every this many epochs (and last)
  max_steps_per_epoch: int = 0      # cap on steps per epoch, for smoke runs; 0 = no cap
  progress: bool = True             # tqdm progress bars
  log_every: int = 10               # read step metrics back from the device every this many
                                    # steps (progress bar, divergence check); they stay there
                                    # in between, so the next steps are dispatched ahead
  measure_memory: bool = False      # record the train step's XLA temp memory once per run
                                    # (`step_temp_bytes`, memory_analysis(); one extra compile)

  def validate(self) -> "Config":
    """``self`` when every field is in range, else ``ConfigError`` naming the first bad one."""
    for name, ok, need in _RULES:
      value = getattr(self, name)
      if isinstance(value, bool) or not ok(value):
        raise ConfigError(f"--{name.replace('_', '-')} {value!r}: must be {need}")
    from trady_jax.strategies import REGISTRY  # noqa: PLC0415 (imports jax)
    if self.strategy.lower() not in REGISTRY:
      raise ConfigError(f"--strategy {self.strategy!r}: unknown; known: {', '.join(REGISTRY)}")
    for name, known in (("allocation", ALLOCATIONS), ("medyate_norm", MEDYATE_NORMS)):
      if getattr(self, name) not in known:
        raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: unknown; known: "
                          f"{', '.join(known)}")
    from trady_jax.batchnorm import MODES  # noqa: PLC0415
    if self.bn not in MODES:
      raise ConfigError(f"--bn {self.bn!r}: unknown; known: {', '.join(MODES)}")
    if self.dataset.startswith("folder:") and not self.dataset[len("folder:"):]:
      raise ConfigError("--dataset folder:PATH needs a PATH")
    if self.tokenizer and not self.dataset.startswith(("glue/", "synthetic-text")):
      raise ConfigError(f"--tokenizer {self.tokenizer}: only text datasets (glue/*, "
                        f"synthetic-text) are tokenised; --dataset is {self.dataset!r}")
    return self

  def total_epochs(self) -> int:
    epochs = self.epochs or paper.epochs(self.dataset)
    return epochs + self.warmup_epochs

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "Config":
    return cls(**json.loads(text))


class ConfigError(ValueError):
  """A setting is out of range, inconsistent, or names something that does not exist."""
  exit_code = 2


def _int(lo: int, hi: float = math.inf):
  return lambda v: isinstance(v, int) and lo <= v < hi


def _share(v) -> bool:
  return isinstance(v, (int, float)) and 0 < v <= 1


# (field, check, what it must be): the range of every numeric field.
_RULES = (
    ("image_size", _int(8, 4097), "an integer from 8 to 4096"),
    ("train_limit", _int(0), ">= 0 (0 = all)"),
    ("test_limit", _int(0), ">= 0 (0 = all)"),
    ("batch_size", _int(1), ">= 1"),
    ("num_workers", _int(1), ">= 1"),
    ("budget", _int(0), ">= 0 units"),
    ("su_scheme", _int(1, 6), "1, 2, 3, 4 or 5"),
    ("topk_share", _share, "in (0, 1]"),
    ("alpha", _share, "in (0, 1]"),
    ("prefix_chunks", _int(1), ">= 1 (1 = off)"),
    ("oracle_batches", _int(0), ">= 0 (0 = the whole training split)"),
    ("epochs", _int(0), ">= 0 (0 = the papers' default for the dataset)"),
    ("warmup_epochs", _int(0), ">= 0"),
    ("lr", lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v > 0,
     "a finite number > 0"),
    ("seed", _int(0, 2 ** 32), "an integer from 0 to 2**32 - 1"),
    ("eval_every", _int(1), ">= 1"),
    ("max_steps_per_epoch", _int(0), ">= 0 (0 = no cap)"),
    ("log_every", _int(1), ">= 1"),
)


class ArgumentParser(argparse.ArgumentParser):
  """``argparse`` that reports a bad flag in one line, ``error: ...``, and exits 2."""

  def error(self, message):
    self.exit(2, f"error: {message} (see --help)\n")


def field_help() -> dict[str, str]:
  """``{field: its comment in the Config source}`` (continuation lines joined)."""
  out, name = {}, None
  for line in inspect.getsource(Config).splitlines():
    m = re.match(r"\s+(\w+): [^=]+=.*?#\s?(.*)$", line)
    if m:
      name, out[m.group(1)] = m.group(1), m.group(2).strip()
    elif name and re.match(r"\s+#", line) and not line.strip().startswith("# ---"):
      out[name] += " " + line.strip()[1:].strip()
    else:
      name = None
  return out


def _parse_bool(v: str) -> bool:
  if v.lower() in ("1", "true", "yes", "on"):
    return True
  if v.lower() in ("0", "false", "no", "off"):
    return False
  raise argparse.ArgumentTypeError(f"not a boolean: {v!r}")


def add_arguments(parser: argparse.ArgumentParser, defaults: Config | None = None) -> None:
  """One ``--field`` option per config field, with the field's default and comment as help."""
  defaults = defaults or Config()
  comments = field_help()
  for f in dataclasses.fields(Config):
    typ = _parse_bool if f.type in ("bool", bool) else {"int": int, "float": float}.get(
        str(f.type), str)
    default = getattr(defaults, f.name)
    text = f"{comments.get(f.name, '')} (default: {default!r})".replace("%", "%%")
    parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=typ, default=default,
                        help=text.strip(), metavar=str(f.type).upper())


def from_args(args: argparse.Namespace) -> Config:
  """The ``Config`` named by parsed arguments (unknown attributes ignored)."""
  names = {f.name for f in dataclasses.fields(Config)}
  return Config(**{k: v for k, v in vars(args).items() if k in names})


def override(cfg: Config, **changes: Any) -> Config:
  """A copy with some fields changed; unknown field names are an error."""
  names = {f.name for f in dataclasses.fields(Config)}
  unknown = set(changes) - names
  if unknown:
    raise KeyError(f"unknown config field(s) {sorted(unknown)}")
  return dataclasses.replace(cfg, **changes)
