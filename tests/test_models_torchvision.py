"""torchvision / timm state dicts: ResNet and MobileNetV2 layouts, state-dict files."""

import jax
import numpy as np
import pytest
from jax import lax

from trady_jax.models import mobilenetv2
from trady_jax.models import params as params_lib
from trady_jax.models.formats import files, torchvision

from nchw_reference import apply, assert_close, n_params, rand_conv, ref_bn, ref_conv


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
