"""The int8 weights in ../shared: shipped architectures, activation ranges, loading."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from trady_jax import models
from trady_jax.models import convert
from trady_jax.models.formats import files, int8

from int8_files import MCU


@pytest.fixture(scope="module")
def shared_weights(shared_dir) -> Path:
  d = shared_dir / "weights"
  if not (d / "mbv2-w0.35.npz").is_file():
    pytest.skip(f"../shared not found: {d} holds the int8 weights")
  return d


@pytest.mark.parametrize("name", MCU)
def test_shipped_arch_matches_shared(shared_weights, name):
  full = json.loads((shared_weights / f"{name}.json").read_text())
  assert int8.load_arch(name) == int8.strip_arrays(full)


def _conv_outputs(name, weights_dir, x):
  """Every conv's output (before its activation) of the int8-weights model."""
  import flax.linen as nn
  from trady_jax import layers
  model, params = models.load_model(name, weights_dir=weights_dir, feature_mix=False,
                                    imagenet_head=True)
  out = {}

  def grab(f, args, kwargs, ctx):
    y = f(*args, **kwargs)
    if isinstance(ctx.module, layers.SelectiveConv):
      out["/".join(ctx.module.path)] = np.asarray(y)
    return y

  with nn.intercept_methods(grab):
    logits = model.apply({"params": params}, x)
  return out, np.asarray(logits)


def _check_ranges(name, weights_dir):
  """Float activations sit inside the int8 output ranges: scales and ReLU6 placement are right."""
  z = np.random.default_rng(13).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  outs, logits = _conv_outputs(name, weights_dir, jax.image.resize(z, (2, 128, 128, 3), "linear"))
  desc = files.read_json(weights_dir / f"{name}.json")
  assert logits.shape == (2, 1000) and np.isfinite(logits).all()
  for path, entry in int8.iter_entries(desc):
    if path == "classifier":
      continue
    q, y = entry["params"], outs[path]
    lo, hi = (-128 - q["y_zero"]) * q["y_scale"], (127 - q["y_zero"]) * q["y_scale"]
    if q["y_zero"] == -128:  # ReLU6: the clamp at hi (<= 6) rarely bites
      assert np.mean(y > hi) < 0.05, path
    else:  # linear: inside the range, and negative values are kept
      assert np.mean((y >= lo) & (y <= hi)) > 0.99 and np.mean(y < 0) > 0.1, path


def test_int8_activation_ranges_mbv2(shared_weights):
  _check_ranges("mbv2-w0.35", shared_weights)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mcunet-in1", "proxyless-w0.3"])
def test_int8_activation_ranges(shared_weights, name):
  _check_ranges(name, shared_weights)


@pytest.mark.parametrize("name", MCU)
def test_shared_int8_weights_load(shared_weights, name):
  desc = files.read_json(shared_weights / f"{name}.json")
  raw = files.read_npz(shared_weights / f"{name}.npz")
  model, params = models.load_model(name, 10, weights_dir=shared_weights, feature_mix=False)
  q = desc["blocks"][3]["depthwise"]["params"]
  w = raw[q["weight"]["array"]] * raw[q["w_scales"]["array"]][:, None, None, None]
  np.testing.assert_allclose(params["blocks_3"]["depthwise"]["kernel"], convert.to_hwio(w),
                             rtol=1e-6)
  assert params["classifier"]["kernel"].shape == (model.spec.features, 10)
