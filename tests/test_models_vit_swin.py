"""ViT and Swin: costs of the full-size presets (the linear reading of Eq. 3, method-spec 1.2),
selective gradients, conversion errors, and logits equal to ``transformers``' randomly
initialised ``ViTForImageClassification`` / ``SwinForImageClassification`` loaded from
``save_pretrained`` (safetensors, and the same state dict ``torch.save``d as
``pytorch_model.bin``, which transformers 5 no longer writes).

timm cannot be imported here (it needs torchvision, which has no CPU build matching our torch):
its layout is tested by renaming the Hugging Face state dict to timm's key names with the small
table below (fused ``qkv``, ``proj``, ``norm1/2``, ``head(.fc)``, merges at the start of the next
stage as timm >= 0.9 or at the end as older timm) and converting that.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trady_jax import costs
from trady_jax import selection as sel
from trady_jax.models import params as params_lib
from trady_jax.models.formats import files, hf_vision
from trady_jax.models.transformer import swin, vit

TINY_VIT = vit.ViTConfig(5, image_size=32, patch_size=4, hidden=32, depth=2, num_heads=2,
                         mlp_hidden=64)
TINY_SWIN = swin.SwinConfig(5, image_size=32, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                            window_size=4)


def _images(size, n=2):
  return np.random.default_rng(1).standard_normal((n, size, size, 3)).astype(np.float32)


def test_full_size_costs_follow_the_linear_reading_of_eq3():
  """Swin-T: per block 12 C^2 weights and 7 C inputs per token (qkv, out: C over the map padded
  to whole windows; fc1: C, fc2: 4C), merges 8 C^2 over a quarter of the tokens, the 4x4 patch
  conv 3 * 96 * 16 over H * W."""
  def expected_swin(size):
    w = a = 0
    side = size // 4
    for i, depth in enumerate((2, 2, 6, 2)):
      c, padded = 96 * 2 ** i, side if side <= 7 else -(-side // 7) * 7
      w, a = w + depth * 12 * c * c, a + depth * c * (2 * padded ** 2 + 5 * side ** 2)
      if i < 3:
        side //= 2
        w, a = w + 8 * c * c, a + 4 * c * side * side
    return w + 3 * 96 * 16, a + 3 * size * size
  for size in (224, 128):
    t = costs.trace(swin.swin_t(1000, size), (1, size, size, 3))
    assert (t.totals()["weights"], t.totals()["activations"]) == expected_swin(size)
    assert len(t.charged) == 52 and t.head_weights() == 768 * 1000
  t = costs.trace(swin.swin_t(1000), (1, 224, 224, 3)).totals()
  assert (t["weights"], t["activations"], t["total"]) == (27_431_424, 10_687_488, 38_118_912)
  t = costs.trace(vit.vit_b16(1000), (1, 224, 224, 3))
  assert len(t.charged) == 49
  assert t.totals()["weights"] == 12 * 12 * 768 ** 2 + 3 * 768 * 256
  assert t.totals()["activations"] == 12 * 7 * 768 * 197 + 3 * 224 * 224
  assert t["block_0/attn/qkv/kernel"].weight == 3 * 768


@pytest.mark.parametrize("model, size", [
    (vit.ViT(dataclasses.replace(TINY_VIT, depth=1)), 32),
    pytest.param(swin.Swin(swin.SwinConfig(5, 32, embed_dim=8, depths=(2, 1), num_heads=(1, 2),
                                           window_size=4)), 36, marks=pytest.mark.slow)])
def test_selected_features_kernel_gradient_equals_dense_autodiff(model, size):
  x = _images(size)
  c = costs.trace(model, x[:1].shape)
  params = params_lib.init_params(model)
  picks = {l.path: l.channels(np.arange(1, l.in_channels, 3)) for l in c.charged[::3]}
  s = sel.build(params, picks)
  loss = jax.jit(jax.grad(lambda p, v: (model.apply(v | {"params": p}, x) ** 2).sum()))
  full, part = loss(params, {}), loss(params, {"selection": s})
  for path, ch in picks.items():
    idx = np.asarray(ch.idx)
    g, f = np.asarray(sel.at_path(part, path)), np.asarray(sel.at_path(full, path))
    assert np.abs(f[..., idx, :]).max() > 0, path
    np.testing.assert_allclose(g[..., idx, :], f[..., idx, :], rtol=2e-4, atol=1e-6)
    assert not np.delete(g, idx, axis=-2).any(), path


def _timm_vit_state_dict(cfg, seed=0):
  rng, c, h = np.random.default_rng(seed), cfg.hidden, cfg.mlp_hidden
  shapes = {"patch_embed.proj.weight": (c, 3, cfg.patch_size, cfg.patch_size),
            "patch_embed.proj.bias": (c,), "cls_token": (1, 1, c),
            "pos_embed": (1, 1 + cfg.grid ** 2, c), "norm.weight": (c,), "norm.bias": (c,),
            "head.weight": (cfg.num_classes, c), "head.bias": (cfg.num_classes,)}
  for i in range(cfg.depth):
    for name, (o, n) in {"norm1": (c, 0), "attn.qkv": (3 * c, c), "attn.proj": (c, c),
                         "norm2": (c, 0), "mlp.fc1": (h, c), "mlp.fc2": (c, h)}.items():
      shapes[f"blocks.{i}.{name}.weight"] = (o, n) if n else (o,)
      shapes[f"blocks.{i}.{name}.bias"] = (o,)
  return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def test_timm_vit_state_dict_converts_and_errors_name_the_problem():
  sd = _timm_vit_state_dict(TINY_VIT)
  params = hf_vision.convert_vit(sd, TINY_VIT)
  np.testing.assert_array_equal(params["block_1"]["attn"]["qkv"]["kernel"],
                                sd["blocks.1.attn.qkv.weight"].T)
  np.testing.assert_array_equal(params["patch_embed"]["kernel"][1, 2, 0],
                                sd["patch_embed.proj.weight"][:, 0, 1, 2])
  logits = vit.ViT(TINY_VIT).apply({"params": params}, _images(32))
  separate = dataclasses.replace(TINY_VIT, fused_qkv=False)
  split = hf_vision.convert_vit(sd, separate)  # timm's qkv split for the separate layout
  np.testing.assert_array_equal(split["block_0"]["attn"]["value"]["bias"],
                                sd["blocks.0.attn.qkv.bias"][64:])
  np.testing.assert_allclose(vit.ViT(separate).apply({"params": split}, _images(32)), logits,
                             atol=1e-5)
  with pytest.raises(ValueError, match=r"missing \['block_1/mlp/fc2/kernel'\]"):
    hf_vision.convert_vit({k: v for k, v in sd.items() if k != "blocks.1.mlp.fc2.weight"},
                          TINY_VIT)
  with pytest.raises(ValueError, match="unexpected keys.*blocks.0.attn.extra"):
    hf_vision.convert_vit(sd | {"blocks.0.attn.extra.weight": np.zeros(3)}, TINY_VIT)
  with pytest.raises(ValueError, match=r"'block_0/mlp/fc1' kernel has shape \(32, 65\)"):
    hf_vision.convert_vit(sd | {"blocks.0.mlp.fc1.weight": np.zeros((65, 32))}, TINY_VIT)
  fresh = hf_vision.convert_vit(sd, vit.ViTConfig(7, **_but_classes(TINY_VIT)), keep_head=False)
  assert fresh["classifier"]["kernel"].shape == (32, 7)


def _but_classes(cfg):
  return {k: getattr(cfg, k) for k in cfg.__dataclass_fields__ if k != "num_classes"}


def test_shrunk_window_table_keeps_the_bias_of_each_offset():
  """A 7-window table cropped to a 4-window gives every token pair of the small window the bias
  the 7-window table gives the same offset."""
  cfg = swin.SwinConfig(5, image_size=32, embed_dim=16, depths=(2, 2), num_heads=(2, 4))
  assert cfg.stage_windows() == (7, 4) and swin.window_and_shift(4, 4, 7) == (4, 0)
  big = np.random.default_rng(0).standard_normal((169, 4)).astype(np.float32)
  small = hf_vision._resize({"a/relative_position_bias/value": big},
                            {"a/relative_position_bias/value": jnp.zeros((49, 4))})
  small = small["a/relative_position_bias/value"]
  sub = np.arange(7 * 7).reshape(7, 7)[:4, :4].ravel()  # a 4x4 corner of a 7x7 window
  np.testing.assert_array_equal(small[swin.relative_position_index(4)],
                                big[swin.relative_position_index(7)[np.ix_(sub, sub)]])


# --- parity with transformers (random init, saved and reloaded) ---------------------------------

def _hf_model(kind, image_size, window=4):
  transformers = pytest.importorskip(
      "transformers", reason="parity tests need transformers and torch (the 'reference' extra)")
  torch = pytest.importorskip("torch", reason="parity tests need torch")
  torch.manual_seed(0)
  if kind == "vit":
    model = transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=image_size, patch_size=4, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=5))
  else:
    model = transformers.SwinForImageClassification(transformers.SwinConfig(
        image_size=image_size, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
        window_size=window, num_labels=5))
  with torch.no_grad():  # larger than the default init, so that logits are O(1)
    for name, p in model.named_parameters():
      p.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, 0.3)
  return model.eval(), torch


def _torch_logits(model, torch, x, **kwargs):
  with torch.no_grad():
    return model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), **kwargs).logits.numpy()


@pytest.mark.parametrize("kind, size, layout", [
    ("vit", 32, "safetensors"), ("vit", 32, "bin"), ("vit", 32, "state_dict"),
    ("swin", 32, "safetensors"), ("swin", 32, "bin"), ("swin", 32, "state_dict"),
    ("swin", 36, "safetensors")])
def test_logits_equal_transformers(tmp_path, kind, size, layout):
  """``bin``: the saved keys ``torch.save``d as ``pytorch_model.bin`` (transformers 5 writes
  safetensors only); ``state_dict``: the model's own ``state_dict()`` (transformers 5 module
  names). Swin at 36: a 9x9 map padded to 12x12 windows (shifted), then 5x5 padded to 8x8."""
  model, torch = _hf_model(kind, size)
  model.save_pretrained(tmp_path)
  if layout != "safetensors":
    sd = {k: torch.from_numpy(v) for k, v in
          files.load_state_dict(tmp_path / "model.safetensors").items()}
    torch.save(sd if layout == "bin" else model.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
  loaded = hf_vision.load_hf_vision(tmp_path)
  x = _images(size)
  ours = np.asarray(loaded.module.apply({"params": loaded.params}, x))
  ref = _torch_logits(model, torch, x)
  assert loaded.head_loaded and np.abs(ref).max() > 0.1
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_vit_position_embeddings_resampled_as_transformers(tmp_path):
  model, torch = _hf_model("vit", 32)
  model.save_pretrained(tmp_path)
  for size in (48, 20):
    loaded = hf_vision.load_hf_vision(tmp_path, 3, image_size=size)
    assert not loaded.head_loaded
    loaded = hf_vision.load_hf_vision(tmp_path, image_size=size)
    x = _images(size)
    np.testing.assert_allclose(loaded.module.apply({"params": loaded.params}, x),
                               _torch_logits(model, torch, x, interpolate_pos_encoding=True),
                               atol=1e-4, rtol=0)


TIMM_NAMES = (  # Hugging Face -> timm, for both models
    (r"^(vit|swin)\.embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^swin\.embeddings\.norm\.", "patch_embed.norm."),
    (r"^vit\.embeddings\.cls_token$", "cls_token"),
    (r"^vit\.embeddings\.position_embeddings$", "pos_embed"),
    (r"^vit\.encoder\.layer\.", "blocks."),
    (r"^swin\.encoder\.", ""),
    (r"\.layernorm_before\.", ".norm1."), (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.(attention|self)\.", ".attn."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."), (r"\.output\.dense\.", ".mlp.fc2."),
    (r"^(vit|swin)\.layernorm\.", "norm."), (r"^classifier\.", "head."),
)


def _to_timm(sd, merges_ahead, head_fc):
  out = {}
  for k, v in sd.items():
    for pattern, repl in TIMM_NAMES:
      k = re.sub(pattern, repl, k)
    if merges_ahead:
      k = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) + 1}.downsample", k)
    out[k.replace("head.", "head.fc.") if head_fc else k] = v
  for base in {k.rsplit(".", 2)[0] for k in out if ".attn.query." in k}:
    for leaf in ("weight", "bias"):
      out[f"{base}.qkv.{leaf}"] = np.concatenate([out.pop(f"{base}.{n}.{leaf}")
                                                  for n in ("query", "key", "value")])
    out[f"{base}.relative_position_index"] = np.zeros((16, 16), np.int64)  # a buffer: ignored
  return out


@pytest.mark.parametrize("kind, merges_ahead, head_fc", [("vit", False, False),
                                                         ("swin", True, True),
                                                         ("swin", False, False)])
def test_timm_layout_gives_the_same_logits(tmp_path, kind, merges_ahead, head_fc):
  model, torch = _hf_model(kind, 36 if kind == "swin" else 32)
  model.save_pretrained(tmp_path)
  sd = _to_timm(files.load_state_dict(tmp_path / "model.safetensors"), merges_ahead, head_fc)
  assert any(".attn.qkv." in k for k in sd) and not any("query" in k for k in sd)
  if kind == "vit":
    module, params = vit.ViT(TINY_VIT), hf_vision.convert_vit(sd, TINY_VIT)
  else:
    cfg = swin.SwinConfig(5, **(_but_classes(TINY_SWIN) | {"image_size": 36}))
    module, params = swin.Swin(cfg), hf_vision.convert_swin(sd, cfg)
  x = _images(module.config.image_size)
  np.testing.assert_allclose(module.apply({"params": params}, x), _torch_logits(model, torch, x),
                             atol=1e-4, rtol=0)


@pytest.mark.slow
def test_full_size_presets_are_transformers_defaults(tmp_path):
  """transformers' default ``SwinConfig`` is Swin-T and its ``ViTConfig`` ViT-B/16 (224x224)."""
  transformers = pytest.importorskip("transformers", reason="needs transformers and torch")
  torch = pytest.importorskip("torch", reason="needs torch")
  torch.manual_seed(0)
  x = _images(224, n=1)
  for hf, preset in ((transformers.SwinForImageClassification(transformers.SwinConfig()),
                      swin.swin_t(2)),
                     (transformers.ViTForImageClassification(transformers.ViTConfig()),
                      vit.vit_b16(2))):
    hf.eval().save_pretrained(tmp_path / preset.__class__.__name__)
    loaded = hf_vision.load_hf_vision(tmp_path / preset.__class__.__name__)
    assert loaded.module == preset
    np.testing.assert_allclose(loaded.module.apply({"params": loaded.params}, x),
                               _torch_logits(hf.eval(), torch, x), atol=1e-4, rtol=0)
