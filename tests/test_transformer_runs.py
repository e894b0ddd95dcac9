"""Every strategy runs unchanged on a transformer: a tiny BERT through ``train.Run``."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trady_jax import config, costs, data, rankings, strategies, train
from trady_jax.models.transformer import bert

TOKENS = 16
_CFG = bert.TextConfig(vocab_size=200, hidden=16, layers=2, heads=2, intermediate=32,
                       max_positions=TOKENS, num_classes=2)


def _source(n, split):
  return data.SyntheticTextSource(n, 2, max_length=TOKENS, split=split, vocab_size=200)


def _batches(source, batch_size, *, train, seed, epoch):
  return data.batches(source, batch_size, train=train, seed=seed, epoch=epoch, num_workers=0,
                      image_size=TOKENS)


SLOW = pytest.mark.slow
ALL_BUT_SU = [s if s in ("trady", "medyate", "velocity") else pytest.param(s, marks=SLOW)
              for s in strategies.REGISTRY if s != "su"]


@pytest.mark.parametrize("strategy", ALL_BUT_SU)
def test_every_strategy_trains_a_tiny_bert_within_its_budget(tmp_path, strategy):
  cfg = config.Config(arch="bert-base", pretrained=False, image_size=TOKENS,
                      dataset="synthetic-text", strategy=strategy, budget=1500, epochs=2,
                      warmup_epochs=0, batch_size=16, progress=False, lr=0.05)
  model = bert.TextClassifier(_CFG)
  params = model.init(jax.random.key(0), jnp.zeros((1, TOKENS), jnp.int32))["params"]
  c = costs.trace(model, (1, TOKENS), input_dtype=jnp.int32)
  assert len(c.charged) == 12 and not c["classifier/out/kernel"].charged
  doc = rankings.Ranking(layer_rgn={l.path: float(i + 1) for i, l in enumerate(c.charged)},
                         lara={l.path: (i + 1) / l.layer_memory for i, l in enumerate(c.charged)})
  before = jax.tree.map(np.asarray, params)  # the run donates its parameters
  run = train.Run(cfg, tmp_path, model=model, params=params, train_source=_source(96, "train"),
                  test_source=_source(32, "test"), batches=_batches, layer_ranking=doc)
  final = run.run()
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert len(lines) == 2 and np.isfinite(final["train_loss"])
  if strategy != "baseline":
    assert lines[-1]["weight_sparsity"] > 0.5
    units = "charged_units" if strategy == "velocity" else "units"
    assert all(l.get(units, l["units"]) <= 1500 for l in lines)
  changed = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before, run.params)
  assert changed["classifier"]["out"]["kernel"]  # the head always trains
  assert not changed["word_embeddings"]["embedding"] or strategy == "baseline"
