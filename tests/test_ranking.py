"""Offline layer ranking: gradient norms, the layer rules, ranking files and their network key.

RGN (TraDy §3.2, MeDyate Eq. 7), LaRa (MeDyate §3.2), top-K and alpha_K (MeDyate §3.4).
"""

import dataclasses

import jax
import numpy as np
import pytest

from trady_jax import costs as costs_lib
from trady_jax import ranking, rankings

from tiny_training import tiny_batch, tiny_loss


def test_ranking_norms_rules_and_files(tiny, tmp_path):
  model, params, c = tiny
  x, y = tiny_batch()
  g = jax.grad(tiny_loss, argnums=1)(model, params, None, x, y)
  norms = ranking.channel_norms(g, c)
  k = np.asarray(g["blocks_0_pointwise1"]["kernel"])
  np.testing.assert_allclose(norms["blocks_0_pointwise1/kernel"],
                             np.linalg.norm(k[0, 0], axis=1), rtol=1e-5)
  dw = np.asarray(g["blocks_0_depthwise"]["kernel"])
  np.testing.assert_allclose(norms["blocks_0_depthwise/kernel"],
                             np.linalg.norm(dw.reshape(9, 24), axis=0), rtol=1e-5)
  state = ranking.accumulate(ranking.accumulate(ranking.init(c), g, c), g, c)
  lr = ranking.layer_rgn(state["channel"], c)
  la = ranking.lara(state["layer"], c)
  l = c["blocks_0_pointwise1/kernel"]
  assert lr[l.path] == pytest.approx(2 * float(np.sum(np.linalg.norm(k[0, 0], axis=1))) / l.memory,
                                     rel=1e-5)
  assert la[l.path] == pytest.approx(2 * float(np.linalg.norm(k)) / l.layer_memory, rel=1e-5)
  top = ranking.top_k_share(lr, 0.97)
  total = sum(lr.values())
  assert sum(lr[p] for p in top) >= 0.97 * total
  assert sum(lr[p] for p in top[:-1]) < 0.97 * total
  budget = 2000
  ka = ranking.top_k_alpha(la, c, budget, 0.2)
  assert sum(c[p].layer_memory for p in ka) >= budget / 0.2
  assert sum(c[p].layer_memory for p in ka[:-1]) < budget / 0.2
  rankings.save(tmp_path / "r.json", state, c, arch="tiny")
  assert rankings.load(tmp_path / "r.json", c).layer_rgn == pytest.approx(lr)
  (tmp_path / "bad.json").write_text("{")
  with pytest.raises(ValueError, match="not a trady_jax ranking"):
    rankings.load(tmp_path / "bad.json")


def test_ranking_of_a_larger_network_and_its_key(tiny, tmp_path):
  """A ranking of the papers' architecture keeps the layers the built network has; its meta
  says which weights and BN mode it came from."""
  model, params, c = tiny
  state = ranking.init(c)
  key = rankings.network_key("/w/mbv2-w0.35.npz", "train")
  rankings.save(tmp_path / "r.json", state, c, arch="tiny", **key)
  smaller = costs_lib.NetworkCosts(tuple(l for l in c.layers
                                         if "blocks_1_pointwise2" not in l.path))
  doc = rankings.load(tmp_path / "r.json", smaller)
  assert doc.dropped == ("blocks_1_pointwise2/kernel",)
  assert set(doc.layer_rgn) == {l.path for l in smaller.convs}
  assert rankings.stale(doc, key) == []
  assert rankings.stale(doc, rankings.network_key("/w/mbv2-w0.35.npz", "folded")) == ["bn"]
  extra = dataclasses.replace(c.convs[0], path="extra/kernel")
  with pytest.raises(ValueError, match="do not match"):
    rankings.load(tmp_path / "r.json", costs_lib.NetworkCosts(c.layers + (extra,)))


def test_a_ranking_of_another_network_is_refused(tiny, tmp_path):
  """Rankings are keyed to the content of the weights they came from: other weights (even under
  the same file name) or other random layers are an error; another BN mode is a note; a run
  without pretrained weights uses any ranking with a note."""
  _, _, c = tiny
  w, other = tmp_path / "w.npz", tmp_path / "x" / "w.npz"
  other.parent.mkdir()
  w.write_bytes(b"weights")
  other.write_bytes(b"other weights")
  key = rankings.network_key(str(w), "train")
  assert key["weights"] == "w.npz" and len(key["weights_sha256"]) == 16
  rankings.save(tmp_path / "r.json", ranking.init(c), c, **key)
  doc = rankings.load(tmp_path / "r.json", c)
  assert rankings.check_network(doc, key) == []
  with pytest.raises(rankings.RankingMismatch, match="weights_sha256"):
    rankings.check_network(doc, rankings.network_key(str(other), "train"))
  with pytest.raises(rankings.RankingMismatch, match="random_init_layers"):
    rankings.check_network(doc, rankings.network_key(str(w), "train", ["head/kernel"]))
  assert "--bn train" in rankings.check_network(doc, rankings.network_key(str(w), "folded"))[0]
  assert "randomly initialised" in rankings.check_network(doc, rankings.network_key("", "train"))[0]
  with pytest.raises(rankings.RankingMismatch):  # a ranking written before keys were recorded
    rankings.check_network(rankings.Ranking({}, {}), key)


@pytest.mark.parametrize("arch", ["bert-base", "roberta-base", "vit-b16", "swin-t"])
def test_shipped_transformer_rankings_match_the_key_of_a_run_on_random_init(arch):
  """Transformers have no BatchNorm: a run records ``bn: none`` under any ``--bn``, and the
  shipped ranking (of the random-init network) says the same, so it is not taken for stale."""
  from trady_jax.models import registry  # noqa: PLC0415
  doc = rankings.load(rankings.default_path(arch))
  for bn in ("train", "folded"):
    key = rankings.network_key("", registry.bn_mode(arch, bn), doc.meta["random_init_layers"])
    assert rankings.stale(doc, key) == []
  assert doc.meta["pretrained"] is False
