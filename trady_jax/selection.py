"""The selection pytree: which parameters, and which input channels of them, are trained.

A selection mirrors the parameter pytree leaf for leaf. Each leaf is one of

* ``FROZEN`` (``optax.MaskedNode()``): the leaf is not trained; the layer stops its gradient;
* ``ALL`` (``AllChannels()``): the leaf is trained whole (the classifier, always);
* ``Channels(idx, axis, multiplier)``: only input channels ``idx`` (int32, static length) of a kernel
  are trained; the selective layer stores only those channels' activations;
* ``OutputChannels(idx)``: only output channels ``idx`` of a kernel are trained (Velocity);
  the layer stores its whole input.

``FROZEN`` and ``ALL`` are childless pytree nodes, so they are part of the tree *structure*; the
``idx`` arrays are the only data. Two selections with the same structure and the same per-layer
index lengths share one compiled train step. An index array may end in ``PAD`` slots (a static
per-layer capacity holding a varying count, ``samplers``): a padded slot stores a zero activation
and its gradient is dropped, so it trains nothing. The same selection drives the backward pass (what the
layers store and compute) and the update (``sparse_update``): one source of truth.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any

FROZEN = optax.MaskedNode()
# Index of an unused slot of a padded index array: out of range for every layer, so gathers fill
# zeros and scatters drop it (``ops``); small enough that ``PAD * multiplier`` fits in int32.
PAD = 1 << 20
# Leaves every strategy trains whole, uncharged: the classifier (method-spec 1.2) and BatchNorm's
# scale and shift (the papers' PyTorch protocol trains them; ``batchnorm``).
ALWAYS = ("classifier", r"/bn/(scale|bias)$")


class AllChannels(NamedTuple):
  """Marks a parameter leaf trained whole (no channel selection)."""


ALL = AllChannels()


@flax.struct.dataclass
class Channels:
  """Selected input channels of one kernel.

  Attributes:
    idx: int32 ``(k,)`` distinct channel indices, possibly followed by ``PAD`` slots; ``k`` is
      static for a compilation.
    axis: static axis of the kernel that indexes input channels: ``-2`` for HWIO conv kernels and
      ``(in, out)`` dense kernels, ``-1`` for depthwise kernels ``(kh, kw, 1, C * multiplier)``.
    multiplier: static depthwise channel multiplier (output channels per input channel).
  """
  idx: jax.Array
  axis: int = flax.struct.field(pytree_node=False, default=-2)
  multiplier: int = flax.struct.field(pytree_node=False, default=1)

  def mask(self, shape: Sequence[int]) -> jax.Array:
    """Boolean mask broadcastable to a kernel of ``shape``: True on the selected slices.

    >>> Channels(jnp.array([0, 2, PAD])).mask((1, 1, 4, 8)).ravel().tolist()
    [True, False, True, False]
    """
    n = shape[self.axis] // self.multiplier
    m = jnp.zeros((n,), bool).at[self.idx].set(True, mode="drop")  # PAD slots dropped
    if self.multiplier > 1:
      m = jnp.repeat(m, self.multiplier)
    view = [1] * len(shape)
    view[self.axis] = shape[self.axis]
    return m.reshape(view)


@flax.struct.dataclass
class OutputChannels(Channels):
  """Selected output channels (neurons, WACV-24 Velocity) of one conv or dense kernel: the last
  kernel axis, so ``mask`` and ``sparse_update`` restrict the update to ``W[..., idx]``. The layer
  keeps its whole input for the backward pass (``ops.output_selective_conv`` / ``_dense``)."""
  axis: int = flax.struct.field(pytree_node=False, default=-1)


def is_marker(x: Any) -> bool:
  """True for the leaves of a selection: ``FROZEN``, ``ALL`` or ``Channels``."""
  return isinstance(x, (optax.MaskedNode, AllChannels, Channels))


def map_selection(fn: Callable[..., Any], selection: PyTree, *rest: PyTree) -> PyTree:
  """``jax.tree.map`` over a selection's leaves (markers included) and matching trees."""
  return jax.tree.map(fn, selection, *rest, is_leaf=is_marker)


