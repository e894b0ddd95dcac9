"""BERT / RoBERTa classifiers: the papers' cost totals, ids computed from the token ids, selective
gradients, Hugging Face conversion, and logits equal to ``transformers``' on converted checkpoints."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trady_jax import costs
from trady_jax import selection as sel
from trady_jax.models.formats import hf_text
from trady_jax.models.transformer import bert

TINY = dict(vocab_size=100, hidden=32, layers=2, heads=4, intermediate=64, num_classes=3)
TINY_BERT = bert.TextConfig(max_positions=40, sep_token_id=3, **TINY)
TINY_ROBERTA = bert.TextConfig(max_positions=42, type_vocab_size=1, layer_norm_eps=1e-5,
                               pad_token_id=1, sep_token_id=2, flavor="roberta", **TINY)
# [CLS]=2 A [SEP]=3 B [SEP] padding=0, as BERT's tokenizer lays out a pair; one single segment.
BERT_IDS = np.array([[2, 10, 11, 3, 20, 21, 22, 3, 0, 0],
                     [2, 5, 6, 7, 3, 9, 3, 0, 0, 0],
                     [2, 4, 5, 6, 7, 8, 9, 10, 11, 3]])
# <s>=0 A </s></s> B </s> padding=1, as RoBERTa's tokenizer lays out a pair.
ROBERTA_IDS = np.array([[0, 10, 11, 2, 2, 21, 22, 2, 1, 1],
                        [0, 5, 6, 7, 2, 2, 9, 2, 1, 1],
                        [0, 4, 5, 6, 7, 8, 9, 10, 11, 2]])


def test_the_papers_baseline_total_for_bert_and_roberta_base():
  """96,225,792 units (method-spec section 11) = the 72 charged linears' weights 84,934,656 + the
  uncharged 768x768 pooler and 768x2 output (589,824 + 1,536) + 12 layers x 6,912 linear inputs
  per token (q, k, v, out, fc1: 768 each; fc2: 3,072) x 129 tokens. The memory model charges
  activations for the 128 tokens fed (Eq. 3 read for linear layers, method-spec 1.2)."""
  for config in (bert.bert_base(2), bert.roberta_base(2)):
    c = costs.trace(bert.TextClassifier(config), (1, 128), input_dtype=jnp.int32)
    t = c.totals()
    assert len(c.charged) == 72
    assert t["weights"] == 84_934_656 and t["activations"] == 12 * 6912 * 128
    assert c.head_weights() == 589_824 + 1_536
    assert t["weights"] + c.head_weights() + 12 * 6912 * 129 == 96_225_792
    assert c["layers_11/mlp/fc2/kernel"].weight == 768
    assert c["layers_11/mlp/fc2/kernel"].in_channels == 3072
    assert [l.path for l in c.layers if not l.charged] == ["classifier/pooler/kernel",
                                                          "classifier/out/kernel"]


def test_segment_and_position_ids_follow_the_tokenizers():
  ids = jnp.asarray(BERT_IDS[:2])
  assert bert.token_type_ids(ids, TINY_BERT).tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 0, 0],
                                                          [0, 0, 0, 0, 0, 1, 1, 0, 0, 0]]
  assert bert.position_ids(ids, TINY_BERT).tolist() == [list(range(10))] * 2
  assert bert.attention_mask(ids, TINY_BERT).sum(-1).tolist() == [8, 7]
  ids = jnp.asarray(ROBERTA_IDS[:2])
  assert bert.token_type_ids(ids, TINY_ROBERTA).tolist() == [[0] * 10] * 2
  assert bert.position_ids(ids, TINY_ROBERTA).tolist() == [[2, 3, 4, 5, 6, 7, 8, 9, 1, 1]] * 2
  with pytest.raises(ValueError, match="41 tokens exceed the 40"):
    bert.TextClassifier(TINY_ROBERTA).init(jax.random.key(0), jnp.zeros((1, 41), jnp.int32))


def test_segment_ids_and_separator_match_a_wordpiece_tokenizer(tmp_path):
  tokenizers = pytest.importorskip("tokenizers", reason="pip install 'trady-jax[reference]'")
  words = "the cat sat on a mat dog ran".split()
  tokens = ["[PAD]", "[UNK]", "[CLS]", "[MASK]", words[0], "[SEP]", *words[1:]]  # [SEP] = 5
  tok = tokenizers.BertWordPieceTokenizer({t: i for i, t in enumerate(tokens)})
  tok.enable_padding(length=12)
  tok.save(str(tmp_path / "tokenizer.json"))
  assert hf_text.separator_from_tokenizer(tmp_path, "bert") == 5
  (tmp_path / "tokenizer.json").unlink()
  tok.save_model(str(tmp_path))  # vocab.txt
  assert hf_text.separator_from_tokenizer(tmp_path, "bert") == 5
  assert hf_text.separator_from_tokenizer(tmp_path, "roberta") is None
  batch = tok.encode_batch([("the cat sat", "a dog ran on the mat"), ("the cat", "a dog"),
                            "the mat sat"])
  ids = jnp.asarray([e.ids for e in batch], jnp.int32)
  config = dataclasses.replace(TINY_BERT, sep_token_id=5)
  assert bert.token_type_ids(ids, config).tolist() == [e.type_ids for e in batch]
  assert bert.attention_mask(ids, config).astype(int).tolist() == [e.attention_mask for e in batch]


def _tiny(config=TINY_BERT):
  """The module and random parameters drawn with numpy (an eager init compiles one random kernel
  per shape): kernels of variance 1 / fan-in, norm scales near one."""
  rng = np.random.default_rng(0)

  def draw(path, s):
    leaf = sel.path_str(path).rsplit("/", 1)[-1]
    std = {"kernel": s.shape[0] ** -0.5, "embedding": 1.0}.get(leaf, 0.1)
    return jnp.asarray((leaf == "scale") + rng.normal(0, std, s.shape), jnp.float32)

  return (bert.TextClassifier(config),
          jax.tree_util.tree_map_with_path(draw, hf_text.param_shapes(config)))


def test_selected_features_get_the_dense_gradient_and_the_rest_is_frozen():
  module, params = _tiny(dataclasses.replace(TINY_BERT, layers=1))  # one block: compiles faster
  ids = jnp.asarray(BERT_IDS)
  c = costs.trace(module, ids.shape, input_dtype=jnp.int32)
  picks = {"layers_0/attention/query/kernel": [1, 7, 30], "layers_0/mlp/fc2/kernel": [0, 63]}
  s = sel.build(params, {p: c[p].channels(i) for p, i in picks.items()})
  grad = jax.jit(jax.grad(lambda p, s: (module.apply(
      {"params": p} if s is None else {"params": p, "selection": s}, ids) ** 2).sum()))
  full, got = grad(params, None), grad(params, s)
  for path, idx in picks.items():
    want = np.asarray(sel.at_path(full, path))[idx]
    assert np.abs(want).max() > 0
    g = np.asarray(sel.at_path(got, path))
    np.testing.assert_allclose(g[idx], want, rtol=1e-5, atol=1e-7)
    assert not np.delete(g, idx, axis=0).any()
  np.testing.assert_allclose(got["classifier"]["out"]["kernel"],
                             full["classifier"]["out"]["kernel"], rtol=1e-5)
  for path in ("word_embeddings/embedding", "embeddings_norm/scale", "layers_0/mlp_norm/bias",
               "layers_0/attention/key/kernel", "layers_0/mlp/fc1/kernel"):
    assert float(jnp.abs(sel.at_path(got, path)).sum()) == 0, path


def _as_hf(params, config, *, prefixed=True):
  """A Hugging Face state dict holding ``params`` (the inverse of the conversion)."""
  sd = {}
  for path, (key, base) in hf_text.hf_names(config).items():
    value = np.asarray(sel.at_path(params, path))
    key = f"{config.flavor}.{key}" if base and prefixed else key
    sd[key] = value.T if path.endswith("kernel") else value
  return sd


@pytest.mark.parametrize("config", [TINY_BERT, TINY_ROBERTA], ids=["bert", "roberta"])
def test_conversion_round_trips_and_ignores_pretraining_heads(config):
  _, params = _tiny(config)
  sd = _as_hf(params, config)
  sd[f"{config.flavor}.embeddings.position_ids"] = np.arange(40)[None]
  sd["cls.predictions.bias"] = sd["lm_head.bias"] = np.zeros(100)
  back = hf_text.convert_hf_text(sd, config)
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_a_base_model_checkpoint_gets_a_fresh_head_and_legacy_norm_names():
  _, params = _tiny()
  sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in _as_hf(params, TINY_BERT, prefixed=False).items()
        if not k.startswith("classifier.")}
  got = hf_text.convert_hf_text(sd, TINY_BERT, seed=1)
  np.testing.assert_array_equal(got["classifier"]["pooler"]["kernel"],
                                params["classifier"]["pooler"]["kernel"])
  np.testing.assert_array_equal(got["layers_1"]["mlp_norm"]["scale"],
                                params["layers_1"]["mlp_norm"]["scale"])
  out = np.asarray(got["classifier"]["out"]["kernel"])
  assert out.shape == (32, 3) and 0.01 < out.std() < 0.03
  assert not np.asarray(got["classifier"]["out"]["bias"]).any()


def test_conversion_errors_name_the_keys():
  _, params = _tiny()
  sd = _as_hf(params, TINY_BERT)
  del sd["bert.encoder.layer.1.attention.self.key.weight"]
  sd["bert.encoder.layer.1.adapter.weight"] = np.zeros(3)
  with pytest.raises(ValueError, match=r"missing 1 keys \['bert.encoder.layer.1.attention.self."
                     r"key.weight'\], unexpected 1 keys \['bert.encoder.layer.1.adapter.weight'\]"):
    hf_text.convert_hf_text(sd, TINY_BERT)
  with pytest.raises(ValueError, match=r"classifier.weight of shape \(3, 32\) -> classifier/out/"
                     r"kernel \(32, 3\), the bert model expects \(32, 2\)"):
    hf_text.convert_hf_text(_as_hf(params, TINY_BERT), dataclasses.replace(TINY_BERT,
                                                                           num_classes=2))
  with pytest.raises(ValueError, match="model_type 'gpt2'"):
    hf_text.config_from_hf({"model_type": "gpt2"})


def test_a_sharded_safetensors_folder_loads_without_torch(tmp_path):
  save_file = pytest.importorskip("safetensors.numpy", reason="safetensors not installed").save_file
  _, params = _tiny(TINY_ROBERTA)
  sd = _as_hf(params, TINY_ROBERTA)
  shards = {"model-00001-of-00002.safetensors": {k: v for k, v in sd.items() if "layer.1." in k},
            "model-00002-of-00002.safetensors": {k: v for k, v in sd.items() if "layer.1." not in k}}
  for name, part in shards.items():
    save_file({k: np.ascontiguousarray(v) for k, v in part.items()}, tmp_path / name)
  index = {"weight_map": {k: name for name, part in shards.items() for k in part}}
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
  hf = {"model_type": "roberta", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 42,
        "type_vocab_size": 1, "layer_norm_eps": 1e-5, "pad_token_id": 1, "eos_token_id": 2,
        "id2label": {"0": "a", "1": "b", "2": "c"}}
  (tmp_path / "config.json").write_text(json.dumps(hf))
  (tmp_path / "vocab.txt").write_text("\n".join(["x"] * 7 + ["</s>"]))
  module, got = hf_text.load_hf_text(tmp_path)
  assert module.config == TINY_ROBERTA  # the config's eos_token_id before the tokenizer's
  jax.tree.map(np.testing.assert_array_equal, got, params)
  del hf["eos_token_id"]
  (tmp_path / "config.json").write_text(json.dumps(hf))
  assert hf_text.load_hf_text(tmp_path)[0].config.sep_token_id == 7
  with pytest.raises(ValueError, match=r"classifier.out_proj.weight of shape \(3, 32\)"):
    hf_text.load_hf_text(tmp_path, num_classes=5)


@pytest.fixture(scope="module")
def reference():
  """transformers (and torch, which runs it) from the optional ``reference`` extra."""
  torch = pytest.importorskip(
      "torch", reason="the parity tests run the PyTorch reference: pip install torch")
  transformers = pytest.importorskip(
      "transformers", reason="the parity tests need pip install 'trady-jax[reference]'")
  return torch, transformers


def _hf_model(torch, transformers, flavor):
  """A random-init Hugging Face classifier of the tiny config, weights spread (std 0.3 added) so
  that logits are of order one and a 1e-4 agreement means something."""
  kw = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, num_labels=3)
  torch.manual_seed(0)
  if flavor == "bert":
    model = transformers.BertForSequenceClassification(
        transformers.BertConfig(max_position_embeddings=40, sep_token_id=3, **kw))
  else:
    model = transformers.RobertaForSequenceClassification(transformers.RobertaConfig(
        max_position_embeddings=42, type_vocab_size=1, layer_norm_eps=1e-5, **kw))
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.3 * torch.randn_like(p))
  return model.eval()


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "legacy-bin"])
@pytest.mark.parametrize("flavor", ["bert", "roberta"])
def test_logits_equal_transformers_on_a_saved_checkpoint(reference, tmp_path, flavor, fmt):
  torch, transformers = reference
  model = _hf_model(torch, transformers, flavor)
  ids = BERT_IDS if flavor == "bert" else ROBERTA_IDS
  config = TINY_BERT if flavor == "bert" else TINY_ROBERTA
  model.save_pretrained(tmp_path)
  if fmt != "safetensors":  # a torch.save'd state dict (zip or pre-1.6 layout), read without torch
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin",
               _use_new_zipfile_serialization=fmt == "bin")
  module, params = hf_text.load_hf_text(tmp_path)
  assert module.config == config
  extra = {}
  if flavor == "bert":  # segment ids as the tokenizer builds them, not the model's default
    extra["token_type_ids"] = torch.tensor(np.asarray(bert.token_type_ids(ids, config)))
    assert extra["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0]
  with torch.no_grad():
    want = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(ids != config.pad_token_id),
                 **extra).logits.numpy()
  got = np.asarray(module.apply({"params": params}, jnp.asarray(ids, jnp.int32)))
  assert np.abs(want).max() > 0.1 and np.abs(want[0] - want[1]).max() > 0.01
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
