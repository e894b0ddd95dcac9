"""Offline layer rankings: the ``Ranking`` value, its JSON file, the network it was computed on,
and the rankings shipped for the MCU networks (``experiments/rank_layers.py`` writes them)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from trady_jax import paper, ranking
from trady_jax.costs import NetworkCosts

HERE = Path(__file__).resolve().parent


def default_path(arch: str) -> Path:
  """The shipped ranking of ``arch`` (may not exist for models without one)."""
  return HERE / f"{arch}.json"


@dataclasses.dataclass(frozen=True)
class Ranking:
  """A layer ranking from a short fine-tuning (TraDy 3.3, MeDyate 3.4): per conv layer, the
  accumulated channel gradient norms (Eq. 6, ``channel``) and layer norms (``layer``), layer RGN
  (Eq. 8) and LaRa (Eq. 9); ``meta``: what it was computed on (``network_key``) and how;
  ``dropped``: layers of the file the network lacks."""
  layer_rgn: Mapping[str, float]
  lara: Mapping[str, float]
  channel: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  layer: Mapping[str, float] = dataclasses.field(default_factory=dict)
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  dropped: tuple[str, ...] = ()

  def top_k_share(self, share: float = paper.TOPK_SHARE) -> list[str]:
    """TraDy's pool: the top layers by layer RGN holding ``share`` of it (T Eq. 8)."""
    return ranking.top_k_share(self.layer_rgn, share)

  def top_k_alpha(self, costs: NetworkCosts, budget: int,
                  alpha: float = paper.ALPHA_OPT) -> list[str]:
    """MeDyate's pool: the smallest LaRa top-K with ``B_mem / M_K <= alpha`` (M Eq. 10)."""
    return ranking.top_k_alpha(self.lara, costs, budget, alpha)

  def restricted(self, paths) -> "Ranking":
    """The ranking of the layers ``paths`` only (the others listed in ``dropped``)."""
    keep = set(paths)
    pick = lambda d: {p: v for p, v in d.items() if p in keep}  # noqa: E731
    return dataclasses.replace(
        self, layer_rgn=pick(self.layer_rgn), lara=pick(self.lara), channel=pick(self.channel),
        layer=pick(self.layer), dropped=tuple(sorted(set(self.layer_rgn) - keep)))


def from_state(state: Mapping, costs: NetworkCosts, **meta) -> Ranking:
  """The ranking of an accumulator (``ranking.init`` / ``accumulate``)."""
  return Ranking(layer_rgn=ranking.layer_rgn(state["channel"], costs),
                 lara=ranking.lara(state["layer"], costs),
                 channel={p: np.asarray(v) for p, v in state["channel"].items()},
                 layer={p: float(v) for p, v in state["layer"].items()}, meta=dict(meta))


def save(path: str | Path, state: Mapping, costs: NetworkCosts, **meta) -> Ranking:
  """Write an accumulated ranking (norm sums, RGN and LaRa per layer) as JSON; return it."""
  r = from_state(state, costs, **meta)
  doc = {"meta": r.meta, "layer": r.layer, "layer_rgn": r.layer_rgn, "lara": r.lara}
  text = json.dumps(doc, indent=1)
  # the per-channel norm sums: one line per layer, float32 precision (a transformer has ~10^5)
  channel = ",\n".join(f" {json.dumps(p)}: [{', '.join(f'{x:.7g}' for x in np.asarray(v))}]"
                        for p, v in r.channel.items())
  Path(path).write_text(f'{text[:-2]},\n "channel": {{\n{channel}\n }}\n}}\n')
  return r


def load(path: str | Path, costs: NetworkCosts | None = None) -> Ranking:
  """Read a ranking written by ``save``; with ``costs``, check it names every conv of the model
  (a file with more layers keeps the model's, the others in ``dropped``)."""
  try:
    doc = json.loads(Path(path).read_text())
    r = Ranking(layer_rgn={p: float(v) for p, v in doc["layer_rgn"].items()},
                lara={p: float(v) for p, v in doc["lara"].items()},
                channel={p: np.asarray(v, np.float32) for p, v in doc.get("channel", {}).items()},
                layer={p: float(v) for p, v in doc.get("layer", {}).items()},
                meta=doc.get("meta", {}))
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"{path}: not a trady_jax ranking file ({e})") from e
  if costs is None:
    return r
  have = {l.path for l in costs.convs}
  if not have <= set(r.layer_rgn):
    raise ValueError(f"{path}: ranking layers do not match the model's conv layers "
                     f"(missing {sorted(have - set(r.layer_rgn))[:3]})")
  return r if set(r.layer_rgn) == have else r.restricted(have)


def network_key(weights: str, bn: str, random_init_layers=()) -> dict:
  """What a ranking was computed on, for its ``meta``: the weights file (name and SHA-256 of its
  content), the BN mode and the layers not from those weights; ``check_network`` compares it with
  a run's network."""
  digest = ""
  if weights and Path(weights).is_file():
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
  return {"weights": Path(weights).name if weights else "", "weights_sha256": digest, "bn": bn,
          "random_init_layers": list(random_init_layers)}


def stale(r: Ranking, key: Mapping) -> list[str]:
  """The fields of ``network_key`` in which the ranking's network differs from ``key``'s
  (a ranking written before the key was recorded differs in all of them)."""
  return [k for k, v in key.items() if r.meta.get(k) != v]


class RankingMismatch(ValueError):
  """A ranking computed on another network than the one a run trains."""


def check_network(r: Ranking, key: Mapping, *, source: str = "ranking") -> list[str]:
  """Refuse a ranking of another network; return the notes a run should print.

  The papers rank the layers of the network they fine-tune (TraDy Sec. 3.3, MeDyate Sec. 3.4), so
  a ranking whose weights (content hash) or randomly initialised layers differ from the run's is an
  error (``RankingMismatch``): rank this network with ``experiments/rank_layers.py``. Differences
  that keep the network (the BN mode of the ranking run) are notes. A run without pretrained
  weights (``key['weights'] == ''``) has no network a ranking could come from: any ranking is
  used with a note saying so.
  """
  diff = stale(r, key)
  if not key.get("weights"):
    return [f"{source} of pretrained weights {r.meta.get('weights', '?')!r} used on a randomly "
            "initialised network"] if diff else []
  wrong = [k for k in ("weights", "weights_sha256", "random_init_layers") if k in diff]
  if wrong:
    what = ", ".join(f"{k}: {r.meta.get(k)!r} vs {key[k]!r}" for k in wrong)
    raise RankingMismatch(f"{source} was computed on another network ({what}); rank this one "
                          "with `python experiments/rank_layers.py")
  return [f"{source} was ranked with --bn {r.meta.get('bn')}, this run uses --bn "
          f"{key['bn']}"] if "bn" in diff else []
