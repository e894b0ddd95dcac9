"""Parameter trees of a Flax module: fresh values, loaded weights merged in and checked.

Fresh values follow the layers' own initialisers (``layers.SelectiveConv``: LeCun-normal kernels
truncated at 2 sigma, zero biases, unit BN scales) and PyTorch's fresh BN statistics (means 0,
variances 1), drawn with numpy so that no XLA kernel is compiled per shape.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trady_jax import selection as sel


def nest(flat: Mapping[str, Any]) -> dict:
  """``{'a/b': v}`` -> ``{'a': {'b': v}}``.

  >>> nest({"a/b": 1, "a/c": 2, "d": 3})
  {'a': {'b': 1, 'c': 2}, 'd': 3}
  """
  out: dict = {}
  for path, v in flat.items():
    *parents, leaf = path.split("/")
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def _flat(tree: Any) -> dict[str, Any]:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {jax.tree_util.keystr(p, simple=True, separator="/"): v for p, v in leaves}


def _example(module: nn.Module) -> jax.ShapeDtypeStruct:
  """An input ``module`` accepts: token ids for a text model (its config has a vocabulary), an
  image of the config's ``image_size`` for a vision transformer, else a 32x32 image."""
  cfg = getattr(module, "config", None)
  if hasattr(cfg, "vocab_size"):
    return jax.ShapeDtypeStruct((1, 8), jnp.int32)
  size = getattr(cfg, "image_size", 32)
  return jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)


def _variable_shapes(module: nn.Module) -> dict:
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x), _example(module))


def param_shapes(module: nn.Module) -> dict:
  """``jax.ShapeDtypeStruct`` tree of ``module``'s parameters (nothing computed)."""
  return _variable_shapes(module)["params"]


def init_params(module: nn.Module, seed: int = 0) -> dict:
  """Fresh parameters: kernels LeCun-normal (truncated at 2 sigma, fan-in = all but the last axis,
  as the layers' default initialiser), embeddings and learned tensors (``layers.Embed`` /
  ``Learned``) normal with standard deviation 0.02 truncated at 2 sigma (BERT's, ViT's), biases
  zero, norm scales one.

  Drawn with numpy: XLA on CPU compiles one random kernel per distinct shape (about 0.5 s each).
  """
  rng = np.random.default_rng(seed)

  def draw(path, s):
    leaf = jax.tree_util.keystr(path[-1:], simple=True)
    if leaf not in ("kernel", "embedding", "value"):
      return (jnp.ones if leaf == "scale" else jnp.zeros)(s.shape, s.dtype)
    z = rng.standard_normal(s.shape)
    while (bad := np.abs(z) > 2).any():
      z[bad] = rng.standard_normal(int(bad.sum()))
    std = (np.sqrt(1.0 / np.prod(s.shape[:-1])) / 0.87962566103423978 if leaf == "kernel"
           else 0.02)
    return jnp.asarray(z * std, s.dtype)

  return jax.tree_util.tree_map_with_path(draw, param_shapes(module))


def init_batch_stats(module: nn.Module) -> dict:
  """BN running statistics of a fresh ``module``: means 0, variances 1 (PyTorch's)."""
  shapes = _variable_shapes(module).get("batch_stats", {})
  return jax.tree_util.tree_map_with_path(
      lambda p, s: (jnp.ones if jax.tree_util.keystr(p[-1:], simple=True) == "var"
                    else jnp.zeros)(s.shape, s.dtype), dict(shapes))


def check_params(params: Any, reference: Any, *, where: str = "weights") -> None:
  """Raise if ``params`` and ``reference`` (e.g. ``jax.eval_shape``) differ in leaves or shapes, or
  if a value of ``params`` is not finite."""
  got, want = _flat(params), _flat(reference)
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  if missing or extra:
    raise ValueError(f"{where} do not match the model: missing {missing[:5]}, "
                     f"unexpected {extra[:5]}")
  for k, ref in want.items():
    if tuple(np.shape(got[k])) != tuple(ref.shape):
      raise ValueError(f"{where}: layer {k.rsplit('/', 1)[0]!r} {k.rsplit('/', 1)[1]} has shape "
                       f"{tuple(np.shape(got[k]))}, the model expects {tuple(ref.shape)}")
    if not np.isfinite(np.asarray(got[k])).all():
      raise ValueError(f"{where}: layer {k.rsplit('/', 1)[0]!r} {k.rsplit('/', 1)[1]} holds "
                       "NaN or infinite values")


def merge_params(init: Mapping[str, Any], loaded: Mapping[str, Any],
                 skip: Iterable[str] = ()) -> dict:
  """``init`` with each top-level entry of ``loaded`` (except ``skip``) put in as float32 arrays."""
  skip = set(skip)
  out = dict(init)
  for k, v in loaded.items():
    if k not in skip:
      out[k] = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), v)
  return out


def split_bn(tree: Mapping[str, Any]) -> tuple[dict, dict]:
  """``(params, batch_stats)``: the ``bn/mean`` and ``bn/var`` leaves moved to their own tree."""
  params, stats = {}, {}
  for k, v in tree.items():
    if not isinstance(v, Mapping):
      params[k] = v
    elif k == "bn":
      params[k] = {n: a for n, a in v.items() if n not in ("mean", "var")}
      stats[k] = {n: a for n, a in v.items() if n in ("mean", "var")}
    else:
      params[k], sub = split_bn(v)
      if sub:
        stats[k] = sub
  return params, stats


def module_paths(params: dict, *skip: str) -> list[str]:
  """Paths of the layers owning ``params``' leaves (``'blocks_0/depthwise'``), top-level names in
  ``skip`` left out."""
  out = []
  for p in sel.leaf_paths(params):
    layer = p.rsplit("/", 1)[0].removesuffix("/bn")
    if p.split("/", 1)[0] not in skip and layer not in out:
      out.append(layer)
  return out
