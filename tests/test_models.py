"""Model builders and weight loading: int8 descriptions, zoo / torchvision / timm state dicts."""

import dataclasses
import io
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from trady_jax import costs
from trady_jax import models
from trady_jax.models import convert, mcunet, mobilenetv2, registry, store
from trady_jax.models import params as params_lib
from trady_jax.models.formats import files, int8, torchvision, zoo

MCU = ("mbv2-w0.35", "mcunet-in1", "proxyless-w0.3")


@pytest.fixture(scope="module")
def shared_weights(shared_dir) -> Path:
  d = shared_dir / "weights"
  if not (d / "mbv2-w0.35.npz").is_file():
    pytest.skip(f"../shared not found: {d} holds the int8 weights")
  return d


# ---------------------------------------------------------------- numpy reference (NCHW, BN apart)

def ref_conv(x, w, stride=1, groups=1):
  k = w.shape[-1] // 2
  return lax.conv_general_dilated(x, w, (stride, stride), [(k, k)] * 2, feature_group_count=groups,
                                  dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                  precision=lax.Precision.HIGHEST)


def ref_bn(x, sd, p, eps=1e-5):
  s = lambda n: sd[f"{p}.{n}"][None, :, None, None]
  return (x - s("running_mean")) / np.sqrt(s("running_var") + eps) * s("weight") + s("bias")


def rand_bn(rng, sd, p, c):
  sd[f"{p}.weight"], sd[f"{p}.bias"] = rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c)
  sd[f"{p}.running_mean"], sd[f"{p}.running_var"] = rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)
  sd[f"{p}.num_batches_tracked"] = np.array(7)


def rand_conv(rng, sd, key, o, i, k, bn=None):
  sd[key] = rng.normal(0, np.sqrt(2 / (i * k * k)), (o, i, k, k))
  if bn:
    rand_bn(rng, sd, bn, o)


def n_params(sd):
  return sum(v.size for k, v in sd.items() if not k.endswith(("running_mean", "running_var",
                                                                "num_batches_tracked")))


def assert_close(got, want, rtol):
  np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-4 * np.abs(want).max())


def apply(module, params, x, **kw):
  return np.asarray(module.apply({"params": params}, jnp.asarray(x, jnp.float32), **kw))


# ---------------------------------------------------------------- int8 descriptions

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


def test_registry_lookup_and_download(tmp_path, monkeypatch):
  monkeypatch.setenv("TRADY_JAX_WEIGHTS", str(tmp_path / "w"))
  monkeypatch.setenv("TRADY_JAX_CACHE", str(tmp_path / "cache"))
  dirs = store.search_dirs()
  assert dirs[0] == (tmp_path / "w").resolve() and dirs[-1] == (tmp_path / "cache").resolve()
  assert store.search_dirs(tmp_path) == [tmp_path]
  assert models.find_weights("mcunet-in1", tmp_path) is None
  with pytest.raises(KeyError, match="known"):
    models.load_model("resnet19")
  assert set(store.TORCHVISION_URLS) | set(models.MCU_NETS) == set(models.NAMES)
  with pytest.warns(DeprecationWarning, match="trady_jax.models.load_model"):
    assert registry.load_model is models.load_model  # the loaders' former home still answers
  with pytest.raises(AttributeError):
    getattr(registry, "no_such_name")
  urls = []

  def fake_urlopen(url, timeout):
    urls.append(url)
    return io.BytesIO(b"payload")

  monkeypatch.setattr(store.urllib.request, "urlopen", fake_urlopen)
  found = store.download_weights("mcunet-in1")
  assert urls == [store.ZOO_URL + "mcunet-5fps_imagenet.json",
                  store.ZOO_URL + "mcunet-5fps_imagenet.pth"]
  assert found.kind == "zoo" and all(f.parent == tmp_path / "cache" for f in found.files)
  assert models.find_weights("mcunet-in1", source="zoo") == found
  store.download_weights("mcunet-in1")  # cached: no second fetch
  assert len(urls) == 2


@pytest.mark.parametrize("name,convs", [("mbv2-w0.35", 52), ("mcunet-in1", 42),
                                        ("proxyless-w0.3", 61), ("resnet18", 20),
                                        ("resnet50", 53), ("mobilenetv2", 52)])
def test_build_models(name, convs):
  model = models.build_model(name, 10)
  net = costs.trace(model, (1, 64, 64, 3))
  assert len(net.convs) == convs
  assert net.layers[-1].path == "classifier/kernel" and net.layers[-1].out_channels == 10
  assert all(l.path.endswith("/kernel") for l in net.layers)


