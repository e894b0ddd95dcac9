"""A tiny int8 description in the tiny-training format, its files, and the int8 networks."""

import json
from pathlib import Path

import numpy as np

MCU = ("mbv2-w0.35", "mcunet-in1", "proxyless-w0.3")


def tiny_int8(rng):
  """A 3-conv description in the tiny-training format and its arrays."""
  arrays = {}

  def conv(name, cin, cout, k, s, g, y_zero):
    arrays[f"{name}.w"] = rng.integers(-127, 128, (cout, cin // g, k, k), dtype=np.int8)
    arrays[f"{name}.b"] = rng.integers(-500, 500, cout).astype(np.int32)
    arrays[f"{name}.s"] = rng.uniform(0.001, 0.01, cout).astype(np.float32)
    ref = lambda n: {"array": f"{name}.{n}", "shape": list(arrays[f"{name}.{n}"].shape)}
    return {"in_channel": cin, "out_channel": cout, "kernel_size": [k, k], "stride": s, "groups": g,
            "params": {"weight": ref("w"), "bias": ref("b"), "w_scales": ref("s"), "x_scale": 0.02,
                       "x_zero": 0, "y_zero": y_zero,
                       "y_scale": 6 / 255 if y_zero == -128 else 0.1}}

  desc = {"first_conv": conv("fc", 3, 8, 3, 2, 1, -128),
          "blocks": [{"pointwise1": None, "depthwise": conv("dw", 8, 8, 3, 1, 8, -128),
                      "pointwise2": conv("pw", 8, 8, 1, 1, 1, 5), "residual": {"params": {}},
                      "se": None}],
          "feature_mix": None, "classifier": dict(conv("cls", 8, 5, 1, 1, 1, 0), in_channel=8)}
  return desc, arrays


def write_int8(d: Path, name: str, desc, arrays):
  (d / f"{name}.json").write_text(json.dumps(desc))
  np.savez(d / f"{name}.npz", **arrays)
