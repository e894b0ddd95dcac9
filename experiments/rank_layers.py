"""Offline layer ranking: a short full fine-tuning on a proxy task, recording gradient norms.

    python experiments/rank_layers.py --arch mbv2-w0.35 --offline true [--passes 2] [--out r.json]

A full fine-tuning of the loaded network (the papers' protocol: lr 0.125, BatchNorm in train mode,
batch 32; a linear warm-up over the first tenth of the steps, then cosine) over ``--passes`` whole
epochs of the training split ("a few epochs suffice", TraDy App. D.5). Accumulates, over the steps, every conv layer's per-channel gradient norms (Eq. 6) and layer
gradient norms, and writes layer RGN (Eq. 8) and LaRa (Eq. 9) to a JSON that runs reuse
(``--ranking``; the default output is the ranking shipped in ``trady_jax/rankings``). The papers
rank on CIFAR-10. The ranking is taken on the network a run trains (``--bn``, BN restored in
int8 weights, no layer the weights lack) and records which weights and BN mode it came from.
"""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

import jax
import optax
from tqdm.auto import tqdm

from trady_jax import experiment
from trady_jax import config, ranking, rankings, steps, train
from trady_jax import costs as costs_lib


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--passes", type=int, default=1, help="epochs over the training split")
  ap.add_argument("--steps", type=int, default=0,
                  help="fine-tuning steps to accumulate over (0: --passes whole epochs)")
  ap.add_argument("--out", default="", help="output JSON (default: the shipped ranking)")
  config.add_arguments(ap, config.Config(test_limit=10, lr=0.125))
  args = ap.parse_args(argv)
  cfg = config.from_args(args)
  from trady_jax import data
  train_src, _, num_classes, where = experiment.open_data(cfg)
  net, pretrained = experiment.load_network(
      cfg.arch, num_classes, bn=cfg.bn,
      calibration=experiment.calibration_batches(cfg, train_src),
      pretrained=cfg.pretrained, weights_dir=cfg.weights_dir, seed=cfg.seed,
      image_size=cfg.image_size)
  model, params = net.module, net.params
  bn_state = () if net.batch_stats is None else (net.batch_stats,)
  if args.steps <= 0:
    args.steps = max(args.passes, 1) * (len(train_src) // cfg.batch_size)
  c = costs_lib.trace(model, (1, cfg.image_size, cfg.image_size, 3))
  paths = [l.path for l in c.convs]
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(args.steps // 10, 1),
                                                args.steps, 0.0)
  tx = optax.sgd(schedule)
  step = jax.jit(steps.make_train_step(model, tx, costs=c, norm_paths=paths),
                 donate_argnums=(0, 1))
  opt_state, state = tx.init(params), ranking.init(c)

  def stream():
    for epoch in itertools.count():
      yield from data.batches(train_src, cfg.batch_size, train=True, seed=cfg.seed, epoch=epoch,
                              num_workers=cfg.num_workers, image_size=cfg.image_size)

  bar = tqdm(zip(range(args.steps), stream()), total=args.steps, desc=f"ranking {cfg.arch}",
              disable=not cfg.progress)
  for i, batch in bar:
    params, opt_state, m = step(params, opt_state, None, batch, *bn_state)
    bn_state = (m.pop("batch_stats"),) if bn_state else ()
    state = ranking.accumulate_norms(state, m["channel_norms"])
    if i % 20 == 0 or i == args.steps - 1:  # one host sync every 20 steps
      loss = float(m["loss"])
      if not math.isfinite(loss):
        raise SystemExit(f"error: the ranking run diverged at step {i + 1} (loss {loss}); "
                         "try a lower --lr")
      bar.set_postfix(loss=f"{loss:.3f}")
  print(f"last loss {float(m['loss']):.3f} after {args.steps} steps")
  out = Path(args.out) if args.out else rankings.default_path(cfg.arch)
  ranking.save(out, state, c, arch=cfg.arch, steps=args.steps, data=where,
               train_images=len(train_src),
               pretrained=pretrained, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
               **ranking.network_key(net.weights, cfg.bn, net.random_init_layers))
  lr_ = ranking.layer_rgn(state["channel"], c)
  top = ranking.top_k_share(lr_, cfg.topk_share)
  print(f"wrote {out}: {len(top)} of {len(paths)} layers hold {cfg.topk_share:.0%} of layer RGN")
  print("top 10 by layer RGN:", [p.removesuffix("/kernel") for p in ranking.ranked(lr_)[:10]])


if __name__ == "__main__":
  main()
