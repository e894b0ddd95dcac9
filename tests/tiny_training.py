"""A batch, the loss and a run of changing selections for the tiny CNN of ``conftest.tiny``."""

import jax
import optax

from trady_jax import selection as sel


def tiny_batch(n=4, size=32, classes=5, seed=1):
  kx, ky = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kx, (n, size, size, 3)), jax.random.randint(ky, (n,), 0, classes)


def tiny_loss(model, params, selection, x, y):
  variables = {"params": params} if selection is None else {"params": params,
                                                             "selection": selection}
  logits = model.apply(variables, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def changing_selections(params, c, n=3):
  paths = ["blocks_0_pointwise2/kernel", "blocks_1_depthwise/kernel"]
  return [sel.build(params, {p: c[p].channels([(i + j) % 4, 10 + i]) for j, p in enumerate(paths)})
          for i in range(n)]
