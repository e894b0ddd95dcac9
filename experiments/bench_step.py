"""One training step three ways, measured side by side: memory, FLOPs, time, compilations.

    python experiments/bench_step.py --arch mbv2-w0.35 --budget 27946 --batch 32 [--json]

* ``full``: full fine-tuning, plain ``jax.grad`` over all parameters + SGD;
* ``masked``: what the reference implementations do: full backward, then the gradients multiplied
  by the channel mask (``optax.masked`` / gradient zeroing);
* ``trady``: the selective layers with a TraDy selection (uniform over the top-K RGN layers), the
  frozen layers below the shallowest selected one run in ``--prefix-chunks`` batch chunks
  (``trady_jax.prefix``);
* ``forward``: inference on the whole batch, timed in the same rounds: the floor of every step
  (``forward_over_full_time``; with the peer, ``forward_over_torch_full_time`` beside
  ``torch_forward_over_torch_full_time``).

``--bn MODE`` (``trady_jax.batchnorm``) measures the same three steps with BatchNorm in that mode
(default ``folded``, the int8 deployment form, whose ratios are tracked over time) and reports
``bn_bytes``, what the BN backward keeps beside the budget; the JSON is the same for every mode.

Memory is XLA's ``memory_analysis().temp_size_in_bytes`` of the compiled step, FLOPs its
``cost_analysis()['flops']``, time the median wall time of repeated calls after warm-up (the
``trady_over_full_time`` ratio from rounds that alternate the two steps, so a busy machine slows
both alike). XLA counts
a loop body once, so every step's FLOPs come from the same step compiled without its loops (the
frozen prefix's batch chunks, ``trady_jax.depthwise``'s kernel-gradient chunks; the arithmetic is
identical). The trady step's temp memory is broken down into the analytic need of the
backward pass (selected activations, ReLU masks, cotangents) and the forward working sets.

Run as a script it restarts under ``trady_jax.host_memory.TUNABLES`` (huge pages for the step's
scratch buffer, which XLA's CPU runtime allocates afresh at every call; ``TRADY_JAX_HOST_MEMORY=
default`` keeps glibc's defaults). ``host_memory`` in the JSON says which, and each step reports
``minor_faults_per_step``: the pages the kernel mapped and zeroed for one call.

``--peer torch`` also times PyTorch's full fine-tuning step (SGD, cross-entropy) on the same network
with the same weights and batch (``trady_jax.models.torch_peer``; its logits are checked against the
Flax model's first), with as many threads as the machine has cores; skipped when torch is absent.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trady_jax import host_memory
from trady_jax import experiment
from trady_jax import costs as costs_lib
from trady_jax import batchnorm, depthwise, ops, parallel, prefix, samplers, sparse_update, steps
from trady_jax import paper, xla
from trady_jax.models import torch_peer
from trady_jax import selection as sel

MiB = 2**20


def gradient_path(selection_counts, costs: costs_lib.NetworkCosts) -> list:
  """Conv layers from the selected one nearest the input up to the output."""
  first = min(costs[p].index for p, k in selection_counts.items() if k and costs[p].charged)
  return [l for l in costs.convs if l.index >= first]


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--arch", default="mbv2-w0.35")
  ap.add_argument("--budget", type=int, default=paper.BUDGETS["mbv2-w0.35"][0], help="B_mem in units")
  ap.add_argument("--batch", type=int, default=paper.BATCH_SIZE)
  ap.add_argument("--image-size", type=int, default=128)
  ap.add_argument("--repeats", type=int, default=5, help="timed calls per step (median)")
  ap.add_argument("--weights-dir", default="")
  ap.add_argument("--ranking", default="", help="ranking JSON (default: the shipped one)")
  ap.add_argument("--share", type=float, default=paper.TOPK_SHARE,
                  help="TraDy top-K share of layer RGN")
  ap.add_argument("--prefix-chunks", type=int, default=8,
                  help="trady: batch chunks for the frozen prefix (trady_jax.prefix); 1 = off")
  ap.add_argument("--peer", choices=["torch"], default=None,
                  help="also time PyTorch's full fine-tuning step on the same network")
  ap.add_argument("--bn", choices=batchnorm.MODES, default="folded",
                  help="BatchNorm mode (trady_jax.batchnorm); int8 weights are calibrated on the "
                       "benchmark batch. Default: folded, whose ratios are tracked over time")
  ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
  args = ap.parse_args(argv)

  size = args.image_size
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(-1, 1, (args.batch, size, size, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, args.batch), jnp.int32)}
  net, pretrained = experiment.load_network(
      args.arch, 10, bn=args.bn, calibration=[batch["image"]], weights_dir=args.weights_dir,
      image_size=size)
  model, params = net.module, net.params
  # BN running statistics: an extra step argument, and BN layers in batch-statistics mode.
  bn_state = () if net.batch_stats is None else (net.batch_stats,)

  def logits(variables, x):
    """The model on ``x`` as the train step runs it (BN on batch statistics)."""
    if bn_state:
      return model.apply({**variables, "batch_stats": bn_state[0]}, x,
                         mutable=["batch_stats"])[0]
    return model.apply(variables, x)

  costs = costs_lib.trace(model, (1, size, size, 3))
  doc = experiment.load_ranking(args.arch, args.ranking, costs)
  if doc is None:
    raise SystemExit(f"no layer ranking for {args.arch}: run experiments/rank_layers.py first")
  pool = doc.top_k_share(args.share)
  # Fixed counts: exact-length index arrays whose memory is the budget's (no padded slots).
  sampler = samplers.uniform(params, costs, args.budget, pool, allocation="fixed")
  draw = jax.jit(sampler.sample)
  selections = [draw(jax.random.fold_in(jax.random.key(0), e)) for e in range(3)]

  sgd = optax.sgd(0.01)
  sparse = optax.chain(sparse_update(), optax.sgd(0.01))
  full_step = steps.make_train_step(model, sgd)
  trady_step = steps.make_train_step(model, sparse, prefix_chunks=args.prefix_chunks)
  # The same arithmetic without the chunk loop: XLA's cost analysis counts a loop body once, so
  # the trady FLOPs are read from this compile (and its temp shows what chunking saves).
  trady_whole = steps.make_train_step(model, sparse, prefix_chunks=1)

  def masked_step(params, opt_state, masks, batch, *_):
    """The reference approach: full backward, then every gradient times its runtime 0/1 mask."""
    loss = lambda p: steps.cross_entropy(logits({"params": p}, batch["image"]), batch["label"])
    grads = jax.tree.map(jnp.multiply, jax.grad(loss)(params), masks)
    updates, opt_state = sgd.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def as_masks(selection):
    """Dense float masks shaped like the params: data, not structure, as in gradient zeroing."""
    return jax.tree.map(lambda m, p: jnp.broadcast_to(m, p.shape).astype(p.dtype),
                        sel.mask_tree(selection, params), params)

  # Several devices: data parallel, and every figure below is per device.
  mesh = parallel.mesh() if jax.device_count() > 1 else None
  jit = jax.jit
  host_batch = batch
  if mesh is not None:
    parallel.check_batch(args.batch, mesh)
    jit = lambda f: parallel.jit_train_step(f, mesh, batch_stats=bool(bn_state))
    batch = parallel.shard_batch(batch, mesh)
    params = parallel.replicate(params, mesh)
    bn_state = tuple(parallel.replicate(s, mesh) for s in bn_state)
    selections = [parallel.replicate(s, mesh) for s in selections]
  host_params = params
  per_device = args.batch // (mesh.size if mesh is not None else 1)
  report = {"arch": args.arch, "budget": args.budget, "batch": args.batch,
            "devices": jax.device_count(), "cpu_count": os.cpu_count(), "pretrained": pretrained,
            "topk_layers": len(pool), "bn": args.bn,
            "bn_bytes": batchnorm.stored_bytes(costs, args.bn, per_device),
            "random_init_layers": list(net.random_init_layers),
            "host_memory": host_memory.describe()}
  masks = [as_masks(s) for s in selections]
  timed = {}  # zero-argument calls of the steps: full, masked, trady, forward
  cases = {"full": (full_step, sgd, None, None), "masked": (masked_step, sgd, masks[0], masks),
           "trady": (trady_step, sparse, selections[0], selections)}
  for name, (fn, tx, s, variants) in cases.items():
    call_args = (params, tx.init(params), s, batch, *bn_state)
    counted = xla.count_traces(fn)
    jitted = jit(counted)
    # full / masked: what a user's ordinary model does (activations saved as floats).
    plain = ops.plain_activations() if name != "trady" else contextlib.nullcontext()
    with plain:
      stats = xla.compiled_stats(jitted, *call_args)
      jax.block_until_ready(jitted(*call_args))  # compile inside the context
      with depthwise.unchunked():  # a fresh function: jit caches by function, not by context
        loop_free = xla.compiled_stats(jit(lambda *a, fn=fn: fn(*a)), *call_args)
    timed[name] = functools.partial(jitted, *call_args)
    entry = {"temp_bytes": stats["temp_bytes"], "flops": loop_free["flops"],
             "step_s": xla.median_time(jitted, *call_args, repeats=args.repeats, warmup=2)}
    faults = host_memory.minor_faults()
    jax.block_until_ready(jitted(*call_args))
    entry["minor_faults_per_step"] = host_memory.minor_faults() - faults  # fresh pages zeroed
    if s is not None:
      for other in variants[1:]:
        jax.block_until_ready(jitted(params, tx.init(params), other, batch, *bn_state))
      entry["compiles"] = counted.traces
    if name == "trady":
      whole = xla.compiled_stats(jit(trady_whole), *call_args)
      with depthwise.unchunked():
        whole_flops = xla.compiled_stats(jit(lambda *a: trady_whole(*a)), *call_args)["flops"]
      entry["prefix_chunks"] = prefix.chunk_count(args.batch, args.prefix_chunks)
      entry["frozen_prefix_stages"] = prefix.frozen_stages(model, s)
      entry["chunked_flops_as_counted"] = stats["flops"]
      entry["flops"] = whole_flops
      entry["whole_batch_prefix_temp_bytes"] = whole["temp_bytes"]
      entry["whole_batch_prefix_step_s"] = xla.median_time(jit(trady_whole), *call_args,
                                                           repeats=args.repeats, warmup=2)
    report[name] = entry
    print(f"{name:>7}: temp {entry['temp_bytes'] / MiB:8.1f} MiB  flops {entry['flops']:.3e}  "
          f"step {entry['step_s']:.3f} s  page faults {entry['minor_faults_per_step']:,}"
          + (f"  compiles {entry['compiles']}" if s else ""), flush=True)

  # Inference on the whole batch: the forward pass every training step runs first, a floor for it.
  eval_step = steps.make_eval_step(model, chunks=1)
  eval_jit = jax.jit(eval_step) if mesh is None else parallel.jit_eval_step(
      eval_step, mesh, batch_stats=bool(bn_state))
  timed["forward"] = functools.partial(eval_jit, params, batch, *bn_state)
  jax.block_until_ready(timed["forward"]())

  # The time ratios from rounds that alternate the steps, so all see the same machine load.
  rounds = {k: timed[k] for k in ("full", "trady", "forward")}
  if args.peer == "torch" and bn_state:
    print("peer torch: skipped, the peer is built from the BN-folded form (--bn folded)")
  elif args.peer == "torch":
    report["peer"] = torch_peer.timed_full_step(model, host_params, host_batch, rounds,
                                                args.repeats)
  beside = report.get("peer", {}).get("interleaved_step_s") or xla.interleaved_median_times(
      rounds, repeats=args.repeats, warmup=1)
  report["interleaved_step_s"] = beside

  counts = sel.counts(selections[0])
  usage = costs.usage(counts)
  path = gradient_path(counts, costs)
  act_bytes = usage["activations"] * per_device * 4
  local = {k: v[:per_device] for k, v in host_batch.items()}  # one device's share of the batch
  loss = lambda p: steps.cross_entropy(
      logits({"params": p, "selection": selections[0]}, local["image"]), local["label"])
  res = xla.residual_bytes(loss, params)
  forward = xla.compiled_stats(eval_jit, params, batch, *bn_state)["temp_bytes"]
  k, n = report["trady"]["frozen_prefix_stages"], report["trady"]["prefix_chunks"]
  prefix_temp = suffix_temp = 0
  if k:  # forward working sets on one device's batch: one prefix chunk, then the stages above it
    p_fn = lambda p, x: prefix.apply_stages(model, {"params": p}, x, k, n)
    h = jax.eval_shape(p_fn, params, local["image"])
    prefix_temp = xla.compiled_stats(p_fn, params, local["image"])["temp_bytes"]
    suffix_temp = xla.compiled_stats(lambda p, h: model.apply({"params": p}, h, start=k), params,
                                     jnp.zeros(h.shape, h.dtype))["temp_bytes"]
  cot = max(l.out_channels * l.out_hw[0] * l.out_hw[1] for l in path) * per_device * 4
  analytic = act_bytes + res["bool_masks"] + 2 * cot
  report["analytic"] = {
      "budget_units": usage["units"], "weight_units": usage["weights"],
      "activation_units": usage["activations"],
      "selected_activation_bytes": act_bytes,
      "relu_mask_bytes": res["bool_masks"],
      "largest_cotangent_bytes": cot,
      "need_bytes": analytic,
      "saved_float_residual_bytes": res["float_activations"],
      "forward_only_temp_bytes": forward,
      "frozen_prefix_chunk_forward_temp_bytes": prefix_temp,
      "above_prefix_forward_temp_bytes": suffix_temp,
      "gradient_path_layers": len(path),
      "weight_sparsity": usage["weight_sparsity"],
      "activation_sparsity": usage["activation_sparsity"], "flops_saved": usage["flops_saved"]}
  full, masked, trady = report["full"], report["masked"], report["trady"]
  report["ratios"] = {
      "trady_over_full_temp": trady["temp_bytes"] / full["temp_bytes"],
      "trady_over_full_flops": trady["flops"] / full["flops"],
      "trady_over_full_time": beside["trady"] / beside["full"],
      "forward_over_full_time": beside["forward"] / beside["full"],
      "trady_over_masked_temp": trady["temp_bytes"] / masked["temp_bytes"],
      "masked_over_full_temp": masked["temp_bytes"] / full["temp_bytes"],
      "trady_temp_over_analytic_need": trady["temp_bytes"] / analytic,
      "trady_temp_over_inference_temp": trady["temp_bytes"] / forward,
      "trady_temp_over_need_plus_inference": trady["temp_bytes"] / (analytic + forward)}
  peer = report.get("peer", {})
  if "torch_full_step_s" in peer:  # from the interleaved rounds: the same machine load
    torch_s = peer["torch_full_step_s"]
    report["ratios"]["trady_over_torch_full_time"] = beside["trady"] / torch_s
    report["ratios"]["full_over_torch_full_time"] = beside["full"] / torch_s
    # Floors: no training step is faster than its own forward pass.
    report["ratios"]["forward_over_torch_full_time"] = beside["forward"] / torch_s
    report["ratios"]["torch_forward_over_torch_full_time"] = peer["torch_forward_s"] / torch_s
  a = report["analytic"]
  print(f"bn {args.bn}: BN backward keeps {report['bn_bytes'] / MiB:.2f} MiB (x_hat of every BN, "
        f"outside the budget; trady_jax.batchnorm) against a budget of {a['budget_units']:,} "
        f"units = {a['budget_units'] * 4 / 1024:.1f} KiB in fp32")
  print(f"budget use {a['budget_units']:,} units (weights {a['weight_units']:,}, activations "
        f"{a['activation_units']:,}) over {len(pool)} top-K layers; gradient path "
        f"{a['gradient_path_layers']} conv layers")
  print(f"analytic need {analytic / MiB:.2f} MiB = selected activations "
        f"{act_bytes / MiB:.2f} (saved float residuals measured: "
        f"{res['float_activations'] / MiB:.2f}) + ReLU masks {res['bool_masks'] / MiB:.2f} "
        f"+ 2 x largest cotangent on the path {cot / MiB:.2f}")
  print(f"forward-only (inference) temp {forward / MiB:.2f} MiB (the whole forward pass at batch "
        f"{per_device})")
  if k:
    print(f"frozen prefix: stages 0..{k - 1} need no backward pass and run in {n} batch chunks; "
          f"forward temp of those chunks {prefix_temp / MiB:.2f} MiB, of the stages above at the "
          f"full batch {suffix_temp / MiB:.2f} MiB (whole-batch prefix: trady temp "
          f"{trady['whole_batch_prefix_temp_bytes'] / MiB:.2f} MiB, step "
          f"{trady['whole_batch_prefix_step_s']:.3f} s)")
  rest = trady["temp_bytes"] - analytic
  print(f"trady temp {trady['temp_bytes'] / MiB:.2f} MiB = {trady['temp_bytes'] / analytic:.2f}x "
        f"the analytic need; remainder {rest / MiB:.2f} MiB = forward working set beside the "
        f"backward buffers ({trady['temp_bytes'] / forward:.2f}x inference)")
  for name, v in report["ratios"].items():
    print(f"{name:>35}: {v:.3f}")
  if args.json:
    print(json.dumps(report))
  return report


if __name__ == "__main__":
  host_memory.reexec_with_tunables()  # huge pages for XLA's per-call scratch (host_memory.py)
  import sys
  from trady_jax.models.registry import TRANSFORMERS
  pre = argparse.ArgumentParser(add_help=False)
  pre.add_argument("--arch")
  if pre.parse_known_args()[0].arch in TRANSFORMERS:  # bert-base, swin-t, ...
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_transformer
    bench_transformer.main()
  else:
    main()
