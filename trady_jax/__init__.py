"""trady-jax: memory-constrained fine-tuning by dynamic channel selection (TraDy, MeDyate)."""

from trady_jax import costs, layers, ops, selection
from trady_jax.selection import ALL, FROZEN, AllChannels, Channels
from trady_jax.sparse_update import SparseUpdateState, sparse_update

__version__ = "0.1.0"
