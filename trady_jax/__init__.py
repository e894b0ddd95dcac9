"""trady-jax: memory-constrained fine-tuning by dynamic channel selection (TraDy, MeDyate)."""

from trady_jax import (costs, layers, nnx_layers, ops, prefix, ranking, samplers, selection,
                       steps, xla)
from trady_jax.selection import ALL, FROZEN, AllChannels, Channels
from trady_jax.sparse_update import SparseUpdateState, sparse_update

__version__ = "0.1.0"

__all__ = ["ALL", "AllChannels", "Channels", "FROZEN", "SparseUpdateState", "costs", "layers",
           "nnx_layers", "ops", "prefix", "ranking", "samplers", "selection", "sparse_update",
           "steps", "xla"]
