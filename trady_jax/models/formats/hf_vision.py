"""Hugging Face and timm ViT / Swin state dicts -> the selective Flax models
(``transformer.vit``, ``transformer.swin``).

Both layouts are recognised key by key: Hugging Face's (``vit.`` / ``swin.`` prefixes,
``classifier.``, separate ``query`` / ``key`` / ``value``; also transformers 5's in-memory
``q_proj`` ... names) and timm's (``patch_embed.proj``,
``blocks.N.attn.qkv``, ``layers.N.blocks.M...``, ``head`` or ``head.fc``). Linear weights become
``(in, out)`` kernels, conv weights OIHW -> HWIO, LayerNorm weights ``scale``; query / key / value
are concatenated into the fused ``qkv`` (or a ``qkv`` split) as the model is laid out. Relative
position bias tables are kept as stored, cropped to their central ``(2w-1)^2`` offsets where a
stage's window shrank to a small feature map; ViT position embeddings are resampled bicubically
(PyTorch's kernel, as Hugging Face's ``interpolate_pos_encoding``) to another resolution. Every
parameter of the model must be found and every key used (buffers such as
``relative_position_index`` and ``attn_mask`` excepted), with matching shapes. The charged layers
are the linear reading of Eq. 3 (method-spec 1.2).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trady_jax import selection as sel
from trady_jax.models import params as params_lib
from trady_jax.models.convert import to_hwio
from trady_jax.models.formats import files
from trady_jax.models.transformer import swin, vit

_B = r"^vit\.encoder\.layer\.(\d+)\."
VIT_KEYS = (  # Hugging Face, then timm
    (r"^vit\.embeddings\.patch_embeddings\.projection\.", "patch_embed/"),
    (r"^vit\.embeddings\.cls_token$", "cls_token/value"),
    (r"^vit\.embeddings\.position_embeddings$", "pos_embed/value"),
    (_B + r"layernorm_before\.", r"block_\1/attn_norm/"),
    (_B + r"attention\.attention\.(query|key|value)\.", r"block_\1/attn/\2/"),
    (_B + r"attention\.output\.dense\.", r"block_\1/attn/out/"),
    (_B + r"layernorm_after\.", r"block_\1/mlp_norm/"),
    (_B + r"intermediate\.dense\.", r"block_\1/mlp/fc1/"),
    (_B + r"output\.dense\.", r"block_\1/mlp/fc2/"),
    (r"^vit\.layernorm\.", "final_norm/"),
    (r"^patch_embed\.proj\.", "patch_embed/"),
    (r"^cls_token$", "cls_token/value"),
    (r"^pos_embed$", "pos_embed/value"),
    (r"^blocks\.(\d+)\.norm1\.", r"block_\1/attn_norm/"),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"block_\1/attn/qkv/"),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"block_\1/attn/out/"),
    (r"^blocks\.(\d+)\.norm2\.", r"block_\1/mlp_norm/"),
    (r"^blocks\.(\d+)\.mlp\.fc(\d)\.", r"block_\1/mlp/fc\2/"),
    (r"^norm\.", "final_norm/"),
)
_S = r"^swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\."
_T = r"^layers\.(\d+)\.blocks\.(\d+)\."
SWIN_KEYS = (
    (r"^swin\.embeddings\.patch_embeddings\.projection\.", "patch_embed/"),
    (r"^swin\.embeddings\.norm\.", "patch_norm/"),
    (_S + r"layernorm_before\.", r"stage_\1_block_\2/attn_norm/"),
    (_S + r"attention\.self\.(query|key|value)\.", r"stage_\1_block_\2/attn/\3/"),
    (_S + r"attention\.self\.relative_position_bias_table$",
     r"stage_\1_block_\2/relative_position_bias/value"),
    (_S + r"attention\.output\.dense\.", r"stage_\1_block_\2/attn/out/"),
    (_S + r"layernorm_after\.", r"stage_\1_block_\2/mlp_norm/"),
    (_S + r"intermediate\.dense\.", r"stage_\1_block_\2/mlp/fc1/"),
    (_S + r"output\.dense\.", r"stage_\1_block_\2/mlp/fc2/"),
    (r"^swin\.encoder\.layers\.(\d+)\.downsample\.(norm|reduction)\.", r"merge_\1/\2/"),
    (r"^swin\.layernorm\.", "final_norm/"),
    (r"^patch_embed\.proj\.", "patch_embed/"),
    (r"^patch_embed\.norm\.", "patch_norm/"),
    (_T + r"norm1\.", r"stage_\1_block_\2/attn_norm/"),
    (_T + r"attn\.qkv\.", r"stage_\1_block_\2/attn/qkv/"),
    (_T + r"attn\.relative_position_bias_table$",
     r"stage_\1_block_\2/relative_position_bias/value"),
    (_T + r"attn\.proj\.", r"stage_\1_block_\2/attn/out/"),
    (_T + r"norm2\.", r"stage_\1_block_\2/mlp_norm/"),
    (_T + r"mlp\.fc(\d)\.", r"stage_\1_block_\2/mlp/fc\3/"),
    # stage i's merging; timm >= 0.9 numbers it i + 1 (``_timm_swin_merges``)
    (r"^layers\.(\d+)\.downsample\.(norm|reduction)\.", r"merge_\1/\2/"),
    (r"^norm\.", "final_norm/"),
)
# transformers >= 5 module names, as a ``state_dict()`` taken in memory has them
# (``save_pretrained`` and the published checkpoints use the names above).
_QKV = {"q": "query", "k": "key", "v": "value"}
V5_NAMES = (
    (r"^vit\.layers\.", "vit.encoder.layer."),
    (r"^(vit\..*)\.attention\.([qkv])_proj\.",
     lambda m: f"{m[1]}.attention.attention.{_QKV[m[2]]}."),
    (r"^(swin\..*)\.attention\.([qkv])_proj\.", lambda m: f"{m[1]}.attention.self.{_QKV[m[2]]}."),
    (r"^((vit|swin)\..*)\.attention\.o_proj\.", r"\1.attention.output.dense."),
    (r"^(swin\..*)\.attention\.relative_position_bias\.", r"\1.attention.self."),
    (r"^((vit|swin)\..*)\.mlp\.fc1\.", r"\1.intermediate.dense."),
    (r"^((vit|swin)\..*)\.mlp\.fc2\.", r"\1.output.dense."),
)
HEAD_KEYS = ((r"^classifier\.", "classifier/"), (r"^head\.(fc\.)?", "classifier/"))
# Buffers (recomputed from the shapes) and parameter-free leftovers, not weights.
IGNORED = re.compile(r"(relative_position_index|attn_mask)$|^(vit|swin)\.pooler\.")


class Loaded(NamedTuple):
  """A converted checkpoint: the ``module``, its ``params``, and whether the classifier came
  from the checkpoint (``head_loaded``; else freshly initialised)."""
  module: nn.Module
  params: dict
  head_loaded: bool


def _timm_swin_merges(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """timm >= 0.9 puts stage ``i``'s patch merging at the start of stage ``i + 1``."""
  if any(k.startswith("layers.0.downsample.") for k in sd):
    return dict(sd)
  shift = lambda m: f"layers.{int(m.group(1)) - 1}.downsample."
  return {re.sub(r"^layers\.(\d+)\.downsample\.", shift, k): v for k, v in sd.items()}


