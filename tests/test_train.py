"""End to end: a tiny run trains, logs, checkpoints, and a killed run resumes bit-exactly."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trady_jax import checkpoint, config, costs, rankings, train
from trady_jax import selection as sel
from trady_jax.models.tiny import TinyCNN

SIZE = 32


def _data(n, seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, n)
  images = rng.normal(size=(n, SIZE, SIZE, 3)).astype(np.float32) * 0.3
  images[..., 0] += labels[:, None, None] * 0.5  # learnable: label shifts the red channel
  return images, labels.astype(np.int32)


def _batches(source, batch_size, *, train, seed, epoch):
  images, labels = source
  order = np.random.default_rng([seed, epoch]).permutation(len(labels)) if train else np.arange(
      len(labels))
  for i in range(0, len(order) - batch_size + 1, batch_size):
    j = order[i:i + batch_size]
    yield {"image": jnp.asarray(images[j]), "label": jnp.asarray(labels[j])}


class _Pair(tuple):
  def __len__(self):
    return len(self[1])


def _run(tmp, strategy, bn="folded", run_kw=None, **kw):
  cfg = config.Config(arch="tiny", pretrained=False, image_size=SIZE, dataset="synthetic",
                      strategy=strategy, budget=3000, epochs=2, warmup_epochs=1, batch_size=16,
                      progress=False, bn=bn, **{"lr": 0.05, **kw})
  model = TinyCNN(num_classes=4, bn=bn)
  variables = model.init(jax.random.key(cfg.seed), jnp.zeros((1, SIZE, SIZE, 3)))
  params = variables["params"]
  c = costs.trace(model, (1, SIZE, SIZE, 3))
  doc = rankings.Ranking(
      layer_rgn={l.path: float(i + 1) for i, l in enumerate(c.convs)},
      lara={l.path: float(i + 1) / l.layer_memory for i, l in enumerate(c.convs)})
  return train.Run(cfg, tmp, model=model, params=params, train_source=_Pair(_data(96, 0)),
                   test_source=_Pair(_data(48, 1)), batches=_batches, layer_ranking=doc,
                   scheme_counts={"blocks_1_depthwise/kernel": 4, "blocks_1_pointwise2/kernel": 6},
                   batch_stats=variables.get("batch_stats"), **(run_kw or {}))


@pytest.mark.parametrize("strategy", ["trady", "medyate", "baseline", "su", "d-det-rgn"])
def test_tiny_run_end_to_end(tmp_path, strategy):
  run = _run(tmp_path, strategy)
  final = run.run()
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [l["epoch"] for l in lines] == [1, 2, 3]
  assert 0.0 <= final["test_accuracy"] <= 1.0 and np.isfinite(final["train_loss"])
  if strategy != "baseline":
    assert all(l["units"] <= 3000 or strategy == "su" for l in lines)
    assert lines[-1]["weight_sparsity"] > 0.5
  if strategy in ("trady", "medyate"):
    assert final["compilations"] == 1


@pytest.mark.parametrize("strategy", ["d-det-rgn", "su"])
def test_bn_train_run_end_to_end(tmp_path, strategy):
  """BN in train mode through the oracle (full-gradient) selection and a static scheme."""
  final = _run(tmp_path, strategy, "train").run()
  assert np.isfinite(final["train_loss"]) and final["bn_bytes"] > 0


@pytest.mark.parametrize("bn", ["folded", "train"])
def test_killed_run_resumes_to_the_same_parameters(tmp_path, bn):
  whole = _run(tmp_path / "whole", "medyate", bn)
  whole.run()

  class Killed(Exception):
    pass

  def kill(epoch, _):
    if epoch == 2:
      raise Killed

  first = _run(tmp_path / "resumed", "medyate", bn)
  with pytest.raises(Killed):
    first.run(on_epoch_end=kill)
  second = _run(tmp_path / "resumed", "medyate", bn)
  final = second.run()
  assert (final["bn_bytes"] > 0) == (bn == "train")
  chex.assert_trees_all_equal((second.params, second.batch_stats),
                              (whole.params, whole.batch_stats))
  if bn == "train":  # running statistics moved, and were checkpointed
    assert not np.allclose(second.batch_stats["first_conv"]["bn"]["var"], 1.0)
  lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3]


def test_mismatched_or_corrupt_checkpoint_is_an_error(tmp_path):
  first = _run(tmp_path, "trady").run()
  again = _run(tmp_path, "trady").run()  # finished: restored, nothing retrained
  assert again["test_accuracy"] == first["test_accuracy"] and again["epoch"] == 3
  other = _run(tmp_path, "trady", seed=5)
  with pytest.raises(checkpoint.CheckpointError, match="different config"):
    other.run()
  for f in (tmp_path / "checkpoints" / "3" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  with pytest.raises(checkpoint.CheckpointError):
    _run(tmp_path, "trady").run()


def test_the_loop_takes_its_optimizer(tmp_path):
  """``Run(optimizer=...)``: a selective run wraps any optax optimiser in ``sparse_update`` with
  the strategy's pool (Adam state only where the SU scheme trains; other leaves ``MaskedNode``),
  and leaves the layers outside its pool untouched."""
  run = _run(tmp_path, "su", run_kw={"optimizer": lambda lr: optax.adam(lr)})
  state = run.tx.init(run.params0)
  nodes = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  assert any(isinstance(x, optax.MaskedNode) for x in nodes)
  arrays = sum(x.size for x in jax.tree.leaves(state) if hasattr(x, "size"))
  assert arrays < 2 * sum(x.size for x in jax.tree.leaves(run.params0)) - 1  # less than dense Adam
  start = jax.tree.map(np.array, run.params0)  # the step donates its arguments
  final = run.run()
  assert np.isfinite(final["train_loss"])
  pool = {"blocks_1_depthwise/kernel", "blocks_1_pointwise2/kernel"}  # _run's scheme
  frozen = [l.path for l in run.costs.convs if l.path not in pool]
  assert len(frozen) == len(run.costs.convs) - 2
  for path in frozen:
    before = sel.at_path(start, path)
    np.testing.assert_array_equal(np.asarray(sel.at_path(run.params, path)), np.asarray(before))
