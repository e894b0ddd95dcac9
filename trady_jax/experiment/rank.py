"""The offline layer ranking of a config's network: a short full fine-tuning recording gradient
norms (TraDy Sec. 3.3 and App. D.5, MeDyate Sec. 3.4), written as a ranking JSON runs reuse."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import jax
import optax
from tqdm.auto import tqdm

from trady_jax import costs as costs_lib
from trady_jax import models, ranking, rankings
from trady_jax import steps as steps_lib
from trady_jax.config import Config, ConfigError
from trady_jax.experiment.inputs import open_data
from trady_jax.experiment.network import network_for


def rank_layers(cfg: Config, *, passes: int = 1, steps: int = 0,
                out: str | Path | None = None) -> Path:
  """Rank the conv layers of ``cfg``'s network and write the ranking to ``out`` (default: the one
  shipped in ``trady_jax/rankings``); return its path.

  A full fine-tuning of the loaded network (``cfg.lr``, ``cfg.bn``, ``cfg.batch_size``; a linear
  warm-up over the first tenth of the steps, then cosine) over ``passes`` epochs of the training
  split, or ``steps`` steps when > 0. Every conv layer's per-channel gradient norms (Eq. 6) are
  accumulated over the steps; the file holds layer RGN (TraDy Eq. 8) and LaRa (MeDyate Eq. 9),
  keyed to the weights and BN mode (``rankings.network_key``).
  """
  from trady_jax import data
  train_src, _, num_classes, where = open_data(cfg)
  net, pretrained = network_for(cfg, train_src, num_classes)
  model, params = net.module, net.params
  bn_state = () if net.batch_stats is None else (net.batch_stats,)
  total = steps if steps > 0 else max(passes, 1) * (len(train_src) // cfg.batch_size)
  c = costs_lib.trace(model, models.registry.example_input(cfg.arch, cfg.image_size))
  paths = [l.path for l in c.convs]
  warmup = max(total // 10, 1)
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(total, warmup + 1), 0.0)
  tx = optax.sgd(schedule)
  step = jax.jit(steps_lib.make_train_step(model, tx, costs=c, norm_paths=paths),
                 donate_argnums=(0, 1))
  opt_state, state = tx.init(params), ranking.init(c)

  def stream():
    for epoch in itertools.count():
      yield from data.batches(train_src, cfg.batch_size, train=True, seed=cfg.seed, epoch=epoch,
                              num_workers=cfg.num_workers, image_size=cfg.image_size)

  bar = tqdm(zip(range(total), stream()), total=total, desc=f"ranking {cfg.arch}",
             disable=not cfg.progress)
  for i, batch in bar:
    params, opt_state, m = step(params, opt_state, None, batch, *bn_state)
    bn_state = (m.pop("batch_stats"),) if bn_state else ()
    state = ranking.accumulate_norms(state, m["channel_norms"])
    if i % 20 == 0 or i == total - 1:  # one host sync every 20 steps
      loss = float(m["loss"])
      if not math.isfinite(loss):
        raise ConfigError(f"the ranking run diverged at step {i + 1} (loss {loss}); "
                          "try a lower --lr")
      bar.set_postfix(loss=f"{loss:.3f}")
  print(f"last loss {float(m['loss']):.3f} after {total} steps")
  path = Path(out) if out else rankings.default_path(cfg.arch)
  rankings.save(path, state, c, arch=cfg.arch, steps=total, data=where,
               train_images=len(train_src), pretrained=pretrained, batch_size=cfg.batch_size,
               lr=cfg.lr, seed=cfg.seed,
               **rankings.network_key(net.weights, models.registry.bn_mode(cfg.arch, cfg.bn),
                                      net.random_init_layers))
  scores = ranking.layer_rgn(state["channel"], c)
  top = ranking.top_k_share(scores, cfg.topk_share)
  print(f"wrote {path}: {len(top)} of {len(paths)} layers hold {cfg.topk_share:.0%} of layer RGN")
  print("top 10 by layer RGN:", [p.removesuffix("/kernel") for p in ranking.ranked(scores)[:10]])
  return path