def _rename(sd: Mapping[str, np.ndarray], table) -> dict[str, np.ndarray]:
  """Source keys -> ``module/weight|bias`` or a full leaf path; unknown keys are an error."""
  out, unknown = {}, []
  for key, value in sd.items():
    if IGNORED.search(key):
      continue
    for pattern, repl in V5_NAMES:
      key = re.sub(pattern, repl, key)
    for pattern, repl in (*table, *HEAD_KEYS):
      if re.search(pattern, key):
        out[re.sub(pattern, repl, key)] = np.asarray(value, np.float32)
        break
    else:
      unknown.append(key)
  if unknown:
    raise ValueError(f"unexpected keys (neither Hugging Face nor timm layout): {unknown[:5]}")
  return out


def _leaves(renamed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """PyTorch leaves as Flax ones: ``(out, in)`` -> ``(in, out)`` kernels, OIHW -> HWIO, norm
  weights -> ``scale``."""
  out = {}
  for key, v in renamed.items():
    module, _, leaf = key.rpartition("/")
    if leaf == "weight":
      if module.rsplit("/", 1)[-1].endswith("norm"):
        leaf = "scale"
      else:
        leaf, v = "kernel", (to_hwio(v) if v.ndim == 4 else np.ascontiguousarray(v.T))
    out[f"{module}/{leaf}"] = v
  return out


def _qkv(flat: dict[str, np.ndarray], want: Mapping) -> dict[str, np.ndarray]:
  """Query / key / value fused into ``qkv`` (or ``qkv`` split) as the model ``want``s."""
  for key in [k for k in flat if "/attn/query/" in k]:
    base, leaf = key.split("/attn/query/")
    fused = f"{base}/attn/qkv/{leaf}"
    if fused in want:
      parts = [flat.pop(f"{base}/attn/{n}/{leaf}") for n in ("query", "key", "value")]
      flat[fused] = np.concatenate(parts, axis=-1)
  for key in [k for k in flat if "/attn/qkv/" in k]:
    if key not in want:
      base, leaf = key.split("/attn/qkv/")
      for n, part in zip(("query", "key", "value"), np.split(flat.pop(key), 3, axis=-1)):
        flat[f"{base}/attn/{n}/{leaf}"] = part
  return flat


def bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
  """``(size_out, size_in)`` weights of PyTorch's bicubic resize (``a = -0.75``,
  ``align_corners=False``, borders clamped, no antialiasing)."""
  a, m = -0.75, np.zeros((size_out, size_in))
  for i in range(size_out):
    src = (i + 0.5) * size_in / size_out - 0.5
    i0 = int(np.floor(src))
    t = src - i0
    w = [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
         ((a + 2) * t - (a + 3)) * t * t + 1,
         ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1]
    for tap, wt in zip(range(i0 - 1, i0 + 3), (*w, 1 - sum(w))):
      m[i, min(max(tap, 0), size_in - 1)] += wt
  return m


def _resize(flat: dict[str, np.ndarray], want: Mapping) -> dict[str, np.ndarray]:
  """Position embeddings resampled and window tables cropped to the model's shapes."""
  for key, v in flat.items():
    shape = tuple(want[key].shape) if key in want else v.shape
    if v.shape == shape:
      continue
    if key == "pos_embed/value" and v.shape[:1] + v.shape[2:] == shape[:1] + shape[2:]:
      g_in, g_out = (int(round(np.sqrt(n - 1))) for n in (v.shape[1], shape[1]))
      if g_in ** 2 + 1 == v.shape[1] and g_out ** 2 + 1 == shape[1]:
        r = bicubic_matrix(g_in, g_out)
        grid = np.einsum("ai,bj,ijc->abc", r, r, v[0, 1:].reshape(g_in, g_in, -1))
        flat[key] = np.concatenate([v[:, :1], grid.reshape(1, -1, v.shape[-1])], 1)
    elif key.endswith("relative_position_bias/value") and v.shape[1:] == shape[1:]:
      big, small = (int(round(np.sqrt(n))) for n in (v.shape[0], shape[0]))
      if big ** 2 == v.shape[0] and small ** 2 == shape[0] and small < big:
        lo = (big - small) // 2
        t = v.reshape(big, big, -1)[lo:lo + small, lo:lo + small]
        flat[key] = np.ascontiguousarray(t.reshape(shape))
  return flat


def _fresh_head(want: Mapping, seed: int) -> dict[str, np.ndarray]:
  """A LeCun-normal classifier kernel of the model's shape and a zero bias."""
  shape = tuple(want["classifier/kernel"].shape)
  kernel = nn.initializers.lecun_normal()(jax.random.key(seed), shape)
  return {"classifier/kernel": np.asarray(kernel), "classifier/bias": np.zeros(shape[-1:])}


def _convert(module: nn.Module, image_size: int, sd: Mapping[str, np.ndarray], table,
             keep_head: bool, seed: int) -> dict:
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  want_tree = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)["params"]
  want = {p: sel.at_path(want_tree, p) for p in sel.leaf_paths(want_tree)}
  flat = _resize(_qkv(_leaves(_rename(sd, table)), want), want)
  if not keep_head:
    flat = {k: v for k, v in flat.items() if not k.startswith("classifier/")}
    flat.update(_fresh_head(want, seed))
  elif "classifier/kernel" not in flat:
    raise ValueError("the checkpoint has no classifier head; pass keep_head=False for a fresh one")
  tree = params_lib.nest(flat)
  params_lib.check_params(tree, want_tree)
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)


