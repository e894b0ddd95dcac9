"""Stopping a run that diverged: a non-finite loss or parameter ends it before anything of that
epoch is saved (``DivergedError``, exit code 3; the run loop writes ``WORKDIR/diverged.json``)."""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

PyTree = Any


class DivergedError(RuntimeError):
  """Training reached a non-finite loss or parameter; the run stopped before saving it."""
  exit_code = 3

  def __init__(self, epoch: int, step: int | None, what: str):
    self.record = {"epoch": epoch, "step": step, "what": what}
    at = f"epoch {epoch}" + ("" if step is None else f", step {step}")
    super().__init__(f"training diverged at {at} ({what}); nothing of that epoch was saved. "
                     "Try a lower --lr in a new workdir")


@jax.jit
def _all_finite(tree: PyTree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def check_finite(epoch: int, record: Mapping, params: PyTree) -> None:
  """``DivergedError`` unless the parameters and the epoch's losses are all finite."""
  if not bool(_all_finite(params)):
    raise DivergedError(epoch, None, "non-finite parameters")
  for k in ("train_loss", "test_loss"):
    if k in record and not math.isfinite(record[k]):
      raise DivergedError(epoch, None, f"{k} {record[k]}")
