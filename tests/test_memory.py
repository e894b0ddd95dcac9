"""XLA's compiled memory analysis: the selective train step's temp memory follows the budget."""

import jax
import jax.numpy as jnp
import optax
import pytest

from trady_jax import costs, samplers, sparse_update, steps, xla
from trady_jax.models.tiny import TinyCNN

SIZE, BATCH = 64, 16


@pytest.fixture(scope="module")
def net():
  model = TinyCNN(num_classes=10, width=16, expand=6)
  params = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))["params"]
  batch = {"image": jnp.zeros((BATCH, SIZE, SIZE, 3)), "label": jnp.zeros((BATCH,), jnp.int32)}
  return model, params, costs.trace(model, (1, SIZE, SIZE, 3)), batch


def _temp(model, params, batch, selection):
  tx = optax.sgd(0.1) if selection is None else optax.chain(sparse_update(), optax.sgd(0.1))
  step = steps.make_train_step(model, tx)
  return xla.compiled_stats(step, params, tx.init(params), selection, batch)["temp_bytes"]


def test_temp_memory_falls_with_the_budget_and_is_far_below_full(net):
  model, params, c, batch = net
  full = _temp(model, params, batch, None)
  forward = xla.compiled_stats(steps.make_eval_step(model, chunks=1), params, batch)["temp_bytes"]
  total = c.totals()["total"]
  # The deeper half of the network, where the layer rankings put most of the gradient norm.
  pool = [l.path for l in c.convs[len(c.convs) // 2:]]
  temps = {}
  for frac in (0.02, 0.1, 0.3):
    s = samplers.uniform(params, c, int(frac * total), pool).sample(jax.random.key(0))
    temps[frac] = _temp(model, params, batch, s)
  assert temps[0.02] <= temps[0.1] <= temps[0.3] < full
  # At ~2 % of the network memory the step needs little more than inference does.
  assert temps[0.02] < 0.5 * full, (temps, full, forward)
  assert temps[0.02] < 1.5 * forward, (temps, full, forward)


def test_masking_dense_gradients_saves_nothing(net):
  """The reference implementations' approach: full backward, then zero unselected gradients."""
  model, params, c, batch = net
  s = samplers.uniform(params, c, int(0.02 * c.totals()["total"])).sample(jax.random.key(0))
  tx = optax.chain(sparse_update(), optax.sgd(0.1))

  def masked_step(p, opt, selection, b):
    g = jax.grad(lambda p: steps.cross_entropy(model.apply({"params": p}, b["image"]),
                                               b["label"]))(p)
    u, opt = tx.update(g, opt, p, selection=selection)
    return optax.apply_updates(p, u), opt

  masked = xla.compiled_stats(masked_step, params, tx.init(params), s, batch)["temp_bytes"]
  selective = _temp(model, params, batch, s)
  assert selective < masked