def convert_vit(state_dict: Mapping[str, np.ndarray], config: vit.ViTConfig, *,
                keep_head: bool = True, seed: int = 0) -> dict:
  """Flax params of ``vit.ViT(config)`` from a Hugging Face or timm ViT state dict
  (``keep_head=False``: the checkpoint's classifier replaced by a fresh one, seeded)."""
  return _convert(vit.ViT(config), config.image_size, state_dict, VIT_KEYS, keep_head, seed)


def convert_swin(state_dict: Mapping[str, np.ndarray], config: swin.SwinConfig, *,
                 keep_head: bool = True, seed: int = 0) -> dict:
  """Flax params of ``swin.Swin(config)`` from a Hugging Face or timm Swin state dict."""
  return _convert(swin.Swin(config), config.image_size, _timm_swin_merges(state_dict),
                  SWIN_KEYS, keep_head, seed)


def config_from_hf(cfg: Mapping, *, num_classes: int | None = None,
                   image_size: int | None = None) -> vit.ViTConfig | swin.SwinConfig:
  """The model config of a Hugging Face ``config.json`` (``model_type`` ``vit`` or ``swin``);
  ``num_classes`` / ``image_size`` default to the checkpoint's."""
  kind = cfg.get("model_type")
  classes = num_classes or cfg.get("num_labels") or len(cfg.get("id2label") or {}) or 2
  size = image_size or cfg.get("image_size", 224)
  if cfg.get("hidden_act", "gelu") != "gelu" or not cfg.get("qkv_bias", True):
    raise ValueError(f"unsupported {kind} variant: hidden_act={cfg.get('hidden_act')!r}, "
                     f"qkv_bias={cfg.get('qkv_bias')!r} (exact GELU and q/k/v biases only)")
  if cfg.get("num_channels", 3) != 3:
    raise ValueError(f"{kind} with {cfg['num_channels']} input channels; RGB only")
  if kind == "vit":
    return vit.ViTConfig(classes, size, cfg["patch_size"], cfg["hidden_size"],
                         cfg["num_hidden_layers"], cfg["num_attention_heads"],
                         cfg["intermediate_size"], cfg.get("layer_norm_eps", 1e-12))
  if kind == "swin":
    if cfg.get("use_absolute_embeddings"):
      raise ValueError("Swin with absolute position embeddings is not supported")
    return swin.SwinConfig(classes, size, cfg["patch_size"], cfg["embed_dim"],
                           tuple(cfg["depths"]), tuple(cfg["num_heads"]), cfg["window_size"],
                           cfg.get("mlp_ratio", 4.0), cfg.get("layer_norm_eps", 1e-5))
  raise ValueError(f"model_type {kind!r} is neither 'vit' nor 'swin'")