def path_str(path) -> str:
  """``'blocks_3/depthwise/kernel'`` for a ``jax.tree_util`` key path."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def leaf_paths(params: PyTree) -> list[str]:
  """The ``'a/b/kernel'`` paths of all parameter leaves, in tree order.

  >>> leaf_paths({"conv": {"kernel": 0, "bias": 0}, "head": {"kernel": 0}})
  ['conv/bias', 'conv/kernel', 'head/kernel']
  """
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def at_path(tree: PyTree, path: str) -> Any:
  """The node of a nested-dict tree at ``'a/b/kernel'``.

  >>> at_path({"conv": {"kernel": 3}}, "conv/kernel")
  3
  """
  for key in path.split("/"):
    tree = tree[key]
  return tree


def build(params: PyTree, channels: Mapping[str, Channels], *,
          trainable: Sequence[str] = ALWAYS) -> PyTree:
  """A selection for ``params``.

  Args:
    params: the parameter pytree.
    channels: ``{leaf path: Channels}`` for the kernels trained by channel.
    trainable: regexes; parameter leaves whose path matches one (``re.search``) are ``ALL``.
      Every other leaf is ``FROZEN``.

  Raises:
    KeyError: a path in ``channels`` names no parameter leaf (lists the known kernels).

  >>> params = {"conv": {"kernel": jnp.zeros((3, 3, 8, 16)), "bias": jnp.zeros(16)},
  ...           "classifier": {"kernel": jnp.zeros((16, 10))}}
  >>> s = build(params, {"conv/kernel": Channels(jnp.array([1, 5]))})
  >>> s["conv"]["bias"], s["classifier"]["kernel"], counts(s)
  (MaskedNode(), AllChannels(), {'conv/kernel': 2})
  """
  paths = leaf_paths(params)
  unknown = sorted(set(channels) - set(paths))
  if unknown:
    kernels = [p for p in paths if p.endswith("kernel")]
    raise KeyError(f"unknown layer(s) {unknown}; selectable kernels are: {kernels}")
  patterns = [re.compile(t) for t in trainable]

  def leaf(path, param):
    p = path_str(path)
    if p in channels:
      _check_channels(p, channels[p], np.shape(param))
      return channels[p]
    return ALL if any(r.search(p) for r in patterns) else FROZEN

  return jax.tree_util.tree_map_with_path(leaf, params)


def pool(params: PyTree, paths: Sequence[str], *, trainable: Sequence[str] = ALWAYS) -> PyTree:
  """Every leaf a selection over the candidate kernels ``paths`` can ever train, as a selection:
  ``ALL`` for those kernels and the ``trainable`` leaves, ``FROZEN`` for the rest.

  ``sparse_update(inner, pool=...)`` keeps ``inner``'s state only for these leaves. A sampler's
  pool is ``pool(params, [l.path for l in sampler.layers], trainable=sampler.trainable)``.

  >>> p = {"a": {"kernel": jnp.zeros((1, 1, 4, 2))}, "b": {"kernel": jnp.zeros((1, 1, 2, 2))},
  ...      "classifier": {"kernel": jnp.zeros((2, 3))}}
  >>> [type(s).__name__ for s in jax.tree.leaves(pool(p, ["b/kernel"]), is_leaf=is_marker)]
  ['MaskedNode', 'AllChannels', 'AllChannels']
  """
  return build(params, {}, trainable=(*trainable, *(f"^{re.escape(p)}$" for p in paths)))


def trained_mask(selection: PyTree) -> PyTree:
  """Per-leaf ``bool``: ``False`` where ``selection`` is ``FROZEN`` (an ``optax.masked`` mask).

  >>> trained_mask({"a": FROZEN, "b": ALL})
  {'a': False, 'b': True}
  """
  return map_selection(lambda s: not isinstance(s, optax.MaskedNode), selection)


def _check_channels(path: str, c: Channels, shape: Sequence[int]) -> None:
  """Clear errors for indices that do not fit the kernel (checked when they are concrete)."""
  if len(shape) < 2 or shape[c.axis] % c.multiplier:
    raise ValueError(f"{path}: a kernel of shape {tuple(shape)} has no input-channel axis "
                     f"{c.axis} with multiplier {c.multiplier}")
  if c.idx.ndim != 1:
    raise ValueError(f"{path}: channel indices must be 1-D, got shape {c.idx.shape}")
  if isinstance(c.idx, jax.core.Tracer):
    return
  n, idx = shape[c.axis] // c.multiplier, np.asarray(c.idx)
  idx = idx[idx != PAD]
  if idx.size and (idx.min() < 0 or idx.max() >= n):
    raise ValueError(f"{path}: channel indices must lie in [0, {n}), got {idx.min()}..{idx.max()}")
  if len(np.unique(idx)) != idx.size:
    raise ValueError(f"{path}: channel indices must be distinct")


def _channel_leaves(selection: PyTree) -> list[tuple[str, Channels]]:
  flat = jax.tree_util.tree_flatten_with_path(selection, is_leaf=is_marker)[0]
  return [(path_str(p), s) for p, s in flat if isinstance(s, Channels)]


def counts(selection: PyTree) -> dict[str, int]:
  """``{path: k}``: the channels each channel-selected leaf trains (``PAD`` slots not counted).

  >>> counts({"conv": {"kernel": Channels(jnp.array([4, 1, PAD]))}})
  {'conv/kernel': 2}
  """
  return {p: int(np.sum(np.asarray(s.idx) != PAD)) for p, s in _channel_leaves(selection)}


def capacities(selection: PyTree) -> dict[str, int]:
  """``{path: len(idx)}``, padded slots included: the signature that decides compilation.

  >>> capacities({"conv": {"kernel": Channels(jnp.array([4, 1, PAD]))}})
  {'conv/kernel': 3}
  """
  return {p: int(s.idx.shape[0]) for p, s in _channel_leaves(selection)}


def mask_tree(selection: PyTree, params: PyTree) -> PyTree:
  """Per-leaf boolean masks (``True`` = trained), broadcastable to ``params``' leaves.

  >>> m = mask_tree({"w": Channels(jnp.array([1])), "b": FROZEN},
  ...               {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)})
  >>> m["w"].ravel().tolist(), m["b"].tolist()
  ([False, True], [False])
  """

  def leaf(s, p):
    if isinstance(s, Channels):
      return s.mask(p.shape)
    return jnp.full((1,) * p.ndim, isinstance(s, AllChannels))

  return map_selection(leaf, selection, params)


def as_numpy(selection: PyTree | None, *, sort: bool = True) -> dict[str, np.ndarray]:
  """``{path: indices}`` on the host without ``PAD`` slots (sorted unless ``sort=False``, which
  keeps the draw order for checkpoints), for logging and comparisons; ``{}`` for ``None``.

  >>> as_numpy({"conv": {"kernel": Channels(jnp.array([4, 1, PAD]))}})
  {'conv/kernel': array([1, 4], dtype=int32)}
  """
  if selection is None:
    return {}
  order = np.sort if sort else np.asarray
  return {p: order(np.asarray(s.idx)[np.asarray(s.idx) != PAD])
          for p, s in _channel_leaves(selection)}