# ---------------------------------------------------------------- BatchNorm folding

@pytest.mark.parametrize("groups", [1, 6])
def test_fold_bn_exact(groups):
  rng, sd = np.random.default_rng(3), {}
  rand_conv(rng, sd, "w", 6, 6 // groups, 3, bn="bn")
  sd["b"] = rng.normal(size=6)
  x = rng.normal(size=(2, 6, 9, 9))
  want = ref_bn(ref_conv(x, sd["w"], 2, groups) + sd["b"][None, :, None, None], sd, "bn", 1e-3)
  bn = (sd[f"bn.{n}"] for n in ("weight", "bias", "running_mean", "running_var"))
  w, b = convert.fold_bn(sd["w"], *bn, eps=1e-3, bias=sd["b"])
  np.testing.assert_allclose(ref_conv(x, w, 2, groups) + b[None, :, None, None], want, atol=1e-5)


def test_fold_input_norm_interior():
  rng = np.random.default_rng(4)
  w, b = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
  x = rng.uniform(-1, 1, (1, 3, 12, 12))
  mean, std = np.array(convert.IMAGENET_MEAN), np.array(convert.IMAGENET_STD)
  want = ref_conv((0.5 * x + 0.5 - mean[:, None, None]) / std[:, None, None], w) + b[:, None, None]
  k, c = convert.fold_input_norm(convert.to_hwio(w), b)
  got = ref_conv(x, np.transpose(k, (3, 2, 0, 1))) + c[:, None, None]
  np.testing.assert_allclose(got[..., 1:-1, 1:-1], want[..., 1:-1, 1:-1], atol=1e-4)


# ---------------------------------------------------------------- MCUNet model zoo (fp32 + BN)

def zoo_config(spec: mcunet.NetSpec, eps: float) -> dict:
  """A ``ProxylessNASNets`` config as the model zoo writes it."""
  def conv(c):
    return {"name": "ConvLayer", "in_channels": c.in_channels, "out_channels": c.out_channels,
            "kernel_size": c.kernel_size, "stride": c.stride, "dilation": 1, "groups": c.groups,
            "bias": False, "use_bn": True, "act_func": c.act, "dropout_rate": 0,
            "ops_order": "weight_bn_act"}
  blocks = [{"name": "MobileInvertedResidualBlock",
             "mobile_inverted_conv": {
                 "name": "MBInvertedConvLayer", "in_channels": b.depthwise.in_channels
                 if b.pointwise1 is None else b.pointwise1.in_channels,
                 "out_channels": b.pointwise2.out_channels, "kernel_size": b.depthwise.kernel_size,
                 "stride": b.depthwise.stride, "expand_ratio": 1 if b.pointwise1 is None else 6,
                 "mid_channels": b.depthwise.in_channels, "act_func": "relu6", "use_se": False},
             "shortcut": {"name": "IdentityLayer", "in_channels": 8, "out_channels": 8}
             if b.shortcut else None} for b in spec.blocks]
  return {"name": "ProxylessNASNets", "first_conv": conv(spec.first_conv), "blocks": blocks,
          "feature_mix_layer": conv(spec.feature_mix),
          "classifier": {"name": "LinearLayer", "in_features": spec.features, "out_features": 1000},
          "resolution": 144, "bn": {"momentum": 0.1, "eps": eps}}


def zoo_state_dict(cfg, rng, refactored=False):
  """Random weights under the zoo's PyTorch module names (``blocks.i.conv.`` if refactored)."""
  sd = {}
  c = lambda p, l: rand_conv(rng, sd, f"{p}.conv.weight", l["out_channels"],
                             l["in_channels"] // l["groups"], l["kernel_size"], bn=f"{p}.bn")
  c("first_conv", cfg["first_conv"])
  for i, b in enumerate(cfg["blocks"]):
    m = b["mobile_inverted_conv"]
    p = f"blocks.{i}.{'conv' if refactored else 'mobile_inverted_conv'}"
    mid, k = m["mid_channels"], m["kernel_size"]
    if m["expand_ratio"] != 1:
      rand_conv(rng, sd, f"{p}.inverted_bottleneck.conv.weight", mid, m["in_channels"], 1,
                bn=f"{p}.inverted_bottleneck.bn")
    rand_conv(rng, sd, f"{p}.depth_conv.conv.weight", mid, 1, k, bn=f"{p}.depth_conv.bn")
    rand_conv(rng, sd, f"{p}.point_linear.conv.weight", m["out_channels"], mid, 1,
              bn=f"{p}.point_linear.bn")
  c("feature_mix_layer", cfg["feature_mix_layer"])
  sd["classifier.linear.weight"] = rng.normal(0, 0.05, (1000, cfg["classifier"]["in_features"]))
  sd["classifier.linear.bias"] = rng.normal(0, 0.1, 1000)
  return sd


def zoo_reference(cfg, sd, x, eps):
  """The zoo network in NCHW with explicit BatchNorm."""
  def cbr(x, p, layer, stride=1, groups=1, act="relu6"):
    y = ref_bn(ref_conv(x, sd[f"{p}.conv.weight"], stride, groups), sd, f"{p}.bn", eps)
    return np.clip(y, 0, 6) if act else y
  x = cbr(np.transpose(x, (0, 3, 1, 2)), "first_conv", cfg["first_conv"], stride=2)
  for i, b in enumerate(cfg["blocks"]):
    m, p, y = b["mobile_inverted_conv"], f"blocks.{i}.mobile_inverted_conv", x
    if m["expand_ratio"] != 1:
      y = cbr(y, f"{p}.inverted_bottleneck", m)
    y = cbr(y, f"{p}.depth_conv", m, m["stride"], m["mid_channels"])
    y = cbr(y, f"{p}.point_linear", m, act=None)
    x = y + x if b["shortcut"] else y
  x = cbr(x, "feature_mix_layer", cfg["feature_mix_layer"]).mean((2, 3))
  return x @ sd["classifier.linear.weight"].T + sd["classifier.linear.bias"]


@pytest.fixture(scope="module")
def zoo_net():
  """A 4-block slice of mbv2-w0.35 with its feature mix, as zoo config + random BN state dict."""
  full = int8.spec_from_description(int8.load_arch("mbv2-w0.35"), feature_mix=448)
  spec = dataclasses.replace(full, blocks=full.blocks[:4],
                             feature_mix=mcunet.Conv(16, 64, act="relu6"), added_feature_mix=False)
  cfg = zoo_config(spec, eps=1e-3)
  return spec, cfg, zoo_state_dict(cfg, np.random.default_rng(5))


def test_zoo_config_and_bn_folding(zoo_net):
  spec, cfg, sd = zoo_net
  parsed = zoo.spec_from_zoo_config(cfg)
  assert parsed.blocks == spec.blocks and parsed.first_conv == spec.first_conv
  assert parsed.feature_mix == spec.feature_mix and parsed.resolution == 144
  params = convert.convert_state_dict(sd, zoo.zoo_key_map(parsed), eps=1e-3)
  model = mcunet.MCUNet(parsed, 1000)
  params_lib.check_params(params, params_lib.param_shapes(model))
  x = np.random.default_rng(6).uniform(-1, 1, (2, 32, 32, 3))
  want = zoo_reference(cfg, sd, x, 1e-3)
  assert_close(apply(model, params, x), want, rtol=1e-4)
  bad = dict(sd)
  bad["blocks.2.mobile_inverted_conv.depth_conv.conv.weight"] = np.zeros((48, 1, 5, 5))
  with pytest.raises(ValueError, match="blocks_2/depthwise"):
    params_lib.check_params(convert.convert_state_dict(bad, zoo.zoo_key_map(parsed)),
                            params_lib.param_shapes(model))
  with pytest.raises(KeyError, match="blocks_1/pointwise2"):
    convert.convert_state_dict({k: v for k, v in sd.items() if ".1.mobile_inverted_conv.point_"
                                not in k}, zoo.zoo_key_map(parsed))


def test_zoo_bn_kept_is_the_reference_network(zoo_net):
  """fp32 zoo weights with BatchNorm unfolded: evaluation mode computes the zoo network."""
  spec, cfg, sd = zoo_net
  parsed = zoo.spec_from_zoo_config(cfg)
  params, stats = params_lib.split_bn(
      convert.convert_state_dict(sd, zoo.zoo_key_map(parsed), eps=1e-3, keep_bn=True))
  model = mcunet.MCUNet(parsed, 1000, bn="train")
  assert "bias" not in params["first_conv"] and set(stats["first_conv"]["bn"]) == {"mean", "var"}
  assert "bn" not in params["blocks_0"].get("se_reduce", {})
  x = np.random.default_rng(6).uniform(-1, 1, (2, 32, 32, 3))
  got = model.apply({"params": params, "batch_stats": stats}, jnp.asarray(x, jnp.float32))
  assert_close(np.asarray(got), zoo_reference(cfg, sd, x, 1e-3), rtol=1e-4)


def test_zoo_pth_through_load_model(zoo_net, tmp_path):
  torch = pytest.importorskip("torch", reason="torch not installed: pip install 'trady-jax[torch]'")
  spec, cfg, sd = zoo_net
  sd_ref = zoo_state_dict(cfg, np.random.default_rng(7))
  sd_new = zoo_state_dict(cfg, np.random.default_rng(7), refactored=True)
  torch.save({"state_dict": {k: torch.from_numpy(np.asarray(v)) for k, v in sd_new.items()}},
             tmp_path / "mcunet-5fps_imagenet.pth")
  (tmp_path / "mcunet-5fps_imagenet.json").write_text(json.dumps(cfg))
  model, params = models.load_model("mcunet-in1", weights_dir=tmp_path, source="zoo",
                                    imagenet_head=True)
  x = np.random.default_rng(8).uniform(-1, 1, (1, 32, 32, 3))
  want = zoo_reference(cfg, sd_ref, x, 1e-3)
  assert_close(apply(model, params, x), want, rtol=1e-4)
  model, params = models.load_model("mcunet-in1", 3, weights_dir=tmp_path, source="zoo",
                                    feature_mix=False)
  assert "feature_mix" not in params and params["classifier"]["kernel"].shape == (16, 3)


# ---------------------------------------------------------------- torchvision / timm layouts

def torchvision_resnet(rng, stages, bottleneck):
  """Random torchvision ResNet state dict, written from torchvision's module definitions."""
  sd, inplanes = {}, 64
  rand_conv(rng, sd, "conv1.weight", 64, 3, 7, bn="bn1")
  for s, n in enumerate(stages):
    planes = 64 * 2**s
    out = planes * (4 if bottleneck else 1)
    for b in range(n):
      p, stride = f"layer{s + 1}.{b}", 2 if (b == 0 and s > 0) else 1
      shapes = ([(planes, inplanes, 1), (planes, planes, 3), (out, planes, 1)] if bottleneck
                else [(planes, inplanes, 3), (planes, planes, 3)])
      for j, (o, i, k) in enumerate(shapes, 1):
        rand_conv(rng, sd, f"{p}.conv{j}.weight", o, i, k, bn=f"{p}.bn{j}")
      if stride != 1 or inplanes != out:
        rand_conv(rng, sd, f"{p}.downsample.0.weight", out, inplanes, 1, bn=f"{p}.downsample.1")
      inplanes = out
  sd["fc.weight"], sd["fc.bias"] = rng.normal(0, 0.05, (1000, inplanes)), rng.normal(0, 0.1, 1000)
  return sd


def resnet18_reference(sd, x):
  def cb(x, p, bn, stride=1):
    return ref_bn(ref_conv(x, sd[f"{p}.weight"], stride), sd, bn)
  x = np.maximum(cb(np.transpose(x, (0, 3, 1, 2)), "conv1", "bn1", 2), 0)
  x = lax.reduce_window(x, -np.inf, lax.max, (1, 1, 3, 3), (1, 1, 2, 2),
                        [(0, 0), (0, 0), (1, 1), (1, 1)])
  for s in range(4):
    for b in range(2):
      p = f"layer{s + 1}.{b}"
      stride = 2 if (b == 0 and s > 0) else 1
      y = np.maximum(cb(x, f"{p}.conv1", f"{p}.bn1", stride), 0)
      y = cb(y, f"{p}.conv2", f"{p}.bn2")
      if f"{p}.downsample.0.weight" in sd:
        x = cb(x, f"{p}.downsample.0", f"{p}.downsample.1", stride)
      x = np.maximum(x + y, 0)
  return x.mean((2, 3)) @ sd["fc.weight"].T + sd["fc.bias"]


def test_resnet18_torchvision_conversion():
  sd = torchvision_resnet(np.random.default_rng(9), (2, 2, 2, 2), False)
  assert n_params(sd) == 11_689_512  # torchvision resnet18
  model, params = torchvision.convert_generic("resnet18", sd, input_stats=None)
  params_lib.check_params(params, params_lib.param_shapes(model))
  x = np.random.default_rng(10).uniform(-1, 1, (2, 32, 32, 3))
  want = resnet18_reference(sd, x)
  assert_close(apply(model, params, x), want, rtol=1e-3)


def test_resnet50_torchvision_layout():
  sd = torchvision_resnet(np.random.default_rng(11), (3, 4, 6, 3), True)
  assert n_params(sd) == 25_557_032  # torchvision resnet50
  model, params = torchvision.convert_generic("resnet50", sd)
  params_lib.check_params(params, params_lib.param_shapes(model))
  assert params["layer1_0"]["downsample"]["kernel"].shape == (1, 1, 64, 256)
  assert params["layer4_0"]["conv2"]["kernel"].shape == (3, 3, 512, 512)


def mobilenetv2_state_dicts(rng):
  """The same random MobileNetV2 under torchvision and under timm names."""
  tv, timm = {}, {}

  def both(tv_conv, tv_bn, timm_conv, timm_bn, o, i, k):
    rand_conv(rng, tv, tv_conv, o, i, k, bn=tv_bn)
    timm[timm_conv] = tv[tv_conv]
    for n in ("weight", "bias", "running_mean", "running_var"):
      timm[f"{timm_bn}.{n}"] = tv[f"{tv_bn}.{n}"]

  both("features.0.0.weight", "features.0.1", "conv_stem.weight", "bn1", 32, 3, 3)
  cin, f = 32, 1
  for s, (t, c, n, _) in enumerate(mobilenetv2.SETTINGS):
    for j in range(n):
      hid, q, tq = cin * t, f"features.{f}.conv", f"blocks.{s}.{j}"
      if t == 1:
        both(f"{q}.0.0.weight", f"{q}.0.1", f"{tq}.conv_dw.weight", f"{tq}.bn1", hid, 1, 3)
        both(f"{q}.1.weight", f"{q}.2", f"{tq}.conv_pw.weight", f"{tq}.bn2", c, hid, 1)
      else:
        both(f"{q}.0.0.weight", f"{q}.0.1", f"{tq}.conv_pw.weight", f"{tq}.bn1", hid, cin, 1)
        both(f"{q}.1.0.weight", f"{q}.1.1", f"{tq}.conv_dw.weight", f"{tq}.bn2", hid, 1, 3)
        both(f"{q}.2.weight", f"{q}.3", f"{tq}.conv_pwl.weight", f"{tq}.bn3", c, hid, 1)
      cin, f = c, f + 1
  both("features.18.0.weight", "features.18.1", "conv_head.weight", "bn2", 1280, 320, 1)
  tv["classifier.1.weight"] = timm["classifier.weight"] = rng.normal(0, 0.05, (1000, 1280))
  tv["classifier.1.bias"] = timm["classifier.bias"] = rng.normal(0, 0.1, 1000)
  return tv, timm


def test_mobilenetv2_torchvision_and_timm():
  tv, timm = mobilenetv2_state_dicts(np.random.default_rng(12))
  assert n_params(tv) == 3_504_872  # torchvision mobilenet_v2
  model, p_tv = torchvision.convert_generic("mobilenetv2", tv)
  _, p_timm = torchvision.convert_generic("mobilenetv2", timm)
  params_lib.check_params(p_tv, params_lib.param_shapes(model))
  jax.tree.map(np.testing.assert_array_equal, p_tv, p_timm)
  with pytest.raises(ValueError, match="torchvision.*timm"):
    torchvision.mobilenetv2_keys(model.spec, {"foo.weight": 0})
  assert np.isfinite(apply(model, p_tv, np.zeros((1, 32, 32, 3)))).all()


def test_state_dict_files(tmp_path):
  sd = {"module.a.weight": np.ones((2, 3)), "a.num_batches_tracked": np.array(1)}
  np.savez(tmp_path / "sd.npz", **sd)
  assert list(files.load_state_dict(tmp_path / "sd.npz")) == ["a.weight"]
  with pytest.raises(ValueError, match="unknown state dict format"):
    (tmp_path / "sd.ckpt").write_bytes(b"")
    files.load_state_dict(tmp_path / "sd.ckpt")
  safetensors = pytest.importorskip("safetensors.numpy", reason="safetensors not installed")
  safetensors.save_file({"a.weight": np.ones((2, 3), np.float32)}, str(tmp_path / "sd.safetensors"))
  assert files.load_state_dict(tmp_path / "sd.safetensors")["a.weight"].shape == (2, 3)


# ---------------------------------------------------------------- the int8 weights in ../shared

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
