"""Where a training step's time goes, by kind of convolution (regular, pointwise, depthwise).

    python experiments/profile_layers.py --arch mbv2-w0.35 --batch 32
    python experiments/profile_layers.py --depthwise          # XLA's vs the shifted formulation
    python experiments/profile_layers.py --pointwise          # XLA's vs the matrix-product one

Times every conv layer of the model in isolation at its real shape: the forward pass, the input
gradient (what every layer on the gradient path pays) and the full weight gradient (what full
fine-tuning pays), and sums them by kind, in the formulation ``trady_jax.depthwise`` chooses for
this backend. ``--depthwise`` times the depthwise layers in both formulations, operation by
operation, and says which is faster here: the measurement behind ``depthwise.FORMULATIONS``;
``--pointwise`` does the same for the 1x1 layers (``pointwise.FORMULATIONS``).
"""

from __future__ import annotations

import argparse
import collections
import json
from typing import Callable

import jax

from trady_jax import host_memory
from trady_jax import experiment
from trady_jax import costs as costs_lib
from trady_jax import depthwise, ops, paper, pointwise, xla
from trady_jax.layers import explicit_padding


def layer_calls(layer, batch: int, key) -> dict[str, Callable[[], jax.Array]]:
  """Zero-argument calls of one conv layer at its real shape: the forward pass, the input gradient
  and the full weight gradient, traced now (in the formulations active now)."""
  g = layer.groups
  x = jax.random.normal(key, (batch, *layer.in_hw, layer.in_channels))
  w = jax.random.normal(key, (*layer.kernel_size, layer.in_channels // g, layer.out_channels))
  pad = explicit_padding(layer.kernel_size, "SAME_TORCH")
  conv = lambda x, w: ops.conv2d(x, w, layer.stride, pad, g)
  fwd = jax.jit(conv)
  y = fwd(x, w)
  dx = jax.jit(lambda x, w, y: jax.vjp(lambda x: conv(x, w), x)[1](y)[0])
  dw = jax.jit(lambda x, w, y: jax.vjp(lambda w: conv(x, w), w)[1](y)[0])
  dx(x, w, y), dw(x, w, y)  # traced here, in the formulations active now
  return {"forward_s": lambda: fwd(x, w), "input_grad_s": lambda: dx(x, w, y),
          "weight_grad_s": lambda: dw(x, w, y)}


def time_layer(layer, batch: int, key) -> dict[str, float]:
  """Median seconds of one conv layer's forward, input gradient and full weight gradient."""
  return xla.interleaved_median_times(layer_calls(layer, batch, key))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--arch", default="mbv2-w0.35")
  ap.add_argument("--batch", type=int, default=paper.BATCH_SIZE)
  ap.add_argument("--image-size", type=int, default=128)
  ap.add_argument("--depthwise", action="store_true",
                  help="time the depthwise layers in each formulation (xla, shifted, sliced)")
  ap.add_argument("--pointwise", action="store_true",
                  help="time the pointwise layers in each formulation (xla, dot)")
  ap.add_argument("--json", action="store_true")
  args = ap.parse_args(argv)
  model, _, _ = experiment.load_model(args.arch, 10, pretrained=False)
  net = costs_lib.trace(model, (1, args.image_size, args.image_size, 3))
  key = jax.random.key(0)
  print(f"{args.arch}, batch {args.batch}, {args.image_size}x{args.image_size}, backend "
        f"{jax.default_backend()}: seconds per step (median of 5) summed over layers")
  if args.depthwise:
    return compare_formulations(net, args, key, "depthwise", depthwise)
  if args.pointwise:
    return compare_formulations(net, args, key, "pointwise", pointwise)
  by_kind = collections.defaultdict(lambda: collections.Counter())
  for l in net.convs:
    c = by_kind[l.kind]
    c["layers"] += 1
    c["macs"] += l.macs * l.in_channels * args.batch
    c.update(time_layer(l, args.batch, key))
  total = sum(c["forward_s"] + c["input_grad_s"] + c["weight_grad_s"] for c in by_kind.values())
  print(f"{'kind':<10} {'layers':>6} {'GMACs':>7} {'forward':>8} {'dL/dx':>8} {'dL/dW':>8} "
        f"{'share':>6} {'GMAC/s fwd':>10}")
  report = {}
  for kind, c in sorted(by_kind.items()):
    t = c["forward_s"] + c["input_grad_s"] + c["weight_grad_s"]
    report[kind] = {k: float(v) for k, v in c.items()} | {"share": t / total}
    print(f"{kind:<10} {c['layers']:>6} {c['macs'] / 1e9:>7.2f} {c['forward_s']:>8.3f} "
          f"{c['input_grad_s']:>8.3f} {c['weight_grad_s']:>8.3f} {t / total:>6.1%} "
          f"{c['macs'] / 1e9 / max(c['forward_s'], 1e-9):>10.1f}")
  if args.json:
    print(json.dumps({"arch": args.arch, "batch": args.batch, "backend": jax.default_backend(),
                      "kinds": report}))
  return report


def compare_formulations(net, args, key, kind: str, module) -> dict:
  """Each operation of the ``kind`` layers summed over the layers, per formulation of ``module``
  (``depthwise`` or ``pointwise``), and the faster one."""
  layers = [l for l in net.convs if l.kind == kind]
  totals = {name: collections.Counter() for name in module.FORMULATION_NAMES}
  for l in layers:  # each layer's formulations timed in interleaved rounds, so drift weighs alike
    calls = {}
    for name in module.FORMULATION_NAMES:
      with module.formulation(name):
        calls.update({(name, op): c for op, c in layer_calls(l, args.batch, key).items()})
    for (name, op), t in xla.interleaved_median_times(calls, repeats=9).items():
      totals[name][op] += t
  ops_ = ("forward_s", "input_grad_s", "weight_grad_s")
  print(f"{len(layers)} {kind} layers")
  print(f"{'operation':<14}" + "".join(f"{n:>10}" for n in totals) + f"{'faster':>10}")
  best = {}
  for op in ops_:
    best[op] = min(totals, key=lambda n: totals[n][op])
    print(f"{op[:-2]:<14}" + "".join(f"{totals[n][op]:>10.4f}" for n in totals) +
          f"{best[op]:>10}")
  chosen = ({op: module.active_formulation(op) for op in module.OPERATIONS}
            if kind == "depthwise" else module.active_formulation())
  report = {"arch": args.arch, "batch": args.batch, "backend": jax.default_backend(),
            f"{kind}_layers": len(layers),
            "seconds": {n: {k: float(v) for k, v in c.items()} for n, c in totals.items()},
            "faster": best, "chosen": chosen}
  if args.json:
    print(json.dumps(report))
  return report


if __name__ == "__main__":
  host_memory.reexec_with_tunables()  # huge pages for XLA's per-call scratch (host_memory.py)
  main()
