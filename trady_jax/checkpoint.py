"""Per-epoch run checkpoints with orbax: everything needed to resume the same run.

A checkpoint holds ``params``, the optimizer state, the run's PRNG key, the epoch, the current
selection's indices and the sampler state (MeDyate's norm vector), plus the run's config as JSON.
Restoring checks the config: a checkpoint written by a different run is an error, never a silent
fresh start; so is a checkpoint that cannot be read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be used for this run."""


def _abstract(tree: PyTree) -> PyTree:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class RunCheckpoints:
  """Orbax ``CheckpointManager`` over ``workdir/checkpoints``, one step per finished epoch."""

  def __init__(self, workdir: str | Path, config_json: str, max_to_keep: int = 2):
    self.dir = Path(workdir).absolute() / "checkpoints"
    self.config_json = config_json
    self.manager = ocp.CheckpointManager(
        self.dir, item_names=("state", "meta"),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False))

  def latest_epoch(self) -> int | None:
    return self.manager.latest_step()

  def save(self, epoch: int, state: PyTree, meta: dict) -> None:
    """Write the state after ``epoch`` epochs (atomic: orbax writes to a temp dir, then renames)."""
    meta = dict(meta, epoch=epoch, config=json.loads(self.config_json))
    self.manager.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    self.manager.wait_until_finished()

  def restore(self, template: PyTree) -> tuple[int, PyTree, dict] | None:
    """``(epoch, state, meta)`` of the latest checkpoint, or ``None`` when there is none.

    Raises:
      CheckpointError: unreadable, or written by a run with another config or state layout.
    """
    epoch = self.latest_epoch()
    if epoch is None:
      return None
    where = self.dir / str(epoch)
    try:
      meta = self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
          "meta"]
    except Exception as e:  # orbax raises many types for damaged files
      raise CheckpointError(f"checkpoint {where} cannot be read ({type(e).__name__}: {e}); "
                            "delete it to start over") from e
    if meta.get("config") != json.loads(self.config_json):
      theirs, ours = meta.get("config", {}), json.loads(self.config_json)
      diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
      raise CheckpointError(f"checkpoint {where} belongs to a run with a different config "
                            f"(fields {diff}); use another workdir or the same config")
    try:
      state = self.manager.restore(epoch, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_abstract(template))))["state"]
    except Exception as e:
      raise CheckpointError(f"checkpoint {where} does not match this run's state "
                            f"({type(e).__name__}: {e})") from e
    _check_same_layout(template, state, where)
    return epoch, state, meta

  def close(self) -> None:
    self.manager.close()


def _check_same_layout(template: PyTree, state: PyTree, where: Path) -> None:
  for a, b in zip(jax.tree.leaves(template), jax.tree.leaves(state)):
    if np.shape(a) != np.shape(b):
      raise CheckpointError(f"checkpoint {where}: array of shape {np.shape(b)} where the run "
                            f"has {np.shape(a)}")
