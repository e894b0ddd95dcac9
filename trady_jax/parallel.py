"""Data parallelism with ``jax.sharding``: a 1-D device mesh, batch sharded, the rest replicated.

The selection, the sampler and ``sparse_update`` are unchanged: samplers run on replicated keys,
so every device (and every host) draws the same channels, and XLA's SPMD partitioner inserts the
gradient all-reduce. Multi-host runs call ``jax.distributed.initialize()`` first (``initialize``).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

PyTree = Any
AXIS = "data"


def initialize() -> bool:
  """Join a multi-host run when the environment describes one; True if it did.

  Recognised: ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``), or a
  SLURM / Cloud TPU environment that ``jax.distributed.initialize()`` detects by itself.
  """
  multi = (os.environ.get("JAX_COORDINATOR_ADDRESS") or
           int(os.environ.get("SLURM_NTASKS", "1")) > 1 or os.environ.get("TPU_WORKER_HOSTNAMES"))
  if not multi:
    return False
  jax.distributed.initialize()
  return True


def mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D ``('data',)`` mesh over ``devices`` (default: all devices of all hosts)."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), (AXIS,))


def replicated(m: Mesh) -> NamedSharding:
  return NamedSharding(m, P())


def batch_sharded(m: Mesh) -> NamedSharding:
  return NamedSharding(m, P(AXIS))


def check_batch(batch_size: int, m: Mesh) -> None:
  """Raise a clear error when the global batch does not split evenly over the devices."""
  if batch_size % m.size:
    raise ValueError(f"batch size {batch_size} is not divisible by the {m.size} devices of the mesh")


def shard_batch(batch: PyTree, m: Mesh) -> PyTree:
  """Place a host batch on the mesh, split along its first axis.

  Single host: the batch is the global batch. Multi-host: each process passes its local part.
  """
  s = batch_sharded(m)
  if jax.process_count() == 1:
    return jax.device_put(batch, s)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(s, np.asarray(x)), batch)


def replicate(tree: PyTree, m: Mesh) -> PyTree:
  """Copy a pytree (params, optimizer state, selection) onto every device of the mesh."""
  return jax.device_put(tree, replicated(m))


def jit_train_step(step: Callable, m: Mesh, *, batch_stats: bool = False,
                   **jit_kwargs) -> Callable:
  """``jax.jit`` of ``step(params, opt_state, selection, batch[, batch_stats])`` with
  data-parallel shardings. BN batch statistics are means over the sharded batch axis: XLA makes
  them global (all-reduce), the same statistics as on one device."""
  rep = replicated(m)
  return jax.jit(step, in_shardings=(rep, rep, rep, batch_sharded(m)) + (rep,) * batch_stats,
                 out_shardings=rep, **jit_kwargs)


def jit_eval_step(step: Callable, m: Mesh, *, batch_stats: bool = False) -> Callable:
  """``jax.jit`` of ``eval_step(params, batch[, batch_stats])`` with the batch sharded and sums
  replicated."""
  rep = replicated(m)
  return jax.jit(step, in_shardings=(rep, batch_sharded(m)) + (rep,) * batch_stats,
                 out_shardings=rep)
