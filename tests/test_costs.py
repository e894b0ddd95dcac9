"""Per-layer memory costs and what ``costs.trace`` refuses (TraDy Eq. 3-4, MeDyate Eq. 4-5)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import pytest

from trady_jax import costs as costs_lib
from trady_jax import layers


def test_costs_follow_the_paper_formulas(tiny):
  _, _, c = tiny
  stem, dw, head = c["first_conv/kernel"], c["blocks_1_depthwise/kernel"], c["classifier/kernel"]
  assert (stem.weight, stem.activation, stem.macs) == (8 * 9, 32 * 32, 9 * 8 * 16 * 16)
  assert dw.kind == "depthwise" and (dw.weight, dw.activation, dw.macs) == (9, 16 * 16, 9 * 8 * 8)
  assert not head.charged and [l.index for l in c.convs] == list(range(7))
  t = c.totals()
  assert t["total"] == sum(l.in_channels * (l.weight + l.activation) for l in c.convs)
  u = c.usage({stem.path: 3, dw.path: 12})
  assert u["units"] == 3 * stem.memory + 12 * dw.memory
  assert u["weight_sparsity"] == pytest.approx(1 - (3 * 72 + 12 * 9) / t["weights"])
  assert u["flops_saved"] == pytest.approx(1 - (3 * stem.macs + 12 * dw.macs) / t["macs"])
  assert costs_lib.to_bytes(10, 5, batch=32) == (10 + 5 * 32) * 4
  assert costs_lib.to_bytes(10, 5, batch=2, dtype=jnp.bfloat16) == 40
  with pytest.raises(ValueError, match="selected of"):
    c.usage({stem.path: 4})
  with pytest.raises(KeyError, match="unknown layer"):
    c.usage({"nope/kernel": 1})


class _UserNet(nn.Module):
  """A selective conv, a LayerNorm and, with ``plain``, a layer the memory model cannot charge."""
  plain: Any = None

  @nn.compact
  def __call__(self, x):
    x = nn.LayerNorm(name="norm")(layers.SelectiveConv(4, name="conv")(x))
    if self.plain is not None:
      x = self.plain(x)
    return layers.SelectiveDense(3, name="head", charged=False)(jnp.mean(x, (1, 2)))


class _Tokens(nn.Module):
  """A charged dense layer on (batch, tokens, features), then an uncharged classifier."""

  @nn.compact
  def __call__(self, x):
    x = layers.SelectiveDense(6, name="proj")(x)
    return layers.SelectiveDense(2, name="classifier", charged=False)(x.mean(1))


def test_dense_layers_are_charged_per_input_feature_and_token():
  c = costs_lib.trace(_Tokens(), (1, 7, 5))
  proj, head = c["proj/kernel"], c["classifier/kernel"]
  # input feature c: F_out weights plus one activation per token; dW MACs F_out * T
  assert (proj.weight, proj.activation, proj.macs, proj.index) == (6, 7, 42, 0)
  assert proj.charged and not head.charged and c.charged == (proj,)
  assert c.totals() == {"weights": 30, "activations": 35, "total": 65, "macs": 210}
  assert c.head_weights() == 6 * 2
  assert proj.channels([1, 3]).axis == -2


def test_trace_refuses_layers_it_cannot_charge():
  c = costs_lib.trace(_UserNet(), (1, 8, 8, 3))  # LayerNorm: trained whole, not charged
  assert [l.path for l in c.layers] == ["conv/kernel", "head/kernel"]
  assert c.totals()["total"] == 3 * (4 * 9 + 64)
  for plain, path in [(nn.Conv(4, (3, 3)), "plain/bias"),
                      (nn.Dense(4, use_bias=False), "plain/kernel")]:
    name = type(plain).__name__
    with pytest.raises(ValueError, match=f"^{path}: .*{name} 'plain'.*SelectiveConv"):
      costs_lib.trace(_UserNet(plain), (1, 8, 8, 3))
