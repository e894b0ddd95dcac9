"""int8 descriptions: activations, dequantisation, errors, feature mix and BN calibration."""

import numpy as np
import pytest

from trady_jax import models
from trady_jax.models import mcunet
from trady_jax.models import params as params_lib
from trady_jax.models.formats import files, int8

from int8_files import MCU, tiny_int8, write_int8
from nchw_reference import apply, assert_close


def test_activation_from_range():
  assert int8.activation_from_range({"y_zero": -128, "y_scale": 6 / 255}) == "relu6"
  assert int8.activation_from_range({"y_zero": -128, "y_scale": 2.35 / 255}) == "relu6"
  assert int8.activation_from_range({"y_zero": -128, "y_scale": 0.1}) == "relu"
  assert int8.activation_from_range({"y_zero": -4, "y_scale": 0.1}) is None


@pytest.mark.parametrize("name", MCU)
def test_shipped_arch_activations(name):
  """ReLU6 after first_conv, pointwise1 and depthwise; pointwise2 linear (inverted residuals)."""
  spec = int8.spec_from_description(int8.load_arch(name))
  assert spec.first_conv.act == "relu6"
  for b in spec.blocks:
    assert b.depthwise.act == "relu6" and b.pointwise2.act is None
    assert b.pointwise1 is None or b.pointwise1.act == "relu6"
    assert b.depthwise.groups == b.depthwise.in_channels


def test_int8_dequantisation():
  rng = np.random.default_rng(0)
  desc, arrays = tiny_int8(rng)
  spec = int8.spec_from_description(desc)
  params = int8.int8_params(int8.iter_entries(desc), arrays)
  model = mcunet.MCUNet(spec, 5)
  params_lib.check_params(params, params_lib.param_shapes(model))
  dw = params["blocks_0"]["depthwise"]
  assert dw["kernel"].shape == (3, 3, 1, 8)
  np.testing.assert_allclose(dw["kernel"][1, 2, 0, 5],
                             arrays["dw.w"][5, 0, 1, 2] * arrays["dw.s"][5], rtol=1e-6)
  np.testing.assert_allclose(dw["bias"], arrays["dw.b"] * 0.02 * arrays["dw.s"], rtol=1e-6)
  fc = params["first_conv"]["kernel"]
  np.testing.assert_allclose(fc[0, 1, 2, 3], arrays["fc.w"][3, 2, 0, 1] * arrays["fc.s"][3],
                             rtol=1e-6)
  assert params["classifier"]["kernel"].shape == (8, 5)
  assert spec.blocks[0].shortcut is True and spec.blocks[0].pointwise2.act is None
  assert apply(model, params, rng.uniform(-1, 1, (2, 16, 16, 3))).shape == (2, 5)


def test_int8_errors(tmp_path):
  desc, arrays = tiny_int8(np.random.default_rng(1))
  entries = list(int8.iter_entries(desc))
  bad = dict(arrays, **{"dw.w": arrays["dw.w"][:, :, :2]})
  with pytest.raises(ValueError, match="blocks_0/depthwise"):
    int8.int8_params(entries, bad)
  with pytest.raises(KeyError, match="blocks_0/pointwise2"):
    int8.int8_params(entries, {k: v for k, v in arrays.items() if k != "pw.s"})
  with pytest.raises(FileNotFoundError, match="nothing.npz"):
    files.read_npz(tmp_path / "nothing.npz")
  (tmp_path / "broken.npz").write_bytes(b"not a zip archive")
  with pytest.raises(ValueError, match="not a readable .npz"):
    files.read_npz(tmp_path / "broken.npz")
  (tmp_path / "broken.json").write_text("{")
  with pytest.raises(ValueError, match="not valid JSON"):
    files.read_json(tmp_path / "broken.json")
  with pytest.raises(ValueError, match="lacks"):
    int8.spec_from_description({"blocks": []})


def test_load_model_from_dir_warns_on_fresh_feature_mix(tmp_path):
  desc, arrays = tiny_int8(np.random.default_rng(2))
  write_int8(tmp_path, "mbv2-w0.35", desc, arrays)
  with pytest.warns(UserWarning, match="no feature-mix conv; the network is built without it"):
    net = models.load_network("mbv2-w0.35", 7, weights_dir=tmp_path, source="int8")
  assert "feature_mix" not in net.params and net.random_init_layers == ()
  assert net.params["classifier"]["kernel"].shape == (8, 7)
  with pytest.warns(UserWarning, match="feature-mix.*8->448.*freshly initialised"):
    net = models.load_network("mbv2-w0.35", 7, weights_dir=tmp_path, source="int8",
                              feature_mix=True)
  assert net.random_init_layers == ("feature_mix",)
  params = net.params
  assert params["feature_mix"]["kernel"].shape == (1, 1, 8, 448)
  assert params["classifier"]["kernel"].shape == (448, 7)
  np.testing.assert_array_equal(params["blocks_0"]["pointwise2"]["bias"],
                                np.float32(arrays["pw.b"] * 0.02 * arrays["pw.s"]))
  with pytest.raises(ValueError, match="feature_mix=False"):
    models.load_model("mbv2-w0.35", weights_dir=tmp_path, source="int8", imagenet_head=True,
                      feature_mix=True)
  model, params = models.load_model("mbv2-w0.35", weights_dir=tmp_path, source="int8",
                                    feature_mix=False, imagenet_head=True)
  np.testing.assert_allclose(params["classifier"]["bias"], arrays["cls.b"] * 0.02 * arrays["cls.s"],
                             rtol=1e-6)
  with pytest.raises(FileNotFoundError, match="download=True"):
    models.load_model("mcunet-in1", weights_dir=tmp_path)


def test_int8_weights_get_batchnorm_back_by_calibration(tmp_path):
  desc, arrays = tiny_int8(np.random.default_rng(2))
  write_int8(tmp_path, "mbv2-w0.35", desc, arrays)
  kw = dict(weights_dir=tmp_path, source="int8", imagenet_head=True)
  folded = models.load_network("mbv2-w0.35", **kw)
  calib = [np.random.default_rng(3).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)]
  with pytest.raises(ValueError, match="calibration images"):
    models.load_network("mbv2-w0.35", bn="train", **kw)
  net = models.load_network("mbv2-w0.35", bn="train", calibration=calib, **kw)
  assert net.module.bn == "train" and net.random_init_layers == () and folded.batch_stats is None
  x = np.random.default_rng(4).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  got = net.module.apply({"params": net.params, "batch_stats": net.batch_stats}, x)
  assert_close(np.asarray(got), apply(folded.module, folded.params, x), rtol=1e-4)
