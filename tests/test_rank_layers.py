"""experiment.rank_layers: a short full fine-tuning of a config's network, written as a ranking
that covers every conv layer and records the network it came from."""

import math

from trady_jax import config, costs, experiment, rankings
from trady_jax.models.tiny import TinyCNN


def test_rank_layers_writes_a_ranking_of_every_conv(tmp_path):
  cfg = config.Config(arch="tiny", dataset="synthetic", image_size=32, batch_size=16,
                      train_limit=60, test_limit=16, offline=True, progress=False, num_workers=1)
  out = experiment.rank_layers(cfg, steps=3, out=tmp_path / "tiny.json")
  assert out == tmp_path / "tiny.json"
  net = costs.trace(TinyCNN(num_classes=10, bn="train"), (1, 32, 32, 3))
  doc = rankings.load(out, net)
  assert set(doc.layer_rgn) == {l.path for l in net.convs} == set(doc.lara)
  assert all(math.isfinite(v) and v > 0 for v in doc.layer_rgn.values())
  assert doc.meta["steps"] == 3 and doc.meta["train_images"] == 60
  assert doc.meta["weights"] == "" and doc.meta["bn"] == "train"


def test_a_run_on_other_weights_ranks_its_own_network(shared_dir, tmp_path, monkeypatch, capsys):
  """The shipped mbv2-w0.35 ranking is of the int8 copy; a run on other weights (here the same
  file with one scale changed, as a downloaded checkpoint would differ) ranks its own network
  once, says so, caches the ranking under the weights' hash and reuses it; an explicit
  ``--ranking`` of other weights stays an error."""
  import numpy as np
  import pytest
  from trady_jax.config import ConfigError
  weights = tmp_path / "weights"
  weights.mkdir()
  (weights / "mbv2-w0.35.json").write_bytes((shared_dir / "weights/mbv2-w0.35.json").read_bytes())
  with np.load(shared_dir / "weights/mbv2-w0.35.npz") as z:
    arrays = dict(z)
  name = sorted(k for k in arrays if arrays[k].dtype.kind == "f")[0]
  arrays[name] = arrays[name] * np.float32(1.001)
  np.savez(weights / "mbv2-w0.35.npz", **arrays)
  monkeypatch.setenv("TRADY_JAX_CACHE", str(tmp_path / "cache"))
  cfg = config.Config(arch="mbv2-w0.35", dataset="synthetic", image_size=32, batch_size=16,
                      train_limit=32, test_limit=16, strategy="trady", weights_dir=str(weights),
                      epochs=1, warmup_epochs=0, progress=False, num_workers=1)
  run = experiment.build_run(cfg, tmp_path / "run")
  assert "ranking this network first" in capsys.readouterr().out
  cached = list((tmp_path / "cache" / "rankings").glob("mbv2-w0.35-*-train.json"))
  assert len(cached) == 1
  doc = rankings.load(cached[0])
  assert doc.meta["weights_sha256"] == rankings.network_key(
      str(weights / "mbv2-w0.35.npz"), "train")["weights_sha256"]
  assert set(run.selector.layers) <= set(doc.layer_rgn)
  experiment.build_run(cfg, tmp_path / "run2")  # reused: no second ranking run
  assert "ranking this network first" not in capsys.readouterr().out
  shipped = str(rankings.default_path("mbv2-w0.35"))
  with pytest.raises(ConfigError, match="another network"):
    experiment.build_run(config.override(cfg, ranking=shipped), tmp_path / "run3")
