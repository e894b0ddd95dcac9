"""The papers' cross-layer allocation, padded (the default) vs fixed counts vs exact shapes.

    python experiments/compare_allocation.py --arch mbv2-w0.35 --budget 27946 --strategy medyate \
        --epochs 8 --json

For a strategy's candidate layers and channel scores (MeDyate / Prob Raw / Det: the shipped
ranking's channel norms as the stored norms ``N``; TraDy: uniform), every epoch draws one
selection per allocation (``samplers.ALLOCATIONS``) from the same key, through
``selector.Selector`` as a run does, and reports

* ``allocation_tv_distance``: mean over epochs of the total-variation distance between the
  per-layer budget shares (``k_l m_l / sum k m``) of the default allocation and the papers' rule
  (``'exact'``); ``fixed_tv_distance``: the same for fixed per-layer counts;
* ``compilations``: train-step compilations of the default allocation over the epochs (one jitted
  step on a dummy batch, ``--steps`` steps per epoch), the compile seconds, and their share of
  this script's steps and of a run of ``--steps-per-epoch`` steps per epoch;
* the memory of the padded slots: units (``sum_l (capacity_l - k_l) m_l``, per sample, as the
  budget) and the XLA temp bytes of the last epoch's padded step minus its exact-shape step.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trady_jax import host_memory
from trady_jax import experiment
from trady_jax import costs as costs_lib
from trady_jax import medyate, paper, samplers, sparse_update, steps, strategies, xla
from trady_jax import selection as sel
from trady_jax import selector as selector_lib


def shares(counts, net) -> dict[str, float]:
  """Per-layer share of the budget a selection uses."""
  units = {p: k * net[p].memory for p, k in counts.items() if k}
  total = sum(units.values()) or 1
  return {p: u / total for p, u in units.items()}


def tv_distance(a: dict, b: dict) -> float:
  """Total-variation distance between two per-layer share vectors."""
  return 0.5 * sum(abs(a.get(p, 0.0) - b.get(p, 0.0)) for p in set(a) | set(b))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--arch", default="mbv2-w0.35")
  ap.add_argument("--budget", type=int, default=paper.BUDGETS["mbv2-w0.35"][0])
  ap.add_argument("--strategy", default="medyate", help="a name from strategies.REGISTRY")
  ap.add_argument("--epochs", type=int, default=8)
  ap.add_argument("--steps", type=int, default=2, help="timed train steps per epoch")
  ap.add_argument("--steps-per-epoch", type=int, default=1562,
                  help="steps per epoch of the projected run (CIFAR-10 at batch 32)")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--image-size", type=int, default=128)
  ap.add_argument("--json", action="store_true")
  args = ap.parse_args(argv)
  # The network the shipped ranking was computed on: the pretrained one (random weights, loudly,
  # when none are found; only their shapes matter here).
  model, params, _ = experiment.load_model(args.arch, 10)
  size = args.image_size
  net = costs_lib.trace(model, (1, size, size, 3))
  doc = experiment.load_ranking(args.arch, "", net)
  strategy = strategies.get(args.strategy)
  if strategy.is_full or strategy.is_scheme:
    raise SystemExit(f"{strategy.name} has no sampler")
  norms = {p: np.asarray(v, np.float32) for p, v in doc.channel.items()}
  selectors = {a: selector_lib.Selector(strategy, params, net, args.budget, layer_ranking=doc,
                                      allocation=a, oracle=lambda p: norms)
               for a in samplers.ALLOCATIONS}
  state = {}
  if strategy.tracks_norms:  # the stored norms N: the ranking's channel norms
    pooled = samplers.pool_vector(selectors["padded"].sampler, norms)
    state = medyate.init(pooled.shape[0], jnp.maximum(pooled, jnp.finfo(jnp.float32).tiny))

  tx = optax.chain(sparse_update(), optax.sgd(0.01))
  traced = xla.count_traces(steps.make_train_step(model, tx))
  step = jax.jit(traced)
  batch = {"image": jnp.zeros((args.batch, size, size, 3)),
           "label": jnp.zeros((args.batch,), jnp.int32)}
  opt = tx.init(params)
  key = jax.random.key(0)
  tv, tv_fixed, pad_units, compile_s, step_s = [], [], [], 0.0, []
  t_run = time.time()
  for e in range(args.epochs):
    drawn = {a: s.select(key, e, params, state) for a, s in selectors.items()}
    counts = {a: sel.counts(d) for a, d in drawn.items()}
    tv.append(tv_distance(shares(counts["padded"], net), shares(counts["exact"], net)))
    tv_fixed.append(tv_distance(shares(counts["fixed"], net), shares(counts["exact"], net)))
    pad_units.append(selectors["padded"].sampler.padding_units(counts["padded"]))
    for _ in range(args.steps):
      before, t0 = traced.traces, time.time()
      jax.block_until_ready(step(params, opt, drawn["padded"], batch))
      dt = time.time() - t0
      if traced.traces > before:
        compile_s += dt
      else:
        step_s.append(dt)
  run_s = time.time() - t_run
  t_step = float(np.median(step_s)) if step_s else 0.0
  compilations = traced.traces  # before temp_bytes below traces other shapes
  compile_s -= (compilations * t_step)  # a compiling call also runs one step
  projected = args.epochs * args.steps_per_epoch * t_step

  def temp_bytes(selection):
    return step.lower(params, opt, selection, batch).compile().memory_analysis().temp_size_in_bytes

  pad_bytes = temp_bytes(drawn["padded"]) - temp_bytes(drawn["exact"])
  report = {"arch": args.arch, "budget": args.budget, "strategy": strategy.name,
            "layers": len(selectors["padded"].layers), "epochs": args.epochs,
            "allocation_tv_distance": float(np.mean(tv)),
            "fixed_tv_distance": float(np.mean(tv_fixed)),
            "compilations": compilations,
            "compile_s": round(compile_s, 2), "step_s": round(t_step, 4),
            "compile_share": round(compile_s / max(run_s, 1e-9), 4),
            "compile_share_projected": round(compile_s / (compile_s + projected), 6),
            "padding_units_mean": float(np.mean(pad_units)),
            "padding_share_of_budget": float(np.mean(pad_units)) / args.budget,
            "padding_temp_bytes": int(pad_bytes),
            "capacity": selectors["padded"].capacity}
  print(f"{strategy.name} on {args.arch}, {args.budget:,} units, {report['layers']} layers, "
        f"{args.epochs} epochs: TV distance to the papers' rule {report['allocation_tv_distance']:.4f} "
        f"(fixed counts {report['fixed_tv_distance']:.4f}); {report['compilations']} "
        f"compilations, {compile_s:.1f} s = {100 * report['compile_share']:.1f} % of these steps, "
        f"{100 * report['compile_share_projected']:.3f} % of {args.epochs} x "
        f"{args.steps_per_epoch} steps; padding {report['padding_units_mean']:,.0f} units "
        f"({100 * report['padding_share_of_budget']:.1f} % of the budget), "
        f"{pad_bytes / 2 ** 20:+.2f} MiB XLA temp at batch {args.batch}", flush=True)
  if args.json:
    print(json.dumps(report))
  return report


if __name__ == "__main__":
  host_memory.reexec_with_tunables()  # huge pages for XLA's per-call scratch (host_memory.py)
  main()
