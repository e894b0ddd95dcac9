"""Fixed per-layer counts vs the papers' fill rule: compilations, budget fill, inclusion rates.

    python experiments/compare_allocation.py --arch mbv2-w0.35 --budget 27946 --epochs 10

For TraDy's uniform sampling over the top-K layers, compares
* ``fixed``: per-layer counts fixed for the run (the default; static shapes);
* ``paper``: the papers' rule, channels in random order until the budget overflows (variable).
It reports the train-step compilations each needs over ``--epochs`` epochs (measured with a jitted
train step), the compile time, the mean budget fill, and how far each layer's per-channel
inclusion rate under the papers' rule (Monte Carlo) is from the fixed rule's ``k_l / n_l``.
"""

from __future__ import annotations

import argparse
import json
import time

import common  # noqa: F401
import jax
import jax.numpy as jnp
import numpy as np
import optax

from trady_jax import costs as costs_lib
from trady_jax import ranking, samplers, sparse_update, steps
from trady_jax import selection as sel


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--arch", default="mbv2-w0.35")
  ap.add_argument("--budget", type=int, default=27946)
  ap.add_argument("--epochs", type=int, default=10, help="epochs whose steps are compiled")
  ap.add_argument("--draws", type=int, default=500, help="Monte Carlo draws for inclusion rates")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--image-size", type=int, default=128)
  ap.add_argument("--json", action="store_true")
  args = ap.parse_args(argv)
  model, params, _ = common.load_model(args.arch, 10, pretrained=False)
  size = args.image_size
  net = costs_lib.trace(model, (1, size, size, 3))
  doc = common.load_ranking(args.arch, "", net)
  pool = ranking.top_k_share(doc["layer_rgn"], 0.97) if doc else [l.path for l in net.convs]
  fixed = samplers.uniform(params, net, args.budget, pool)
  paper = samplers.uniform(params, net, args.budget, pool, fixed_counts=False)

  tx = optax.chain(sparse_update(), optax.sgd(0.01))
  batch = {"image": jnp.zeros((args.batch, size, size, 3)),
           "label": jnp.zeros((args.batch,), jnp.int32)}
  report = {"arch": args.arch, "budget": args.budget, "layers": len(pool), "epochs": args.epochs}
  for name, s in (("fixed", fixed), ("paper", paper)):
    step = jax.jit(steps.make_train_step(model, tx))
    draw = jax.jit(s.sample) if s.jittable else s.sample
    opt = tx.init(params)
    t0, fills = time.time(), []
    for e in range(args.epochs):
      selection = draw(jax.random.fold_in(jax.random.key(0), e))
      fills.append(net.usage(sel.counts(selection))["units"] / args.budget)
      jax.block_until_ready(step(params, opt, selection, batch))
    report[name] = {"compilations": step._cache_size(), "seconds": time.time() - t0,
                    "mean_fill": float(np.mean(fills))}
    print(f"{name:>5}: {step._cache_size()} compilations over {args.epochs} epochs, "
          f"{time.time() - t0:.1f} s, mean budget fill {np.mean(fills):.4f}", flush=True)

  hits = {l.path: np.zeros(l.in_channels) for l in paper.layers}
  fills = []
  for i in range(args.draws):
    s = paper.sample(jax.random.key(10_000 + i))
    fills.append(net.usage(sel.counts(s))["units"] / args.budget)
    for p, idx in sel.as_numpy(s).items():
      hits[p][idx] += 1
  rate_paper = {p: h.mean() / args.draws for p, h in hits.items()}
  rate_fixed = {l.path: fixed.counts[l.path] / l.in_channels for l in fixed.layers}
  diff = {p: rate_paper[p] - rate_fixed[p] for p in rate_paper}
  worst = max(diff, key=lambda p: abs(diff[p]))
  report["inclusion"] = {"paper_mean": float(np.mean(list(rate_paper.values()))),
                         "fixed_mean": float(np.mean(list(rate_fixed.values()))),
                         "max_abs_diff": abs(diff[worst]), "worst_layer": worst,
                         "paper_fill_mc": float(np.mean(fills))}
  print(f"inclusion rate per channel: papers' rule {report['inclusion']['paper_mean']:.4f} "
        f"(mean over layers), fixed {report['inclusion']['fixed_mean']:.4f}; largest layer gap "
        f"{abs(diff[worst]):.4f} at {worst} (papers' {rate_paper[worst]:.4f} vs fixed "
        f"{rate_fixed[worst]:.4f}); papers' fill {np.mean(fills):.4f} over {args.draws} draws")
  if args.json:
    print(json.dumps(report))
  return report


if __name__ == "__main__":
  main()
