"""Hostile int8 weights and architecture descriptions: bad scales, wrong dtypes, cut-down JSON.

Every case is generated here (no network, no torch) and must end in a clear error that names the
file, or in a correct result; none may run code, crash the interpreter or go silently wrong.
"""

from pathlib import Path

import numpy as np
import pytest

from trady_jax import models
from trady_jax.models.formats import int8

from int8_files import tiny_int8, write_int8


def _int8_dir(tmp_path, edit_desc=None, edit_arrays=None) -> Path:
  desc, arrays = tiny_int8(np.random.default_rng(0))
  if edit_desc:
    edit_desc(desc)
  if edit_arrays:
    edit_arrays(arrays)
  write_int8(tmp_path, "mcunet-in1", desc, arrays)
  return tmp_path


def _set_q(path, key, value):
  def edit(desc):
    entry = desc["blocks"][0][path] if path != "first_conv" else desc["first_conv"]
    if value is None:
      entry["params"].pop(key)
    else:
      entry["params"][key] = value
  return edit


@pytest.mark.parametrize("edit,match", [
    (_set_q("depthwise", "x_scale", None), "x_scale"),
    (_set_q("depthwise", "x_scale", float("nan")), "x_scale must be finite"),
    (_set_q("first_conv", "x_scale", 0.0), "x_scale must be finite"),
    (_set_q("first_conv", "x_scale", 1e12), "x_scale must be finite"),
    (_set_q("first_conv", "x_scale", "two"), "x_scale"),
])
def test_bad_x_scale_is_a_clear_error(tmp_path, edit, match):
  d = _int8_dir(tmp_path, edit_desc=edit)
  with pytest.raises(ValueError, match=match) as err:
    models.load_model("mcunet-in1", weights_dir=d, source="int8")
  assert "mcunet-in1.json" in str(err.value)


@pytest.mark.parametrize("value", [np.nan, np.inf, -0.01, 1e30])
def test_nan_or_absurd_w_scales_are_refused(tmp_path, value):
  def edit(arrays):
    arrays["pw.s"][3] = value
  d = _int8_dir(tmp_path, edit_arrays=edit)
  with pytest.raises(ValueError, match="blocks_0/pointwise2: w_scales must be finite") as err:
    models.load_model("mcunet-in1", weights_dir=d, source="int8")
  assert "mcunet-in1.npz" in str(err.value)


def test_int8_arrays_of_the_wrong_kind_are_refused(tmp_path):
  def floats(arrays):
    arrays["dw.w"] = arrays["dw.w"].astype(np.float32)
  with pytest.raises(ValueError, match="dtype float32"):
    models.load_model("mcunet-in1", weights_dir=_int8_dir(tmp_path, edit_arrays=floats),
                      source="int8")

  def wide(arrays):
    arrays["dw.w"] = arrays["dw.w"].astype(np.int32) * 1000
  with pytest.raises(ValueError, match="not an int8"):
    models.load_model("mcunet-in1", weights_dir=_int8_dir(tmp_path, edit_arrays=wide),
                      source="int8")


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["blocks"].clear(), "non-empty|blocks"),
    (lambda d: d.pop("classifier"), "lacks"),
    (lambda d: d["classifier"].pop("out_channel"), "malformed"),
    (lambda d: d["blocks"][0].pop("depthwise"), "depthwise"),
    (lambda d: d["blocks"][0]["depthwise"].pop("stride"), "malformed"),
    (lambda d: d["blocks"][0].__setitem__("se", 5), "malformed"),
    (lambda d: d["blocks"][0]["pointwise2"].__setitem__("in_channel", 4), "reads 4 channels"),
    (lambda d: d["classifier"].__setitem__("in_channel", 16), "classifier: reads 16"),
    (lambda d: d["first_conv"].__setitem__("out_channel", 10 ** 9), "implausible"),
    (lambda d: d["blocks"][0]["depthwise"].__setitem__("stride", -1), "implausible"),
    (lambda d: d["blocks"][0]["depthwise"].__setitem__("kernel_size", [0, 0]), "implausible"),
    (lambda d: d["blocks"][0]["depthwise"].__setitem__("stride", 2), "identity shortcut"),
    (lambda d: d["first_conv"].__setitem__("in_channel", 1), "reads 1 channels but gets 3"),
])
def test_cut_down_or_inconsistent_arch_json_is_refused(tmp_path, edit, match):
  desc, _ = tiny_int8(np.random.default_rng(0))
  edit(desc)
  with pytest.raises(ValueError, match=match):
    int8.spec_from_description(desc)
  d = _int8_dir(tmp_path, edit_desc=edit)
  with pytest.raises(ValueError, match="mcunet-in1.json"):
    models.load_model("mcunet-in1", weights_dir=d, source="int8")


def test_truncated_arch_json_names_the_file(tmp_path):
  d = _int8_dir(tmp_path)
  text = (d / "mcunet-in1.json").read_text()
  (d / "mcunet-in1.json").write_text(text[:len(text) // 2])
  with pytest.raises(ValueError, match="mcunet-in1.json is not valid JSON"):
    models.load_model("mcunet-in1", weights_dir=d, source="int8")
  (d / "mcunet-in1.json").write_text("[1, 2]")
  with pytest.raises(ValueError, match="mcunet-in1.json.*not a JSON object"):
    models.load_model("mcunet-in1", weights_dir=d, source="int8")


def test_weights_from_elsewhere_are_announced(tmp_path, capsys):
  d = _int8_dir(tmp_path)
  models.load_model("mcunet-in1", 3, weights_dir=d, source="int8")
  assert f"from {d / 'mcunet-in1.json'}" in capsys.readouterr().err
