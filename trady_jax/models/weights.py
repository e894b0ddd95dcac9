"""Pretrained weights into the ``{'kernel', 'bias'}`` parameter tree of the selective layers.

* int8 MIT tiny-training models (``NAME.json`` + ``NAME.npz``, ``../shared/weights/README.md``):
  ``W[o] = weight[o] * w_scales[o]``, ``b[o] = bias[o] * x_scale * w_scales[o]`` (BN folded);
* fp32 PyTorch state dicts with BatchNorm (MCUNet model zoo, torchvision, timm), folded at load:
  ``W' = W * gamma / sqrt(var + eps)``, ``b' = beta + (b - mean) * gamma / sqrt(var + eps)``.

Kernels go OIHW -> HWIO (depthwise ``(C, 1, k, k)`` -> ``(k, k, 1, C)``); dense ``(out, in)`` ->
``(in, out)``.

Weight files are untrusted: ``.pth`` files go through ``torch_file`` (no code runs), ``.npz`` files
are checked before numpy allocates (no pickles, no zip bombs, no entry larger than it declares),
int8 arrays must be integers with finite scales in ``[0, MAX_SCALE]``, loaded parameters must be
finite, and every error names the file.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import jax
import numpy as np

from trady_jax.models import torch_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPS = 1e-5  # epsilon of batchnorm.BatchNorm (PyTorch's default)
MAX_SCALE = 100.0  # largest int8 scale accepted (the shipped models' scales are at most 0.17)


class ConvKeys(NamedTuple):
  """State-dict keys of a conv: its weight, the prefix of its BatchNorm (or None) and conv bias."""
  weight: str
  bn: str | None = None
  bias: str | None = None


class DenseKeys(NamedTuple):
  """State-dict keys of a linear layer (PyTorch ``(out, in)`` weight)."""
  weight: str
  bias: str | None = None


def read_json(path: str | Path) -> dict:
  """A JSON file, with errors that name it."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"architecture file not found: {path}")
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise ValueError(f"{path} is not valid JSON: {err}") from err


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
  """All arrays of an ``.npz`` file, loaded eagerly so corruption shows here."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"weights file not found: {path}")
  try:
    _check_npz(path)
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
    raise ValueError(f"{path} is not a readable .npz archive: {err}") from err


def _check_npz(path: Path) -> None:
  """Refuse an ``.npz`` whose entries declare more data than they hold, before numpy allocates it."""
  with zipfile.ZipFile(path) as z:
    torch_file.check_inflation(z, path.stat().st_size)
    for info in z.infolist():
      with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
          raise ValueError(f"{info.filename}: unsupported .npy version {version}")
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(f)
      if dtype.hasobject:
        raise ValueError(f"{info.filename} holds Python objects")
      if math.prod(shape) * dtype.itemsize > info.file_size:
        raise ValueError(f"{info.filename} declares a {shape} {dtype} array but holds only "
                         f"{info.file_size} bytes")


def to_hwio(w: np.ndarray) -> np.ndarray:
  """OIHW (PyTorch) -> HWIO; a depthwise ``(C, 1, k, k)`` becomes ``(k, k, 1, C)``."""
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def _array(arrays: Mapping[str, np.ndarray], ref: Any, layer: str, name: str) -> np.ndarray:
  key = ref["array"] if isinstance(ref, dict) else ref
  if key not in arrays:
    raise KeyError(f"{layer}: array {key!r} ({name}) missing from the weights file")
  a = arrays[key]
  want = tuple(ref.get("shape", a.shape)) if isinstance(ref, dict) else a.shape
  if tuple(a.shape) != want:
    raise ValueError(f"{layer}: {name} has shape {a.shape}, the description says {want}")
  return a


def dequantize(entry: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
               layer: str) -> tuple[np.ndarray, np.ndarray]:
  """Float OIHW weight and bias of one int8 conv (``README.md``: per-output-channel scales)."""
  q = entry.get("params")
  if not isinstance(q, Mapping) or not {"weight", "bias", "w_scales", "x_scale"} <= set(q):
    have = sorted(q) if isinstance(q, Mapping) else q
    raise ValueError(f"{layer}: quantisation parameters need weight, bias, w_scales and x_scale; "
                     f"found {have}")
  w, b = _array(arrays, q["weight"], layer, "weight"), _array(arrays, q["bias"], layer, "bias")
  for name, a in (("weight", w), ("bias", b)):
    if not np.issubdtype(a.dtype, np.integer):
      raise ValueError(f"{layer}: int8 {name} has dtype {a.dtype}, expected integers")
  if w.ndim != 4 or w.min(initial=0) < -128 or w.max(initial=0) > 127:
    raise ValueError(f"{layer}: weight of shape {w.shape} is not an int8 OIHW kernel")
  scales = _scale(_array(arrays, q["w_scales"], layer, "w_scales"), layer, "w_scales")
  x_scale = float(_scale(q["x_scale"], layer, "x_scale"))
  if not (scales.shape == b.shape == (w.shape[0],)):
    raise ValueError(f"{layer}: weight {w.shape}, w_scales {scales.shape} and bias {b.shape} "
                     "disagree on the number of output channels")
  w = w.astype(np.float64) * scales[:, None, None, None]
  return w.astype(np.float32), (b * x_scale * scales).astype(np.float32)


def _scale(value: Any, layer: str, name: str) -> np.ndarray:
  """A quantisation scale as float64, refused unless finite and in ``[0, MAX_SCALE]`` (``x_scale``:
  above 0)."""
  try:
    s = np.asarray(value, np.float64)
  except (TypeError, ValueError) as err:
    raise ValueError(f"{layer}: {name} {value!r:.60} is not a number") from err
  strict = name == "x_scale"
  above = s > 0 if strict else s >= 0
  if not (np.isfinite(s).all() and above.all() and (s <= MAX_SCALE).all()):
    raise ValueError(f"{layer}: {name} must be finite and in {'(' if strict else '['}0, "
                     f"{MAX_SCALE}], got {np.array2string(s.ravel()[:4])}")
  return s


def int8_params(entries: Iterable[tuple[str, Mapping[str, Any]]],
                arrays: Mapping[str, np.ndarray]) -> dict:
  """Parameter tree of int8 description entries ``(path, entry)``; ``'classifier'`` is dense."""
  flat = {}
  for path, entry in entries:
    w, b = dequantize(entry, arrays, path)
    kernel = w.reshape(w.shape[:2]).T if path == "classifier" else to_hwio(w)
    flat[path] = {"kernel": kernel, "bias": b}
  return nest(flat)


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


def normalise_keys(state_dict: Mapping[str, Any],
                   renames: Sequence[tuple[str, str]] = ()) -> dict[str, np.ndarray]:
  """Numpy float arrays; drops ``module.`` prefixes and ``num_batches_tracked``; regex renames."""
  out = {}
  for k, v in state_dict.items():
    if k.endswith("num_batches_tracked"):
      continue
    k = re.sub(r"^(module\.)+", "", k)
    for pattern, repl in renames:
      k = re.sub(pattern, repl, k)
    out[k] = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
  return out


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
  ``sqrt(var + eps)``); ``split_bn`` separates the running statistics.
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


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
  """``.pth/.pt`` (read without torch), ``.safetensors`` (needs safetensors) or ``.npz`` -> numpy.

  A checkpoint dict holding ``'state_dict'`` or ``'model'`` is unwrapped.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"state dict file not found: {path}")
  if path.suffix in (".pth", ".pt", ".bin"):
    sd = torch_file.load(path)  # no PyTorch needed, and no code runs while loading
  elif path.suffix == ".safetensors":
    try:
      from safetensors.numpy import load_file
    except ImportError as err:
      raise ImportError(f"reading {path.name} needs safetensors: pip install safetensors") from err
    try:
      sd = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
      raise ValueError(f"{path} could not be read as safetensors: {err}") from err
  elif path.suffix == ".npz":
    sd = read_npz(path)
  else:
    raise ValueError(f"unknown state dict format {path.suffix!r} ({path}); "
                     "use .pth, .pt, .safetensors or .npz")
  for key in ("state_dict", "model"):
    if isinstance(sd, dict) and isinstance(sd.get(key), dict):
      sd = sd[key]
  if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
    raise ValueError(f"{path} holds a {type(sd).__name__}, not a state dict of named arrays")
  return normalise_keys(sd)


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


def nest(flat: Mapping[str, Any]) -> dict:
  """``{'a/b': v}`` -> ``{'a': {'b': v}}``."""
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
      out[k] = jax.tree.map(lambda a: jax.numpy.asarray(a, jax.numpy.float32), v)
  return out
