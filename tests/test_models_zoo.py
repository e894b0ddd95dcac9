"""MCUNet model zoo (fp32 + BN): config parsing, BN folded or kept, .pth through load_model."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from trady_jax import models
from trady_jax.models import convert, mcunet
from trady_jax.models import params as params_lib
from trady_jax.models.formats import int8, zoo

from nchw_reference import apply, assert_close, rand_conv, ref_bn, ref_conv


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
