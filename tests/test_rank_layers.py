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
