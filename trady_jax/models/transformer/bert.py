"""BERT and RoBERTa sequence classifiers (Hugging Face's ``BertForSequenceClassification`` /
``RobertaForSequenceClassification``) whose every encoder linear layer is selective.

The model takes ONE ``(N, T)`` int32 array of token ids, as the training loop feeds it: the
attention mask is ``ids != pad_token_id``, BERT's segment (token type) ids and RoBERTa's position
ids are computed from the ids (``token_type_ids``, ``position_ids``).

Cost reading (method-spec section 1.2, the linear reading of Eq. 3): each of the six projections
of a block (``query``, ``key``, ``value``, ``out``, ``fc1``, ``fc2``) is charged, input feature
``c`` costing ``F_out`` weights plus one stored activation per token. For BERT-base at ``T = 128``
the 72 charged layers hold 84,934,656 weights and ``12 * 6,912 * 128`` activations (6,912 = five
768-wide inputs plus fc2's 3,072). The head (``classifier``: pooler and output dense, on token 0)
is not charged and is trained whole (``selection.ALWAYS``). Embedding tables and LayerNorms are
uncharged and frozen under a selection (``layers.Embed``, ``layers.LayerNorm``).

Deterministic: no dropout (Hugging Face's 0.1 hidden / attention dropout is not modelled).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from trady_jax.layers import Embed, LayerNorm, Normalized, SelectiveDense
from trady_jax.models.transformer.attention import MLP, SelfAttention, padding_bias


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """Shapes and special tokens of a BERT / RoBERTa encoder and its classification head.

  Attributes:
    vocab_size, hidden, layers, heads, intermediate: encoder shapes (Hugging Face's
      ``vocab_size``, ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
      ``intermediate_size``).
    max_positions: rows of the position table (``max_position_embeddings``).
    type_vocab_size: rows of the segment table (2 for BERT, 1 for RoBERTa: all segment ids 0).
    layer_norm_eps: LayerNorm epsilon.
    pad_token_id: padding id (attention mask, RoBERTa's positions).
    sep_token_id: the separator ending the first segment (BERT's segment ids).
    flavor: ``'bert'`` (positions ``arange(T)``) or ``'roberta'`` (positions after the padding id).
    num_classes: outputs of the classifier.
    recompute: every block's attention and MLP recompute their projections in the backward pass
      (``SelfAttention.recompute``, ``MLP.recompute``: exact; less kept, more FLOPs).
  """
  vocab_size: int = 30522
  hidden: int = 768
  layers: int = 12
  heads: int = 12
  intermediate: int = 3072
  max_positions: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  sep_token_id: int = 102
  flavor: Literal["bert", "roberta"] = "bert"
  num_classes: int = 2
  recompute: bool = False

  def __post_init__(self):
    if self.flavor not in ("bert", "roberta"):
      raise ValueError(f"flavor must be 'bert' or 'roberta', got {self.flavor!r}")

  @property
  def max_tokens(self) -> int:
    """The longest sequence the position table covers."""
    if self.flavor == "roberta":
      return self.max_positions - self.pad_token_id - 1
    return self.max_positions


def bert_base(num_classes: int = 2) -> TextConfig:
  """bert-base-uncased: vocabulary 30,522, padding id 0, ``[SEP]`` 102, epsilon 1e-12."""
  return TextConfig(num_classes=num_classes)


def roberta_base(num_classes: int = 2) -> TextConfig:
  """roberta-base: vocabulary 50,265, padding id 1, ``</s>`` 2, 514 positions, one segment,
  epsilon 1e-5."""
  return TextConfig(vocab_size=50265, max_positions=514, type_vocab_size=1, layer_norm_eps=1e-5,
                    pad_token_id=1, sep_token_id=2, flavor="roberta", num_classes=num_classes)


def attention_mask(ids: jax.Array, config: TextConfig) -> jax.Array:
  """``(N, T)`` booleans, True on real tokens (not ``pad_token_id``)."""
  return ids != config.pad_token_id


def token_type_ids(ids: jax.Array, config: TextConfig) -> jax.Array:
  """BERT's segment ids as its tokenizer builds them for ``[CLS] A [SEP] B [SEP]``: 0 up to and
  including the first separator, 1 after it, 0 on padding; all 0 with one segment (RoBERTa).

  >>> cfg = TextConfig(pad_token_id=0, sep_token_id=3)
  >>> token_type_ids(jnp.array([[2, 7, 3, 8, 9, 3, 0]]), cfg).tolist()
  [[0, 0, 0, 1, 1, 1, 0]]
  """
  if config.type_vocab_size < 2:
    return jnp.zeros(ids.shape, jnp.int32)
  sep = (ids == config.sep_token_id).astype(jnp.int32)
  after_first = (jnp.cumsum(sep, axis=-1) - sep) > 0
  return (after_first & attention_mask(ids, config)).astype(jnp.int32)


def position_ids(ids: jax.Array, config: TextConfig) -> jax.Array:
  """BERT: ``arange(T)``. RoBERTa (Hugging Face's ``create_position_ids_from_input_ids``): real
  tokens count from ``pad_token_id + 1``, padding gets ``pad_token_id``.

  >>> position_ids(jnp.array([[0, 5, 6, 2, 1, 1]]), roberta_base()).tolist()
  [[2, 3, 4, 5, 1, 1]]
  """
  if config.flavor == "bert":
    return jnp.broadcast_to(jnp.arange(ids.shape[-1], dtype=jnp.int32), ids.shape)
  mask = attention_mask(ids, config).astype(jnp.int32)
  return jnp.cumsum(mask, axis=-1) * mask + config.pad_token_id


class EncoderLayer(nn.Module):
  """A post-LN block: ``x = attention_norm(x + attention(x))``, ``x = mlp_norm(x + mlp(x))``.
  Its input and output are norm outputs, passed as their parts (``layers.Normalized``) so that a
  recomputing sublayer keeps the norm's ``x_hat`` alone."""
  config: TextConfig

  @nn.compact
  def __call__(self, x: Normalized, bias: jax.Array) -> Normalized:
    cfg = self.config
    norm = lambda name, x: LayerNorm(cfg.layer_norm_eps, name=name)(x, parts=True)
    x = norm("attention_norm", x.output()
             + SelfAttention(cfg.heads, recompute=cfg.recompute, name="attention")(x, bias))
    return norm("mlp_norm", x.output() + MLP(cfg.intermediate, recompute=cfg.recompute,
                                             name="mlp")(x))


class ClassificationHead(nn.Module):
  """``out(tanh(pooler(x[:, 0])))``: BERT's pooler and classifier, or RoBERTa's classification
  head (``dense``, ``out_proj``); both denses uncharged, trained whole."""
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = jnp.tanh(SelectiveDense(x.shape[-1], name="pooler", charged=False)(x[:, 0]))
    return SelectiveDense(self.num_classes, name="out", charged=False)(h)


class TextClassifier(nn.Module):
  """BERT / RoBERTa encoder and classification head: ``(N, T)`` int32 token ids -> ``(N, C)``
  logits (``config.num_classes``)."""
  config: TextConfig

  @nn.compact
  def __call__(self, ids: jax.Array) -> jax.Array:
    cfg = self.config
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"expected (N, T) integer token ids, got {ids.shape} {ids.dtype}")
    if ids.shape[-1] > cfg.max_tokens:
      raise ValueError(f"{ids.shape[-1]} tokens exceed the {cfg.max_tokens} the position table "
                       f"of {cfg.max_positions} rows covers")
    embed = lambda n, name: Embed(n, cfg.hidden, name=name)
    x = (embed(cfg.vocab_size, "word_embeddings")(ids)
         + embed(cfg.max_positions, "position_embeddings")(position_ids(ids, cfg))
         + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids(ids, cfg)))
    x = LayerNorm(cfg.layer_norm_eps, name="embeddings_norm")(x, parts=True)
    bias = padding_bias(attention_mask(ids, cfg), x.x_hat.dtype)
    for i in range(cfg.layers):
      x = EncoderLayer(cfg, name=f"layers_{i}")(x, bias)
    return ClassificationHead(cfg.num_classes, name="classifier")(x.output())
