"""Velocity (WACV-24): NEq velocities (Eq. 1-3), the weight-only selection (Eq. 5-7), a tiny run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import Killed, kill_at

from trady_jax import selector as selector_lib
from trady_jax import config, costs, strategies, train, velocity
from trady_jax.sparse_update import sparse_update
from trady_jax import selection as sel
from trady_jax.models.tiny import TinyCNN

SIZE = 32


def test_neq_velocity_by_hand():
  """One neuron, one image, two positions: phi, dphi and v = dphi - 0.5 v_prev by hand."""
  maps = [np.array([1.0, 0.0]), np.array([0.6, 0.8]), np.array([0.0, 1.0]), np.array([0.6, 0.8])]
  state = velocity.init_state(["a"], {"a": (1, 2, 1)})
  got = []
  for m in maps:
    state = velocity.update(state, [jnp.asarray(m, jnp.float32).reshape(1, 2, 1)])
    got.append((float(state["phi"][0]), float(state["velocity"][0])))
  # phi^1 = 0.6 (v^1 = 0.6, phi^0 = v^0 = 0); phi^2 = 0.8: v^2 = 0.2 - 0.5 * 0.6 = -0.1;
  # phi^3 = 0.8: v^3 = 0 - 0.5 * (-0.1) = 0.05. The first measurement only stores the outputs.
  np.testing.assert_allclose(got, [(0, 0), (0.6, 0.6), (0.8, -0.1), (0.8, 0.05)], atol=1e-6)
  assert velocity.MU == 0.5 and int(state["measured"]) == 4


def test_outputs_are_normalised_per_image_and_neuron():
  model = TinyCNN(num_classes=4)
  params = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))["params"]
  x = jax.random.normal(jax.random.key(1), (3, SIZE, SIZE, 3))
  out = velocity.normalized_outputs(model, {"params": params}, x)
  c = costs.trace(model, (1, SIZE, SIZE, 3))
  assert sorted(out) == sorted(l.path for l in c.convs)
  y = out["blocks_1_depthwise/kernel"]
  assert y.shape == (3, 8 * 8, 24)
  norms = np.linalg.norm(np.asarray(y), axis=1)
  np.testing.assert_allclose(norms[norms > 0], 1, rtol=1e-5)


class _Neq:
  """NEq stand-in with given velocities (the measurement is tested above)."""

  def __init__(self, v):
    self.v = v

  def init_state(self):
    return {"velocity": jnp.asarray(self.v), "measured": jnp.asarray(2)}


def _setup(budget):
  model = TinyCNN(num_classes=4)
  params = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))["params"]
  c = costs.trace(model, (1, SIZE, SIZE, 3))
  return params, c


@pytest.mark.parametrize("budget", [100, 400])
def test_selection_is_the_fastest_neurons_per_parameter_within_the_weight_budget(budget):
  params, c = _setup(budget)
  pool = velocity.output_costs(c)
  n = sum(l.in_channels for l in pool.layers)
  v = np.random.default_rng(0).normal(size=n).astype(np.float32)
  s = selector_lib.Selector(strategies.get("velocity"), params, c, budget, neq=_Neq(v))
  got = s.select(jax.random.key(0), 1, params, s.init_state())
  # Expected, by hand: neurons by |v| / (kh kw C_in / g), added until the next would overflow.
  cost = np.concatenate([np.full(l.out_channels, l.kernel_size[0] * l.kernel_size[1]
                                 * l.in_channels // l.groups) for l in c.convs])
  order = np.argsort(-np.abs(v) / cost, kind="stable")
  k = int(np.sum(np.cumsum(cost[order]) <= budget))
  bounds = np.cumsum([0] + [l.out_channels for l in c.convs])
  want = {l.path: np.sort(order[:k][(order[:k] >= a) & (order[:k] < b)] - a)
          for l, a, b in zip(c.convs, bounds[:-1], bounds[1:])}
  idx = sel.as_numpy(got)
  assert {p: list(i) for p, i in idx.items() if len(i)} == {
      p: list(i) for p, i in want.items() if len(i)}
  leaves = [x for x in jax.tree.leaves(got, is_leaf=sel.is_marker) if isinstance(x, sel.Channels)]
  assert leaves and all(isinstance(x, sel.OutputChannels) for x in leaves)
  use = strategies.selection_summary(got, c)
  assert use["charged_units"] == cost[order[:k]].sum() <= budget
  # Honest memory: every layer that trains a neuron keeps its whole input.
  assert use["activations"] == sum(c[p].activation * c[p].in_channels for p in idx if len(idx[p]))
  assert use["units"] == use["charged_units"] + use["activations"]


def test_model_gradients_and_update_follow_the_output_selection():
  """Through the layers: kernel gradients are dense autodiff's on the selected output channels
  (zero elsewhere), and ``sparse_update`` leaves every other neuron bit-for-bit unchanged."""
  params, c = _setup(300)
  model = TinyCNN(num_classes=4)
  s = selector_lib.Selector(strategies.get("velocity"), params, c, 300, neq=_Neq(np.zeros(1)))
  selection = s.select(jax.random.key(3), 0, params, {"measured": jnp.asarray(0)})
  x = jax.random.normal(jax.random.key(4), (4, SIZE, SIZE, 3))
  loss = lambda p, v: jnp.sum(model.apply(v(p), x) ** 2)
  sparse = jax.grad(loss)(params, lambda p: {"params": p, "selection": selection})
  dense = jax.grad(loss)(params, lambda p: {"params": p})
  idx = sel.as_numpy(selection)
  assert sum(len(i) for i in idx.values()) > 3
  for path, i in idx.items():
    a, b = (np.asarray(sel.at_path(g, path)) for g in (sparse, dense))
    np.testing.assert_allclose(a[..., i], b[..., i], rtol=1e-4, atol=1e-5)
    assert not np.any(np.delete(a, i, axis=-1))
  tx = optax.chain(sparse_update(), optax.sgd(0.1))
  new, _ = tx.update(sparse, tx.init(params), params, selection=selection)
  after = optax.apply_updates(params, new)
  for path, i in idx.items():
    a, b = np.asarray(sel.at_path(after, path)), np.asarray(sel.at_path(params, path))
    np.testing.assert_array_equal(np.delete(a, i, axis=-1), np.delete(b, i, axis=-1))
    assert np.any(a[..., i] != b[..., i])


class _Images:
  """A random-access source of float images (index -> (image, label)), learnable by label."""

  def __init__(self, n, seed):
    rng = np.random.default_rng(seed)
    self.labels = rng.integers(0, 4, n).astype(np.int32)
    self.images = rng.normal(size=(n, SIZE, SIZE, 3)).astype(np.float32) * 0.3
    self.images[..., 0] += self.labels[:, None, None] * 0.5
    self.num_classes, self.class_names = 4, [str(i) for i in range(4)]

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return self.images[i], int(self.labels[i])


def _batches(source, batch_size, *, train, seed, epoch):
  order = np.random.default_rng([seed, epoch]).permutation(len(source)) if train else np.arange(
      len(source))
  for i in range(0, len(order) - batch_size + 1, batch_size):
    rows = [source[int(j)] for j in order[i:i + batch_size]]
    yield {"image": jnp.asarray(np.stack([r[0] for r in rows])),
           "label": jnp.asarray(np.array([r[1] for r in rows], np.int32))}


def _velocity_run(tmp, epochs=2):
  cfg = config.Config(arch="tiny", pretrained=False, image_size=SIZE, dataset="synthetic",
                      strategy="velocity", budget=300, epochs=epochs, warmup_epochs=0,
                      batch_size=16, progress=False, lr=0.05)
  model = TinyCNN(num_classes=4)
  params = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))["params"]
  return train.Run(cfg, tmp, model=model, params=params, train_source=_Images(74, 0),
                   test_source=_Images(32, 1), batches=_batches), params


def test_tiny_velocity_run(tmp_path):
  """Two epochs (a random first one, then the velocity ranking) within the weight budget,
  storing whole inputs beyond it; 10 training images are held out."""
  run, params = _velocity_run(tmp_path)
  assert len(run.train_source) == 64 and run.steps_per_epoch == 4
  before = [np.array(x) for x in jax.tree.leaves(params)]  # the run donates params
  final = run.run()
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert len(lines) == 2 and np.isfinite(final["train_loss"])
  assert all(0 < l["charged_units"] <= 300 < l["units"] for l in lines)
  assert all(l["activations"] > 0 and l["compilations"] <= 3 for l in lines)
  changed = [np.any(np.asarray(a) != np.asarray(b)) for a, b in
             zip(jax.tree.leaves(run.params), before)]
  assert any(changed)


@pytest.mark.slow
def test_killed_velocity_run_resumes_to_the_same_parameters(tmp_path):
  """The NEq state (previous outputs, phi, v) is checkpointed with the run."""
  whole = _velocity_run(tmp_path / "whole", 3)[0]
  whole.run()
  with pytest.raises(Killed):
    _velocity_run(tmp_path / "resumed", 3)[0].run(on_epoch_end=kill_at(2))
  second = _velocity_run(tmp_path / "resumed", 3)[0]
  second.run()
  for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(second.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_scheme_weight_budgets_are_the_wacv_code_values():
  from trady_jax.models import registry
  net = costs.trace(registry.build_model("mbv2-w0.35", 10), (1, 128, 128, 3))
  got = [velocity.scheme_weight_budget("mbv2-w0.35", s, net) for s in (1, 3, 5)]
  assert got == [22410, 55920, 81792]