def load_hf_vision(directory: str | Path, num_classes: int | None = None, *,
                   image_size: int | None = None, seed: int = 0) -> Loaded:
  """A Hugging Face ViT / Swin checkpoint directory (``config.json`` and ``model.safetensors``
  or ``pytorch_model.bin``) as a Flax model. The classifier is the checkpoint's when
  ``num_classes`` is None or equals its label count, else fresh (``seed``)."""
  directory = Path(directory)
  cfg_json = files.read_json(directory / "config.json")
  weights = [directory / n for n in ("model.safetensors", "pytorch_model.bin")]
  found = next((w for w in weights if w.is_file()), None)
  if found is None:
    raise FileNotFoundError(f"{directory}: neither model.safetensors nor pytorch_model.bin")
  stored = config_from_hf(cfg_json)
  config = config_from_hf(cfg_json, num_classes=num_classes, image_size=image_size)
  keep_head = config.num_classes == stored.num_classes
  convert = convert_vit if isinstance(config, vit.ViTConfig) else convert_swin
  try:
    params = convert(files.load_state_dict(found), config, keep_head=keep_head, seed=seed)
  except (KeyError, ValueError) as err:
    raise ValueError(f"{found}: {err}") from err
  module = vit.ViT(config) if isinstance(config, vit.ViTConfig) else swin.Swin(config)
  return Loaded(module, params, keep_head)
