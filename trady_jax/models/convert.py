"""PyTorch state dicts -> parameter trees of the selective layers: layout changes, BN folding.

fp32 checkpoints with BatchNorm (MCUNet model zoo, torchvision, timm; method-spec 8) are folded
at load, ``W' = W * gamma / sqrt(var + eps)``, ``b' = beta + (b - mean) * gamma / sqrt(var + eps)``,
or keep their BN (``keep_bn``). Kernels go OIHW -> HWIO (depthwise ``(C, 1, k, k)`` ->
``(k, k, 1, C)``); dense ``(out, in)`` -> ``(in, out)``. Which state-dict keys feed which layer is
a key map of ``ConvKeys`` / ``DenseKeys`` (``formats.zoo``, ``formats.torchvision``). The reverse,
BN restored in BN-folded weights, is ``calibration``.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from trady_jax.models.formats.files import normalise_keys
from trady_jax.models.params import nest

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPS = 1e-5  # epsilon of batchnorm.BatchNorm (PyTorch's default)


class ConvKeys(NamedTuple):
  """State-dict keys of a conv: its weight, the prefix of its BatchNorm (or None) and conv bias."""
  weight: str
  bn: str | None = None
  bias: str | None = None


class DenseKeys(NamedTuple):
  """State-dict keys of a linear layer (PyTorch ``(out, in)`` weight)."""
  weight: str
  bias: str | None = None


def to_hwio(w: np.ndarray) -> np.ndarray:
  """OIHW (PyTorch) -> HWIO; a depthwise ``(C, 1, k, k)`` becomes ``(k, k, 1, C)``.

  >>> to_hwio(np.zeros((8, 1, 3, 3))).shape
  (3, 3, 1, 8)
  """
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def fold_bn(w: np.ndarray, gamma, beta, mean, var, eps: float = 1e-5,
            bias=None) -> tuple[np.ndarray, np.ndarray]:
  """Fold an inference BatchNorm into the preceding conv (OIHW ``w``): exact in real arithmetic."""
  scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
  b = np.zeros_like(scale) if bias is None else np.asarray(bias, np.float64)
  w = np.asarray(w, np.float64) * scale.reshape((-1,) + (1,) * (np.ndim(w) - 1))
  b = np.asarray(beta, np.float64) + (b - np.asarray(mean, np.float64)) * scale
  return w.astype(np.float32), b.astype(np.float32)


def fold_input_norm(kernel: np.ndarray, bias: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> tuple[np.ndarray, np.ndarray]:
  """First conv (HWIO) reading ``[-1, 1]`` inputs (mean = std = 0.5), not ``(x - mean) / std``.

  ``(0.5 x + 0.5 - mean) / std = a x + c``: the kernel is scaled by ``a`` and ``conv(c)`` joins the
  bias. Exact except at zero-padded borders (padding is 0 in the new input space).
  """
  a = 0.5 / np.asarray(std, np.float64)
  c = (0.5 - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
  k = np.asarray(kernel, np.float64)
  return ((k * a[None, None, :, None]).astype(np.float32),
          (bias + np.einsum("hwio,i->o", k, c)).astype(np.float32))


def _get(sd: Mapping[str, np.ndarray], key: str, layer: str) -> np.ndarray:
  if key not in sd:
    near = [k for k in sd if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0]]
    raise KeyError(f"{layer}: state dict has no {key!r}" + (f" (found {near})" if near else ""))
  return sd[key]


def convert_state_dict(state_dict: Mapping[str, Any], key_map: Mapping[str, ConvKeys | DenseKeys],
                       *, eps: float = 1e-5, keep_bn: bool = False) -> dict:
  """Parameter tree of a PyTorch state dict; ``key_map`` maps module paths to its keys.

  BatchNorm is folded into the conv, or with ``keep_bn`` kept as ``{'kernel', 'bn': {'scale',
  'bias', 'mean', 'var'}}`` (a conv bias joins the running mean; the running variance is shifted
  by ``eps - BN_EPS`` so that ``batchnorm.BatchNorm``'s ``sqrt(var + 1e-5)`` is the checkpoint's
  ``sqrt(var + eps)``); ``params.split_bn`` separates the running statistics.
  """
  sd = normalise_keys(state_dict)
  flat = {}
  for path, keys in key_map.items():
    w = _get(sd, keys.weight, path)
    bias = _get(sd, keys.bias, path) if keys.bias else None
    if isinstance(keys, DenseKeys):
      if w.ndim != 2:
        raise ValueError(f"{path}: linear weight {keys.weight!r} has shape {w.shape}")
      b = np.zeros(w.shape[0], np.float32) if bias is None else bias
      flat[path] = {"kernel": np.ascontiguousarray(w.T, np.float32), "bias": b.astype(np.float32)}
      continue
    if w.ndim != 4:
      raise ValueError(f"{path}: conv weight {keys.weight!r} has shape {w.shape}, expected OIHW")
    if keys.bn:
      bn = [_get(sd, f"{keys.bn}.{n}", path)
            for n in ("weight", "bias", "running_mean", "running_var")]
      if keep_bn:
        mean = bn[2] - (0 if bias is None else bias)
        var = np.asarray(bn[3], np.float64) + eps - BN_EPS
        flat[path] = {"kernel": to_hwio(w.astype(np.float32)),
                      "bn": {k: np.asarray(v, np.float32) for k, v in
                             zip(("scale", "bias", "mean", "var"), (*bn[:2], mean, var))}}
        continue
      w, b = fold_bn(w, *bn, eps=eps, bias=bias)
    else:
      b = np.zeros(w.shape[0], np.float32) if bias is None else bias.astype(np.float32)
    flat[path] = {"kernel": to_hwio(w.astype(np.float32)), "bias": b}
  return nest(flat)
