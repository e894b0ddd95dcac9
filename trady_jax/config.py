"""Run configuration: one dataclass, a comment on every field, overridable from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

# Epochs per dataset in the papers (method-spec 10); the 5 warm-up epochs come on top.
PAPER_EPOCHS = {"cifar10": 100, "cifar100": 50, "food101": 50, "vww": 50,
                "cub200": 200, "pets": 200, "flowers102": 200}


@dataclasses.dataclass
class Config:
  """Everything a fine-tuning run depends on; a run is reproducible from ``(config, seed)``."""
  # --- model ---
  arch: str = "mbv2-w0.35"          # 'mbv2-w0.35' | 'mcunet-in1' | 'proxyless-w0.3' | 'tiny' | ...
  pretrained: bool = True           # load ImageNet weights (falls back to random init, loudly)
  weights_dir: str = ""             # folder of pretrained weights; '' = ../shared/weights or cache
  image_size: int = 128             # input resolution (the papers: 128)
  # --- data ---
  dataset: str = "cifar10"          # 'cifar10', 'cifar100', 'cub200', 'flowers102', 'food101',
                                    # 'pets', 'vww', 'folder:<root>' or 'synthetic'
  data_dir: str = ""                # tfds data_dir or image-folder root; '' = defaults
  offline: bool = False             # use the CIFAR-10 copy in ../shared/data, never the network
  train_limit: int = 0              # use only this many (class-balanced) train images; 0 = all
  test_limit: int = 0               # likewise for the test split
  batch_size: int = 32              # the predecessor code's 32
  num_workers: int = 2              # decoding/augmentation threads
  # --- strategy and budget ---
  strategy: str = "trady"           # a name from trady_jax.strategies.REGISTRY
  budget: int = 27946               # B_mem in units (elements of weights + activations per sample)
  su_scheme: int = 1                # MIT Sparse Update scheme (1-5) for strategy 'su'
  ranking: str = ""                 # ranking JSON from experiments/rank_layers.py; '' = shipped one
  topk_share: float = 0.97          # TraDy: keep the top layers holding this share of layer RGN
  alpha: float = 0.2                # MeDyate: smallest K with B_mem / M_K <= alpha
  fixed_counts: bool = True         # per-layer channel counts fixed for the run (one compilation);
                                    # False = the papers' variable fill rule (recompiles)
  prefix_chunks: int = 8            # run the frozen layers below the shallowest trained one
                                    # (and evaluation) in this many batch chunks: less memory,
                                    # same result; 1 = off
  oracle_batches: int = 4           # batches of full gradient for Det RGN / Prob Raw selections
  # --- optimisation (method-spec 10) ---
  epochs: int = 0                   # training epochs after warm-up; 0 = the papers' per dataset
  warmup_epochs: int = 5            # linear warm-up from 0 to lr, counted on top of `epochs`
  lr: float = 0.125                 # peak learning rate (SGD, no momentum, no weight decay)
  seed: int = 0                     # the papers use 0, 42, 100
  # --- bookkeeping ---
  eval_every: int = 1               # evaluate the test split every this many epochs (and last)
  max_steps_per_epoch: int = 0      # cap on steps per epoch, for smoke runs; 0 = no cap
  progress: bool = True             # tqdm progress bars

  def total_epochs(self) -> int:
    epochs = self.epochs or PAPER_EPOCHS.get(self.dataset, 50)
    return epochs + self.warmup_epochs

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "Config":
    return cls(**json.loads(text))


def _parse_bool(v: str) -> bool:
  if v.lower() in ("1", "true", "yes", "on"):
    return True
  if v.lower() in ("0", "false", "no", "off"):
    return False
  raise argparse.ArgumentTypeError(f"not a boolean: {v!r}")


def add_arguments(parser: argparse.ArgumentParser, defaults: Config | None = None) -> None:
  """One ``--field`` option per config field, with the field's default."""
  defaults = defaults or Config()
  for f in dataclasses.fields(Config):
    typ = _parse_bool if f.type in ("bool", bool) else {"int": int, "float": float}.get(
        str(f.type), str)
    parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=typ,
                        default=getattr(defaults, f.name))


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
