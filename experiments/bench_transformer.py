"""A transformer's training step measured: full / masked / trady temp memory, FLOPs and time, and
what the trady step keeps for its backward pass, by kind (``bench_step.py`` runs this for the
transformer names).

    python experiments/bench_step.py --arch bert-base --batch 32 [--size 128] [--json]
    python experiments/bench_step.py --arch swin-t --batch 32 [--size 224] [--json]

* ``full``: full fine-tuning (``jax.grad`` of every parameter + SGD);
* ``masked``: full backward, then the gradients times the channel masks (the reference code);
* ``trady``: the selective layers with a TraDy selection at ``--budget`` (default: the papers'
  smallest proportional budget), uniform over the top-K layers holding 97 % of the layer RGN;
* ``full_recompute`` / ``trady_recompute``: the same with the config's ``recompute`` (q / k / v
  and ``gelu(fc1(x))`` recomputed in the backward pass, the MLP's in batch slices; FLOPs counted
  on the same step without the slice loop);
* ``path_floor`` / ``path_floor_recompute``: the trady step with one channel of the selection's
  shallowest layer trained and nothing else but the classifier. Its FLOPs are the forward pass plus
  the input gradients down to that layer: the least any selection reaching that deep computes,
  whatever it trains (paper: TraDy App. A counts weight-derivative FLOPs only, and notes that the
  activation-derivative FLOPs depend on the deepest updated layer).

``--min-layer N`` restricts TraDy's pool to the charged layers from index ``N`` on: what the step
would cost under a ranking whose top-K stops there (a what-if; the papers' rankings pick the
top-K by RGN alone).

The network is randomly initialised (memory and FLOPs do not depend on the weights) and the RGN
ranking is computed on the spot from ``--rank-steps`` generated batches: a ranking of a
random-init network, printed as such. Memory is XLA's ``memory_analysis().temp_size_in_bytes`` of
the compiled step, FLOPs its ``cost_analysis()['flops']``, time the median of ``--repeats``
calls (``--repeats 0``: compile only). Beside XLA's temp, ``saved``: what autodiff keeps for the
backward pass (``xla.residual_bytes`` by producer; on XLA's CPU backend the temp memory does not
follow it, see the README), grouped into: selected inputs (the budget's activations), q / k / v, GELU
inputs (MLP inputs when recomputed), LayerNorm ``x_hat`` and ``1 / sigma``, and the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trady_jax import host_memory
from trady_jax import costs as costs_lib
from trady_jax import paper, ranking, rankings, samplers, sparse_update, steps, xla
from trady_jax import selection as sel
from trady_jax.models import registry
from trady_jax.models.transformer import attention

MiB = 2**20
# Producer primitive of a saved residual -> what it is in these models (see the docstring): the
# gathered inputs of the selected features, q / k / v split into heads, the biased fc1 output
# (GELU's input; with MLP.recompute the MLP's input instead), LayerNorm's normalised input and
# inverse deviation.
KINDS = {"jit": "selected inputs", "reshape": "q, k, v", "add": "GELU (or recomputed MLP) inputs",
         "mul": "LayerNorm x_hat", "rsqrt": "LayerNorm 1/sigma"}


def generated_batch(arch: str, model, batch: int, size: int, seed: int = 0) -> dict:
  """Token ids (no padding, ``[CLS] ... [SEP] ... [SEP]``) or images, and labels."""
  rng = np.random.default_rng(seed)
  classes = 2 if arch in registry.TEXT else 10
  if arch in registry.TEXT:
    cfg = model.config
    ids = rng.integers(1000, cfg.vocab_size, (batch, size))
    ids[:, 0], ids[:, size // 2], ids[:, -1] = 0 if cfg.flavor == "roberta" else 101, \
        cfg.sep_token_id, cfg.sep_token_id
    x = jnp.asarray(ids, jnp.int32)
  else:
    x = jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32)
  return {"image": x, "label": jnp.asarray(rng.integers(0, classes, batch), jnp.int32)}


def with_recompute(model):
  """The same network with its config's ``recompute`` on (attention and MLP projections)."""
  return model.clone(config=dataclasses.replace(model.config, recompute=True))


