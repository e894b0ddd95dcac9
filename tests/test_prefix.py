"""The frozen prefix runs in batch chunks: the same loss and update, less temp memory."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trady_jax import costs, prefix, samplers, sparse_update, steps, xla
from trady_jax import selection as sel
from trady_jax import models
from trady_jax.models.tiny import TinyCNN

SIZE, BATCH = 64, 8


def build(name):
  model = models.build_model(name, 10)
  params = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))["params"]
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(-1, 1, (BATCH, SIZE, SIZE, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, BATCH), jnp.int32)}
  return model, params, costs.trace(model, (1, SIZE, SIZE, 3)), batch


@pytest.fixture(scope="module")
def net():
  return build("mbv2-w0.35")


@pytest.fixture(scope="module", params=["mbv2-w0.35", "resnet18"])
def any_net(request):
  return build(request.param)


def select_from(model, params, c, first_stage, budget=3000, key=0):
  """A TraDy-style draw over the conv layers in stages ``>= first_stage``."""
  pool = [l.path for l in c.convs if model.stage_of(l.path) >= first_stage]
  return samplers.uniform(params, c, budget, pool).sample(jax.random.key(key))


def test_stages_compose_to_the_whole_net(any_net):
  model, params, c, batch = any_net
  x, v = batch["image"], {"params": params}
  whole = model.apply(v, x)
  head = model.stage_of("classifier/kernel")
  assert [model.stage_of(l.path) for l in c.layers] == sorted(model.stage_of(l.path)
                                                               for l in c.layers)
  for k in (1, 4, head):
    h = model.apply(v, x, stop=k)
    np.testing.assert_allclose(model.apply(v, h, start=k), whole, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="out of range"):
    model.apply(v, x, start=3, stop=3)


def test_frozen_stages_reads_the_selection_structure(net):
  model, params, c, _ = net
  n = len(model.spec.blocks)
  assert [model.stage_of(p) for p in ("first_conv/kernel", "blocks_0/depthwise/kernel",
                                      "blocks_3/pointwise2/bias", "feature_mix/kernel",
                                      "classifier/bias")] == [0, 1, 4, n + 1, n + 1]
  s = select_from(model, params, c, 6)
  trained = [model.stage_of(p) for p, k in sel.counts(s).items() if k]
  assert prefix.frozen_stages(model, s) == min(trained) >= 6
  assert prefix.frozen_stages(model, select_from(model, params, c, 0, budget=10**7)) == 0
  assert prefix.frozen_stages(model, None) == 0
  tiny = TinyCNN(num_classes=10)
  tp = tiny.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  tc = costs.trace(tiny, (1, 32, 32, 3))
  deep = samplers.uniform(tp, tc, 500, [tc.convs[-1].path]).sample(jax.random.key(0))
  assert prefix.frozen_stages(tiny, deep) == 0  # no stage_of: runs whole


@pytest.mark.parametrize("batch,chunks,want", [(32, 8, 8), (12, 8, 6), (7, 8, 7), (7, 4, 1),
                                               (5, 0, 1), (2, 8, 2)])
def test_chunk_count_divides_the_batch(batch, chunks, want):
  assert prefix.chunk_count(batch, chunks) == want


def test_chunked_prefix_gives_the_same_step_with_less_memory(net):
  model, params, c, batch = net
  s = select_from(model, params, c, 5)
  assert prefix.frozen_stages(model, s) >= 5
  tx = optax.chain(sparse_update(), optax.sgd(1.0))
  out, temp = {}, {}
  for chunks in (1, 4):
    step = steps.make_train_step(model, tx, prefix_chunks=chunks)
    out[chunks] = jax.jit(step)(params, tx.init(params), s, batch)
    temp[chunks] = xla.compiled_stats(step, params, tx.init(params), s, batch)["temp_bytes"]
  (p1, _, m1), (p4, _, m4) = out[1], out[4]
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
  moved = 0
  for a, b, p0 in zip(jax.tree.leaves(p4), jax.tree.leaves(p1), jax.tree.leaves(params)):
    np.testing.assert_allclose(a - p0, b - p0, rtol=1e-4, atol=1e-6)
    moved += int(np.any(a != p0))
  assert moved > 1  # the update really moved the selected layers and the classifier
  assert temp[4] < 0.8 * temp[1], temp


def test_chunked_evaluation_counts_the_same_with_less_memory(net):
  model, params, _, batch = net
  batch = dict(batch, mask=jnp.arange(BATCH) < BATCH - 3)  # a padded last batch
  out, temp = {}, {}
  for chunks in (1, 4):
    step = steps.make_eval_step(model, chunks=chunks)
    out[chunks] = jax.jit(step)(params, batch)
    temp[chunks] = xla.compiled_stats(step, params, batch)["temp_bytes"]
  assert int(out[4]["count"]) == int(out[1]["count"]) == BATCH - 3
  assert int(out[4]["correct"]) == int(out[1]["correct"])
  np.testing.assert_allclose(out[4]["loss_sum"], out[1]["loss_sum"], rtol=1e-5)
  assert temp[4] < 0.5 * temp[1], temp
  # Any Flax module: the whole model is run per chunk.
  tiny = TinyCNN(num_classes=10)
  tp = tiny.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))["params"]
  whole = tiny.apply({"params": tp}, batch["image"])
  np.testing.assert_allclose(prefix.apply_stages(tiny, {"params": tp}, batch["image"], None, 4),
                             whole, rtol=1e-5, atol=1e-6)


def test_evaluation_sums_the_train_steps_loss():
  """``make_eval_step(loss_fn=...)`` sums the train step's loss per example (padding excluded)."""
  tiny = TinyCNN(num_classes=10)
  params = tiny.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
  rng = np.random.default_rng(1)
  batch = {"image": jnp.asarray(rng.uniform(-1, 1, (6, 16, 16, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, 6), jnp.int32), "mask": jnp.arange(6) < 4}

  def smoothed(logits, labels):
    return optax.softmax_cross_entropy(logits, optax.smooth_labels(jax.nn.one_hot(labels, 10),
                                                                   0.2)).mean()

  logits = tiny.apply({"params": params}, batch["image"])
  want = float(smoothed(logits[:4], batch["label"][:4])) * 4
  got = steps.make_eval_step(tiny, loss_fn=smoothed, chunks=1)(params, batch)
  np.testing.assert_allclose(float(got["loss_sum"]), want, rtol=1e-5)
  plain = steps.make_eval_step(tiny, chunks=1)(params, batch)
  assert abs(float(plain["loss_sum"]) - want) > 1e-3  # the default loss is another one
