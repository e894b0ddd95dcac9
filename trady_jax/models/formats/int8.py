"""MIT tiny-training int8 networks: description (``NAME.json``) -> ``NetSpec``, arrays -> params.

The format (``../shared/weights/README.md``; method-spec 8): ``first_conv``,
``blocks[i].{pointwise1, depthwise, pointwise2, residual, se}``, ``feature_mix``, ``classifier``,
each conv with its int8 quantisation parameters; activations are implicit in each conv's int8
output range (``activation_from_range``). Weights dequantise per output channel (BN folded):
``W[o] = weight[o] * w_scales[o]``, ``b[o] = bias[o] * x_scale * w_scales[o]``. Scales must be
finite and in ``[0, MAX_SCALE]``, arrays integers of the described shapes. The arch-only copies
shipped in ``models/arch/`` (``load_arch``) are the same descriptions without their arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from trady_jax.models.convert import to_hwio
from trady_jax.models.formats.files import read_json
from trady_jax.models.mcunet import Block, Conv, NetSpec, check_spec
from trady_jax.models.params import nest

ARCH_DIR = Path(__file__).resolve().parents[1] / "arch"
MAX_SCALE = 100.0  # largest int8 scale accepted (the shipped models' scales are at most 0.17)


def activation_from_range(q: Mapping[str, Any], tol: float = 0.05) -> str | None:
  """ReLU6 / ReLU / linear from an int8 conv's output range.

  The range is ``[(-128 - y_zero) * y_scale, (127 - y_zero) * y_scale]`` (weights README).

  ``y_zero = -128`` clamps at 0: ReLU6 when the upper end is at most 6 (calibration may clip
  lower), plain ReLU beyond; any other zero point is a linear output (e.g. ``pointwise2``).
  """
  if "y_zero" not in q or "y_scale" not in q:
    raise ValueError(f"quantisation parameters lack y_zero / y_scale: {sorted(q)}")
  if int(q["y_zero"]) != -128:
    return None
  return "relu6" if 255 * float(q["y_scale"]) <= 6 + tol else "relu"


def _conv_from_entry(e: Mapping[str, Any], where: str) -> Conv:
  try:
    k = e["kernel_size"]
    act = e.get("act") or activation_from_range(e["params"])
    k = int(k[0] if isinstance(k, list) else k)
    return Conv(int(e["in_channel"]), int(e["out_channel"]), k, int(e["stride"]), int(e["groups"]),
                None if act == "none" else act)
  except (KeyError, TypeError, ValueError) as err:
    raise ValueError(f"malformed conv description at {where}: {err!r}") from err


def iter_entries(desc: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
  """``(module path, description entry)`` of every conv and of the classifier, in forward order."""
  yield "first_conv", desc["first_conv"]
  for i, b in enumerate(desc["blocks"]):
    se = b.get("se") or {}
    res = b.get("residual")
    for name, e in (("pointwise1", b.get("pointwise1")), ("depthwise", b.get("depthwise")),
                    ("se_reduce", se.get("reduce")), ("se_expand", se.get("expand")),
                    ("pointwise2", b.get("pointwise2")),
                    ("shortcut", res if res and "kernel_size" in res else None)):
      if e is not None:
        yield f"blocks_{i}/{name}", e
  if desc.get("feature_mix") is not None:
    yield "feature_mix", desc["feature_mix"]
  yield "classifier", desc["classifier"]


def spec_from_description(desc: Mapping[str, Any], *, feature_mix: int | None = None) -> NetSpec:
  """NetSpec of a tiny-training description; ``feature_mix`` adds a ``C -> feature_mix`` 1x1 ReLU6
  conv when the description has none (the zoo models' final conv, method-spec 0.3).

  A malformed or inconsistent description (see ``check_spec``) is a ``ValueError``."""
  try:
    spec = _parse_description(desc, feature_mix)
  except (KeyError, TypeError, AttributeError, IndexError) as err:
    raise ValueError(f"malformed architecture description: {err!r}") from err
  head = desc["classifier"]
  return check_spec(spec, head.get("in_channel") if isinstance(head, Mapping) else None)


def _parse_description(desc: Mapping[str, Any], feature_mix: int | None) -> NetSpec:
  if not isinstance(desc, Mapping):
    raise TypeError(f"the description is a {type(desc).__name__}, not a JSON object")
  missing = {"first_conv", "blocks", "classifier"} - set(desc)
  if missing:
    raise ValueError(f"architecture description lacks {sorted(missing)}")
  blocks = []
  for i, b in enumerate(desc["blocks"]):
    c = {k: _conv_from_entry(b[k], f"blocks[{i}].{k}") if b.get(k) else None
         for k in ("pointwise1", "depthwise", "pointwise2")}
    if c["depthwise"] is None or c["pointwise2"] is None:
      raise ValueError(f"blocks[{i}] needs a depthwise and a pointwise2 conv")
    se = b.get("se")
    se = (_conv_from_entry(se["reduce"], f"blocks[{i}].se.reduce"),
          _conv_from_entry(se["expand"], f"blocks[{i}].se.expand")) if se else None
    res = b.get("residual")
    shortcut = _conv_from_entry(res, f"blocks[{i}].residual") if res and "kernel_size" in res \
        else res is not None
    blocks.append(Block(c["depthwise"], c["pointwise2"], c["pointwise1"], se, shortcut))
  fm, added = desc.get("feature_mix"), False
  fm = _conv_from_entry(fm, "feature_mix") if fm else None
  if fm is None and feature_mix:
    fm, added = Conv(blocks[-1].pointwise2.out_channels, int(feature_mix), act="relu6"), True
  first = desc["first_conv"]
  return NetSpec(_conv_from_entry(first, "first_conv"), tuple(blocks), fm,
                 int(desc["classifier"]["out_channel"]), int(first.get("in_shape", 128)), added)


def strip_arrays(desc: Any) -> Any:
  """The description without its array references (what ``arch/*.json`` ship)."""
  if isinstance(desc, dict):
    return {k: strip_arrays(v) for k, v in desc.items()
            if not (isinstance(v, dict) and "array" in v)}
  if isinstance(desc, list):
    return [strip_arrays(v) for v in desc]
  return desc


def load_arch(name: str) -> dict:
  """The shipped arch-only description ``arch/<name>.json``."""
  path = ARCH_DIR / f"{name}.json"
  if not path.is_file():
    known = sorted(p.stem for p in ARCH_DIR.glob("*.json"))
    raise FileNotFoundError(f"no shipped architecture {name!r} in {ARCH_DIR}; known: {known}")
  return read_json(path)


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
