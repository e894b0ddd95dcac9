"""Selective attention and MLP blocks: exact recomputation, less kept for the backward pass."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trady_jax import costs, layers, xla
from trady_jax import selection as sel
from trady_jax.models.transformer.attention import MLP, SelfAttention, gelu, padding_bias

_X = jax.random.normal(jax.random.key(0), (2, 6, 16))
_MASK = jnp.array([[1, 1, 1, 1, 0, 0], [1] * 6], bool)


def _grads_and_residuals(module, *args):
  params = module.init(jax.random.key(1), _X, *args)["params"]
  f = lambda p, x: jnp.sum(module.apply({"params": p}, x, *args) ** 2)
  return jax.grad(f, argnums=(0, 1))(params, _X), xla.residual_bytes(lambda p: f(p, _X), params)


@pytest.mark.parametrize("plain, recomputed, args", [
    (SelfAttention(4, recompute_softmax=False), SelfAttention(4), (padding_bias(_MASK),)),
    (SelfAttention(4, fused_qkv=True, recompute_softmax=False), SelfAttention(4, fused_qkv=True),
     ()),
    (MLP(32), MLP(32, recompute=True), ()),
    (SelfAttention(4), SelfAttention(4, recompute=True), (padding_bias(_MASK),)),
    (SelfAttention(4, fused_qkv=True), SelfAttention(4, fused_qkv=True, recompute=True), ())])
def test_recomputation_is_exact_and_keeps_less(plain, recomputed, args):
  (g0, r0), (g1, r1) = _grads_and_residuals(plain, *args), _grads_and_residuals(recomputed, *args)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  assert r1["float_activations"] < r0["float_activations"]


def test_a_recomputing_sublayer_runs_once_per_eager_forward():
  calls = []
  counted = lambda x: calls.append(1) or gelu(x)
  module = MLP(32, activation=counted, recompute=True, chunks=1)
  variables = module.init(jax.random.key(1), _X)  # creating the variables runs it once more
  calls.clear()
  y = module.apply(variables, _X)
  assert len(calls) == 1
  np.testing.assert_allclose(y, MLP(32).apply(variables, _X), rtol=1e-6, atol=1e-6)


def test_gelu_is_exact_and_its_gradient_autodiff():
  x = jnp.linspace(-6, 6, 101)
  np.testing.assert_allclose(gelu(x), jax.nn.gelu(x, approximate=False), atol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(gelu(x)))(x),
                             jax.grad(lambda x: jnp.sum(jax.nn.gelu(x, approximate=False)))(x),
                             atol=1e-6)


def test_padding_is_masked_out():
  m = SelfAttention(4)
  p = m.init(jax.random.key(1), _X)
  y = m.apply(p, _X, padding_bias(_MASK))
  x2 = _X.at[0, 4:].set(100.0)  # changing padded tokens changes nothing on real ones
  np.testing.assert_allclose(m.apply(p, x2, padding_bias(_MASK))[0, :4], y[0, :4], atol=1e-5)


@pytest.mark.parametrize("recompute", [False, True])
def test_selected_features_of_every_projection_get_dense_gradients_restricted(recompute):
  m = SelfAttention(4, recompute=recompute)
  params = m.init(jax.random.key(1), _X)["params"]
  c = costs.trace(m, (1, 6, 16))
  assert [l.path for l in c.charged] == ["query/kernel", "key/kernel", "value/kernel", "out/kernel"]
  idx = jnp.array([2, 7, 11])
  s = sel.build(params, {l.path: l.channels(idx) for l in c.charged})
  f = lambda p, v: jnp.sum(jnp.tanh(m.apply(v(p), _X, padding_bias(_MASK))))
  dense = jax.grad(f)(params, lambda p: {"params": p})
  sparse = jax.grad(f)(params, lambda p: {"params": p, "selection": s})
  for name in ("query", "key", "value", "out"):
    np.testing.assert_allclose(sparse[name]["kernel"][idx], dense[name]["kernel"][idx], rtol=1e-5,
                               atol=1e-6)
    assert not np.any(np.delete(np.asarray(sparse[name]["kernel"]), np.asarray(idx), axis=0))


def _tiny_models():
  from trady_jax.models.transformer import bert, swin, vit
  ids = jnp.asarray(np.arange(16).reshape(2, 8) % 90 + 3, jnp.int32)
  img = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  return [(bert.TextClassifier(bert.TextConfig(vocab_size=100, hidden=16, layers=2, heads=2,
                                               intermediate=32, max_positions=32)), ids),
          (vit.ViT(vit.ViTConfig(3, 16, 4, 16, 2, 2, 32)), img[:, :16, :16]),
          (swin.Swin(swin.SwinConfig(3, 32, 4, 16, (2, 2), (2, 4), 4)), img),
          # 6x6 maps in windows of 4: padded (and shifted) windows
          (swin.Swin(swin.SwinConfig(3, 24, 4, 16, (2, 2), (2, 4), 4)), img[:, :24, :24])]


@pytest.mark.parametrize("index", range(4), ids=["bert", "vit", "swin", "swin-padded"])
def test_models_recompute_their_projections_exactly(index):
  import dataclasses
  model, x = _tiny_models()[index]
  params = model.init(jax.random.key(1), x)["params"]
  again = model.clone(config=dataclasses.replace(model.config, recompute=True))
  f = lambda m: lambda p: jnp.sum(m.apply({"params": p}, x) ** 2)
  for a, b in zip(jax.tree.leaves(jax.grad(f(model))(params)),
                  jax.tree.leaves(jax.grad(f(again))(params))):
    # float32 sums over batch slices in another order: equal to rounding
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  kept = [xla.residual_bytes(f(m), params)["float_activations"] for m in (model, again)]
  assert kept[1] < kept[0]


class _NormThen(nn.Module):
  """A LayerNorm, then ``sublayer`` on its output or on its parts."""
  sublayer: nn.Module
  parts: bool

  @nn.compact
  def __call__(self, x):
    s = jnp.linspace(0.5, 1.5, x.shape[-1])
    norm = layers.LayerNorm(1e-5)(x, parts=True)
    norm = layers.Normalized(norm.x_hat, norm.scale * s, norm.bias + s)  # not the identity map
    return self.sublayer(norm if self.parts else norm.output())


@pytest.mark.parametrize("sublayer", [MLP(32, recompute=True), SelfAttention(4, recompute=True),
                                      MLP(32)], ids=["mlp", "attention", "mlp-stored"])
def test_a_norms_parts_are_exact_and_a_recomputing_sublayer_keeps_x_hat_alone(sublayer):
  (g0, r0), (g1, r1) = (_grads_and_residuals(_NormThen(sublayer.clone(), parts))
                        for parts in (False, True))
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  saved = r0["float_activations"] - r1["float_activations"]
  if sublayer.recompute:  # the norm's output is no longer kept beside its x_hat, its (here
    # computed) scale and shift are
    assert saved == (_X.size - 2 * _X.shape[-1]) * 4, (r0, r1)
  else:  # nothing changes without recomputation
    assert saved == 0, (r0, r1)


def test_recomputed_mlp_keeps_the_selection_of_fc1():
  plain, again = MLP(32), MLP(32, recompute=True)
  params = plain.init(jax.random.key(1), _X)["params"]
  s = sel.build(params, {"fc1/kernel": sel.Channels(jnp.array([1, 4, 9]), axis=-2)})
  f = lambda m: lambda p: jnp.sum(jnp.tanh(m.apply({"params": p, "selection": s}, _X)))
  g0, g1 = jax.grad(f(plain))(params), jax.grad(f(again))(params)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert np.count_nonzero(np.abs(g1["fc1"]["kernel"]).sum(1)) == 3
  assert not np.any(g1["fc2"]["kernel"])  # frozen
