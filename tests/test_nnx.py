"""Flax NNX models: selective layers, the cost tracer and the train step on a small NNX CNN."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from trady_jax import costs, layers, nnx_layers, ops, sparse_update, steps, xla
from trady_jax import selection as sel


class NnxCNN(nnx.Module):
  """Stem, pointwise and depthwise convs, a LayerNorm and a classifier."""

  def __init__(self, rngs: nnx.Rngs, plain: bool = False):
    self.stem = nnx_layers.SelectiveConv(3, 8, (3, 3), (2, 2), rngs=rngs)
    self.pointwise = (nnx.Conv(8, 16, (1, 1), rngs=rngs) if plain else
                      nnx_layers.SelectiveConv(8, 16, (1, 1), rngs=rngs))
    self.depthwise = nnx_layers.SelectiveConv(16, 16, (3, 3), feature_group_count=16, rngs=rngs)
    self.norm = nnx.LayerNorm(16, rngs=rngs)
    self.classifier = nnx_layers.SelectiveDense(16, 5, charged=False, rngs=rngs)

  def __call__(self, x):
    x = ops.relu6(self.stem(x))
    x = self.norm(ops.relu6(self.depthwise(ops.relu6(self.pointwise(x)))))
    return self.classifier(layers.global_avg_pool(x))


class LinenCNN(nn.Module):
  """``NnxCNN`` in Linen, with the same parameter tree."""

  @nn.compact
  def __call__(self, x):
    x = ops.relu6(layers.SelectiveConv(8, (3, 3), (2, 2), name="stem")(x))
    x = ops.relu6(layers.SelectiveConv(16, (1, 1), name="pointwise")(x))
    x = ops.relu6(layers.SelectiveConv(16, (3, 3), feature_group_count=16, name="depthwise")(x))
    x = nn.LayerNorm(name="norm")(x)
    return layers.SelectiveDense(5, name="classifier", charged=False)(layers.global_avg_pool(x))


SHAPE = (4, 16, 16, 3)


@pytest.fixture(scope="module")
def nets():
  model = NnxCNN(nnx.Rngs(0))
  return model, nnx_layers.params(model), costs.trace(model, (1, *SHAPE[1:]))


def _batch(seed=1):
  kx, ky = jax.random.split(jax.random.key(seed))
  return {"image": jax.random.normal(kx, SHAPE), "label": jax.random.randint(ky, (4,), 0, 5)}


def _selection(params, c, shift):
  picks = {"pointwise/kernel": [shift, 5], "depthwise/kernel": [1, 8 + shift, 14]}
  return sel.build(params, {p: c[p].channels(i) for p, i in picks.items()},
                   trainable=(*sel.ALWAYS, "^norm/"))  # LayerNorm trained whole, as BatchNorm


def test_costs_match_the_linen_net(nets):
  model, params, c = nets
  linen = costs.trace(LinenCNN(), (1, *SHAPE[1:]))
  assert c.layers == linen.layers and c.totals() == linen.totals()
  assert [l.kind for l in c.layers] == ["conv", "pointwise", "depthwise", "dense"]
  assert c.totals()["total"] == 3 * (8 * 9 + 256) + 8 * (16 + 64) + 16 * (9 + 64)
  with pytest.raises(ValueError, match=r"^pointwise/bias: a parameter of Conv 'pointwise'"):
    costs.trace(NnxCNN(nnx.Rngs(0), plain=True), (1, *SHAPE[1:]))


def test_gradients_equal_dense_autodiff_restricted_and_the_linen_net(nets):
  model, params, c = nets
  batch, forward = _batch(), nnx_layers.forward(model)
  s = _selection(params, c, 0)

  def loss(p, s):
    return steps.cross_entropy(forward(p, s, batch["image"]), batch["label"])

  grad = jax.jit(jax.grad(loss))
  g, dense = grad(params, s), grad(params, None)
  masks = sel.mask_tree(s, params)
  for path in sel.leaf_paths(params):
    a, b, m = (np.asarray(sel.at_path(t, path)) for t in (g, dense, masks))
    m = np.broadcast_to(m, a.shape)
    np.testing.assert_allclose(a[m], b[m], rtol=2e-4, atol=1e-6, err_msg=path)
    assert not np.any(a[~m]), path
  assert np.any(g["depthwise"]["kernel"]) and np.any(g["classifier"]["kernel"])
  linen = jax.jit(jax.grad(lambda p: steps.cross_entropy(
      LinenCNN().apply({"params": p, "selection": s}, batch["image"]), batch["label"])))(params)
  chex.assert_trees_all_close(g, linen, rtol=1e-5, atol=1e-7)


def test_train_step_compiles_once_for_two_selections(nets):
  model, params, c = nets
  batch = _batch()
  pool = sel.pool(params, ["pointwise/kernel", "depthwise/kernel"],
                  trainable=(*sel.ALWAYS, "^norm/"))
  tx = sparse_update(optax.adam(1e-2), pool=pool)
  chex.clear_trace_counter()
  step = jax.jit(chex.assert_max_traces(steps.make_train_step(model, tx), n=1))
  p, opt = params, tx.init(params)
  for shift in (0, 3):
    s = _selection(params, c, shift)
    new, opt, metrics = step(p, opt, s, batch)
    kept = ~np.broadcast_to(sel.mask_tree(s, p)["pointwise"]["kernel"], (1, 1, 8, 16))
    np.testing.assert_array_equal(np.asarray(new["pointwise"]["kernel"])[kept],
                                  np.asarray(p["pointwise"]["kernel"])[kept])
    chex.assert_trees_all_equal(new["stem"], params["stem"])
    assert not np.array_equal(new["pointwise"]["kernel"][0, 0, shift],
                              p["pointwise"]["kernel"][0, 0, shift])
    p = new
  assert np.isfinite(float(metrics["loss"]))
  nnx_layers.assign(model, p)
  chex.assert_trees_all_close(model(batch["image"]),
                              nnx_layers.forward(model)(p, None, batch["image"]))
  nnx_layers.assign(model, params)  # the module-scoped model back as it was


def test_nnx_step_needs_the_memory_of_the_linen_step(nets):
  """The same ``ops`` residuals: XLA's temp memory of the selective step equals the Linen net's,
  below full fine-tuning's."""
  model, params, c = nets
  batch, s = _batch(), _selection(params, c, 0)
  sparse, sgd = optax.chain(sparse_update(), optax.sgd(0.1)), optax.sgd(0.1)

  def temp(net, tx, selection, **kw):
    step = steps.make_train_step(net, tx, **kw)
    return xla.compiled_stats(step, params, tx.init(params), selection, batch)["temp_bytes"]

  selective = temp(model, sparse, s)
  assert selective == temp(LinenCNN(), sparse, s, prefix_chunks=1)
  assert selective < 0.8 * temp(model, sgd, None)
