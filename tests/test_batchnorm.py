"""BatchNorm layers (``batchnorm``), BN restored by calibration, BN through the train step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trady_jax import batchnorm, costs, steps
from trady_jax import selection as sel
from trady_jax.models import calibration, mcunet
from trady_jax.models.tiny import TinyCNN
from trady_jax.sparse_update import sparse_update


def reference_bn(x, scale, bias, eps=1e-5):
  mean = x.mean((0, 1, 2))
  var = ((x - mean) ** 2).mean((0, 1, 2))
  return (x - mean) / jnp.sqrt(var + eps) * scale + bias


def test_normalize_matches_autodiff_of_plain_batchnorm():
  k = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k[0], (4, 5, 5, 3)) * 2 + 1
  scale, bias = jnp.array([1.5, -0.5, 2.0]), jnp.array([0.1, 0.2, 0.3])
  w = jax.random.normal(k[1], x.shape)
  mine = lambda *a: jnp.sum(jnp.sin(batchnorm.normalize(*a, 1e-5)[0]) * w)
  ref = lambda *a: jnp.sum(jnp.sin(reference_bn(*a)) * w)
  np.testing.assert_allclose(mine(x, scale, bias), ref(x, scale, bias), rtol=1e-5)
  grads = jax.grad(mine, (0, 1, 2))(x, scale, bias), jax.grad(ref, (0, 1, 2))(x, scale, bias)
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_batchnorm_modes_statistics_and_gradients():
  x = jax.random.normal(jax.random.key(1), (8, 4, 4, 3)) * 3 + 2
  for mode in ("train", "shift"):
    bn = batchnorm.BatchNorm(mode)
    v = bn.init(jax.random.key(0), x)
    y, new = bn.apply(v, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y, reference_bn(x, 1.0, 0.0), rtol=1e-4, atol=1e-4)
    # PyTorch: momentum 0.1, unbiased variance in the running estimate
    n = 8 * 4 * 4
    np.testing.assert_allclose(new["batch_stats"]["mean"], 0.1 * x.mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(new["batch_stats"]["var"],
                               0.9 + 0.1 * x.var((0, 1, 2)) * n / (n - 1), rtol=1e-5)
    # evaluation: running statistics
    stats = {"mean": jnp.array([1.0, 2.0, 3.0]), "var": jnp.array([4.0, 1.0, 0.25])}
    y = bn.apply({"params": v["params"], "batch_stats": stats}, x)
    np.testing.assert_allclose(y, (x - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-5), rtol=1e-5)
    g = jax.grad(lambda p: jnp.sum(bn.apply({"params": p, "batch_stats": v["batch_stats"]}, x,
                                            mutable=["batch_stats"])[0] ** 3))(v["params"])
    assert np.abs(g["bias"]).sum() > 0
    assert (np.abs(g["scale"]).sum() > 0) == (mode == "train")  # 'shift': scale frozen


def test_shift_mode_backward_is_linear():
  """'shift': batch statistics are constants in the backward, dx = dy * scale / sqrt(var + eps)."""
  x = jax.random.normal(jax.random.key(2), (4, 3, 3, 2)) + 5
  w = jax.random.normal(jax.random.key(3), x.shape)
  bn = batchnorm.BatchNorm("shift")
  v = bn.init(jax.random.key(0), x)
  dx = jax.grad(lambda x: jnp.sum(bn.apply(v, x, mutable=["batch_stats"])[0] * w))(x)
  np.testing.assert_allclose(dx, w / jnp.sqrt(x.var((0, 1, 2)) + 1e-5), rtol=1e-5)


def test_stored_bytes_counts_every_bn_in_train_mode_only():
  net = costs.trace(TinyCNN(bn="train"), (1, 32, 32, 3))
  per_sample = sum(l.out_channels * l.out_hw[0] * l.out_hw[1] for l in net.convs)
  assert batchnorm.stored_bytes(net, "train", 4) == 4 * 4 * per_sample
  assert batchnorm.stored_bytes(net, "shift", 4) == 0
  with pytest.raises(ValueError, match="unknown BatchNorm mode"):
    batchnorm.check_mode("eval")


def images(n=2, b=8, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32) for _ in range(n)]


def folded_tiny():
  model = TinyCNN(width=8)
  params = model.init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)))["params"]
  # non-trivial folded biases
  return model, jax.tree_util.tree_map_with_path(
      lambda p, a: a + 0.3 if sel.path_str(p).endswith("bias") else a, params)


@pytest.mark.parametrize("unit_variance", [True, False])
def test_restored_bn_computes_the_folded_function(unit_variance):
  model, params = folded_tiny()
  calib = images()
  bn_model, bp, stats = calibration.restore_bn(model, params, calib, unit_variance=unit_variance)
  assert bn_model.bn == "train" and "bias" not in bp["first_conv"]
  x = images(1, 4, seed=5)[0]
  want = model.apply({"params": params}, x)
  got = bn_model.apply({"params": bp, "batch_stats": stats}, x)  # evaluation mode
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  # training mode on the calibration images themselves: their own statistics
  both = np.concatenate(calib)
  y, _ = bn_model.apply({"params": bp, "batch_stats": stats}, both, mutable=["batch_stats"])
  np.testing.assert_allclose(y, model.apply({"params": params}, both), rtol=1e-3, atol=1e-3)
  if unit_variance:  # the conv output has unit variance; the scale carries the channel's size
    np.testing.assert_allclose(stats["first_conv"]["bn"]["var"], 1.0, rtol=1e-5)
  else:
    np.testing.assert_array_equal(bp["first_conv"]["kernel"], params["first_conv"]["kernel"])


def small_mcunet(feature_mix=None):
  spec = mcunet.NetSpec(mcunet.Conv(3, 8, 3, 2, act="relu6"),
                        (mcunet.Block(mcunet.Conv(8, 8, 3, 1, 8, "relu6"), mcunet.Conv(8, 16)),),
                        feature_mix, head_classes=5)
  return mcunet.MCUNet(spec, 5)


def test_standardized_head_input_is_an_affine_map_of_the_features():
  model = small_mcunet()
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  bn_model, bp, stats = calibration.restore_bn(model, params, images())
  before = jax.tree.map(np.array, bp)
  after, path = calibration.standardize_head_input(bn_model, jax.tree.map(np.array, bp))
  assert path == "blocks_0/pointwise2"
  x = images(1, 4, seed=9)[0]
  f0 = bn_model.apply({"params": before, "batch_stats": stats}, x, pooled=True)
  f1 = bn_model.apply({"params": after, "batch_stats": stats}, x, pooled=True)
  bn = before["blocks_0"]["pointwise2"]["bn"]
  np.testing.assert_allclose(f0, f1 * bn["scale"] + bn["bias"], rtol=1e-4, atol=1e-4)
  # a ReLU6 feature-mix conv in between: not an affine map, left alone
  fm = small_mcunet(mcunet.Conv(16, 32, act="relu6"))
  assert calibration.head_input_bn(fm) is None


def test_train_step_trains_bn_for_every_strategy_and_updates_statistics():
  model = TinyCNN(bn="train")
  v = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  params, stats = v["params"], v["batch_stats"]
  net = costs.trace(model, (1, 32, 32, 3))
  layer = net["blocks_1_pointwise1/kernel"]
  selection = sel.build(params, {layer.path: layer.channels([0, 2])})
  flat = dict(jax.tree_util.tree_flatten_with_path(selection, is_leaf=sel.is_marker)[0])
  marks = {sel.path_str(p): m for p, m in flat.items()}
  assert marks["first_conv/bn/scale"] == sel.ALL and marks["first_conv/kernel"] == sel.FROZEN
  tx = optax.chain(sparse_update(), optax.sgd(0.1))
  step = jax.jit(steps.make_train_step(model, tx))
  batch = {"image": jnp.asarray(np.concatenate(images(1, 8))), "label": jnp.arange(8) % 10}
  new, _, m = step(params, tx.init(params), selection, batch, stats)
  assert not np.allclose(new["first_conv"]["bn"]["bias"], params["first_conv"]["bn"]["bias"])
  np.testing.assert_array_equal(new["first_conv"]["kernel"], params["first_conv"]["kernel"])
  assert not np.allclose(m["batch_stats"]["first_conv"]["bn"]["mean"],
                         stats["first_conv"]["bn"]["mean"])
  out = steps.make_eval_step(model)(new, batch, m["batch_stats"])
  assert int(out["count"]) == 8
