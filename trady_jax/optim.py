"""The papers' optimisation (method-spec 10): SGD without momentum or weight decay, linear warm-up
from 0 to the peak lr, then cosine to 0, per step. ``Run`` takes any optax optimiser in its place
(``optimizer(schedule) -> GradientTransformation``); selective runs wrap it in ``sparse_update``
so it keeps state only for the leaves the strategy can train."""

from __future__ import annotations

from typing import Callable

import optax

from trady_jax.config import Config

Optimizer = Callable[[optax.Schedule], optax.GradientTransformation]


def sgd(schedule: optax.Schedule) -> optax.GradientTransformation:
  """The papers' optimiser: plain SGD (no momentum, no weight decay) at ``schedule``."""
  return optax.sgd(schedule)


def learning_rate(cfg: Config, steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up from 0 to ``cfg.lr`` over the warm-up epochs, then cosine to 0, per step."""
  total = cfg.total_epochs() * steps_per_epoch
  warmup = cfg.warmup_epochs * steps_per_epoch
  warmup = max(warmup, 1)
  return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(total, warmup + 1), 0.0)
