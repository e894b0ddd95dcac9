"""Embeddings, learned tensors and gated LayerNorm: uncharged, trained whole without a selection,
frozen (no gradient built) under one."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trady_jax import costs, layers
from trady_jax import selection as sel


class _Text(nn.Module):

  @nn.compact
  def __call__(self, ids):
    x = layers.Embed(50, 8, name="tok")(ids) + layers.Learned((ids.shape[-1], 8), name="pos")()
    x = layers.LayerNorm(name="norm")(x)
    x = layers.SelectiveDense(8, name="fc")(x)
    return layers.SelectiveDense(3, name="classifier", charged=False)(x.mean(1))


def _setup():
  m = _Text()
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 5)), jnp.int32)
  return m, ids, m.init(jax.random.key(0), ids)["params"]


def test_layer_norm_matches_flax_and_its_gradients_autodiff():
  kx, ks, kb, kg = jax.random.split(jax.random.key(1), 4)
  x = jax.random.normal(kx, (2, 5, 8)) * 3 + 1
  ours, flax_ln = layers.LayerNorm(1e-12), nn.LayerNorm(1e-12)
  np.testing.assert_allclose(ours.apply(ours.init(jax.random.key(0), x), x),
                             flax_ln.apply(flax_ln.init(jax.random.key(0), x), x), atol=1e-5)
  scale, bias = 1 + jax.random.normal(ks, (8,)), jax.random.normal(kb, (8,))
  cot = jax.random.normal(kg, x.shape)

  def plain(x, scale, bias):
    m = x.mean(-1, keepdims=True)
    return (x - m) * jax.lax.rsqrt(((x - m) ** 2).mean(-1, keepdims=True) + 1e-6) * scale + bias

  want = jax.grad(lambda *a: jnp.sum(plain(*a) * cot), argnums=(0, 1, 2))(x, scale, bias)
  got = jax.grad(lambda x, s, b: jnp.sum(layers.layer_norm(x, s, b, 1e-6) * cot),
                 argnums=(0, 1, 2))(x, scale, bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_uncharged_tables_are_accepted_and_frozen_under_a_selection():
  m, ids, params = _setup()
  c = costs.trace(m, (1, 5), input_dtype=jnp.int32)
  assert [l.path for l in c.charged] == ["fc/kernel"]
  full = jax.grad(lambda p: m.apply({"params": p}, ids).sum())(params)
  for path in ("tok/embedding", "pos/value", "norm/scale"):
    assert float(jnp.abs(sel.at_path(full, path)).sum()) > 0, path
  s = sel.build(params, {"fc/kernel": c["fc/kernel"].channels([1, 2])})
  grad_fn = jax.grad(lambda p: m.apply({"params": p, "selection": s}, ids).sum())
  g = grad_fn(params)
  for path in ("tok/embedding", "pos/value", "norm/scale", "norm/bias"):
    assert float(jnp.abs(sel.at_path(g, path)).sum()) == 0, path
  # the selected features' kernel gradient equals dense autodiff restricted
  np.testing.assert_allclose(g["fc"]["kernel"][1:3], full["fc"]["kernel"][1:3], rtol=1e-5)
  # nothing is scattered into the (50, 8) embedding gradient: the backward stops at the norm
  jaxpr = str(jax.make_jaxpr(grad_fn)(params))
  assert "scatter-add" not in jaxpr