def top_k_pool(model, params, costs, batches, share: float) -> list[str]:
  """TraDy's layers: RGN (Eq. 6-8) summed over ``batches``, top-K holding ``share``."""
  grad = jax.jit(jax.grad(lambda p, b: steps.cross_entropy(model.apply({"params": p}, b["image"]),
                                                           b["label"])))
  state = ranking.init(costs)
  for b in batches:
    state = ranking.accumulate(state, grad(params, b), costs)
  return ranking.top_k_share(ranking.layer_rgn(state["channel"], costs), share)


def saved_by_kind(model, params, selection, batch) -> dict[str, int]:
  """Bytes a step's backward pass keeps (what autodiff saves), by kind (``KINDS``);
  ``selection=None``: full fine-tuning."""
  variables = lambda p: {"params": p} if selection is None else {"params": p,
                                                                  "selection": selection}
  loss = lambda p: steps.cross_entropy(model.apply(variables(p), batch["image"]), batch["label"])
  by_producer = xla.residual_bytes(loss, params, by="producer")
  out: dict[str, int] = {}
  for producer, n in by_producer.items():
    kind = KINDS.get(producer, "other")
    out[kind] = out.get(kind, 0) + n
  return out


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--arch", required=True, choices=list(registry.TRANSFORMERS))
  ap.add_argument("--budget", type=int, default=None,
                  help="B_mem in units (default: the papers' smallest proportional budget)")
  ap.add_argument("--batch", type=int, default=paper.BATCH_SIZE)
  ap.add_argument("--size", type=int, default=None,
                  help="tokens (text, default 128) or image side (default 224)")
  ap.add_argument("--ranking", default="",
                  help="a ranking JSON (rank_layers.py) instead of ranking on the spot")
  ap.add_argument("--rank-steps", type=int, default=2)
  ap.add_argument("--rank-batch", type=int, default=4)
  ap.add_argument("--share", type=float, default=paper.TOPK_SHARE)
  ap.add_argument("--min-layer", type=int, default=0,
                  help="what-if: keep only top-K layers with charged index >= N")
  ap.add_argument("--repeats", type=int, default=1, help="timed calls per step; 0: compile only")
  ap.add_argument("--cases", default="full,masked,trady,full_recompute,trady_recompute,"
                                     "path_floor,path_floor_recompute",
                  help="comma list of the steps to measure (full is always measured)")
  ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
  args = ap.parse_args(argv)
  text = args.arch in registry.TEXT
  size = args.size or (128 if text else 224)
  budget = args.budget if args.budget is not None else paper.budgets(args.arch)[2]
  model = registry.build_model(args.arch, 2 if text else 10, image_size=size)
  batch = generated_batch(args.arch, model, args.batch, size)
  params = jax.jit(model.init)(jax.random.key(0), batch["image"][:1])["params"]
  costs = costs_lib.trace(model, registry.example_input(args.arch, size))
  if args.ranking:
    pool = rankings.load(args.ranking, costs).top_k_share(args.share)
    source = f"ranking {args.ranking}"
  else:
    rank_batches = [generated_batch(args.arch, model, args.rank_batch, size, seed=1 + i)
                    for i in range(args.rank_steps)]
    pool = top_k_pool(model, params, costs, rank_batches, args.share)
    source = f"ranking of the random-init network on {args.rank_steps} generated batches"
  if args.min_layer:
    pool = [p for p in pool if costs[p].index >= args.min_layer]
    if not pool:
      ap.error(f"--min-layer {args.min_layer}: no top-K layer is that deep "
               f"({len(costs.charged)} charged layers)")
    source += f", restricted to layers >= #{args.min_layer} (what-if)"
  first = min(costs[p].index for p in pool)
  print(f"{args.arch}: {len(costs.charged)} charged layers; {source}: top-K {len(pool)} layers "
        f"hold {args.share:.0%} RGN; the shallowest is {costs.charged[first].path} (#{first})")
  sampler = samplers.uniform(params, costs, budget, pool, allocation="fixed")
  selection = jax.jit(sampler.sample)(jax.random.key(0))
  usage = costs.usage(sel.counts(selection))
  shallowest = costs.charged[first]
  floor = samplers.uniform(params, costs, shallowest.memory, [shallowest.path],
                           allocation="fixed").sample(jax.random.key(0))

  sgd = optax.sgd(0.01)
  sparse = optax.chain(sparse_update(), optax.sgd(0.01))
  masks = jax.tree.map(lambda m, p: jnp.broadcast_to(m, p.shape).astype(p.dtype),
                       sel.mask_tree(selection, params), params)

  def masked_step(params, opt_state, masks, batch):
    loss = lambda p: steps.cross_entropy(model.apply({"params": p}, batch["image"]), batch["label"])
    grads = jax.tree.map(jnp.multiply, jax.grad(loss)(params), masks)
    updates, opt_state = sgd.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  recomputed = with_recompute(model)
  cases = {"full": (steps.make_train_step(model, sgd, prefix_chunks=1), sgd, None),
           "masked": (masked_step, sgd, masks),
           "trady": (steps.make_train_step(model, sparse, prefix_chunks=1), sparse, selection),
           "full_recompute": (steps.make_train_step(recomputed, sgd, prefix_chunks=1), sgd, None),
           "trady_recompute": (steps.make_train_step(recomputed, sparse, prefix_chunks=1), sparse,
                               selection),
           "path_floor": (steps.make_train_step(model, sparse, prefix_chunks=1), sparse, floor),
           "path_floor_recompute": (steps.make_train_step(recomputed, sparse, prefix_chunks=1),
                                    sparse, floor)}
  wanted = {"full", *args.cases.split(",")}
  if unknown := wanted - set(cases):
    ap.error(f"unknown --cases {sorted(unknown)}; known: {sorted(cases)}")
  cases = {k: v for k, v in cases.items() if k in wanted}
  report = {"arch": args.arch, "size": size, "batch": args.batch, "budget": budget,
            "ranking": source, "topk_layers": len(pool), "shallowest_selected": first,
            "budget_units_used": usage["units"], "selected_activation_units": usage["activations"],
            "activation_sparsity": usage["activation_sparsity"],
            "flops_saved_dW": usage["flops_saved"]}
  for name, (fn, tx, s) in cases.items():
    call = (params, tx.init(params), s, batch)
    jitted = jax.jit(fn)
    stats = xla.compiled_stats(jitted, *call)
    entry = {"temp_bytes": stats["temp_bytes"], "flops": stats["flops"]}
    if name.endswith("recompute"):  # the MLP backward's batch-slice loop: count it unrolled
      with attention.unchunked():
        entry["flops"] = xla.compiled_stats(jax.jit(lambda *a, fn=fn: fn(*a)), *call)["flops"]
    if args.repeats:
      entry["step_s"] = xla.median_time(jitted, *call, repeats=args.repeats, warmup=1)
    report[name] = entry
    print(f"{name:>16}: temp {entry['temp_bytes'] / MiB:9.1f} MiB  flops {entry['flops']:.3e}"
          + (f"  step {entry['step_s']:.2f} s" if "step_s" in entry else ""), flush=True)
  for name in cases:
    if name == "masked":  # the full backward pass: what full fine-tuning keeps
      continue
    m = recomputed if name.endswith("recompute") else model
    kinds = saved_by_kind(m, params, cases[name][2], batch)  # the case's selection (None: full)
    report[name]["saved_by_kind"] = kinds
    report[name]["saved_bytes"] = sum(kinds.values())
    print(f"{name} keeps for its backward {sum(kinds.values()) / MiB:.1f} MiB: " + ", ".join(
        f"{k} {v / MiB:.1f}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
  full = report["full"]
  report["ratios"] = {f"{k}_over_full_{q}": report[k][f] / full[f]
                      for k in cases if k != "full"
                      for q, f in (("temp", "temp_bytes"), ("flops", "flops"),
                                   ("saved", "saved_bytes")) if f in report[k]}
  if args.repeats:
    report["ratios"].update({f"{k}_over_full_time": report[k]["step_s"] / full["step_s"]
                             for k in cases if k != "full"})
  print(f"budget {budget:,} units ({usage['units']:,} used; selected activations "
        f"{usage['activations']:,} per sample = {usage['activations'] * 4 * args.batch / MiB:.1f} "
        f"MiB at batch {args.batch})")
  for k, v in report["ratios"].items():
    print(f"{k:>36}: {v:.3f}")
  if args.json:
    print(json.dumps(report))
  return report


if __name__ == "__main__":
  host_memory.reexec_with_tunables()  # huge pages for XLA's per-call scratch (host_memory.py)
  main()
