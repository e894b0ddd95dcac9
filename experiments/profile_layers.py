"""Where a training step's time goes, by kind of convolution (regular, pointwise, depthwise).

    python experiments/profile_layers.py --arch mbv2-w0.35 --batch 32

Times every conv layer of the model in isolation at its real shape: the forward pass, the input
gradient (what every layer on the gradient path pays) and the full weight gradient (what full
fine-tuning pays), and sums them by kind. On XLA's CPU backend depthwise convolutions are slow for
their FLOP count; this script says by how much.
"""

from __future__ import annotations

import argparse
import collections
import json

import common  # noqa: F401
import jax
import jax.numpy as jnp

from trady_jax import costs as costs_lib
from trady_jax import ops, xla
from trady_jax.layers import explicit_padding


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--arch", default="mbv2-w0.35")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--image-size", type=int, default=128)
  ap.add_argument("--json", action="store_true")
  args = ap.parse_args(argv)
  model, _, _ = common.load_model(args.arch, 10, pretrained=False)
  net = costs_lib.trace(model, (1, args.image_size, args.image_size, 3))
  by_kind = collections.defaultdict(lambda: collections.Counter())
  key = jax.random.key(0)
  for l in net.convs:
    g = l.groups
    x = jax.random.normal(key, (args.batch, *l.in_hw, l.in_channels))
    w = jax.random.normal(key, (*l.kernel_size, l.in_channels // g, l.out_channels))
    pad = explicit_padding(l.kernel_size, "SAME_TORCH")
    fwd = jax.jit(lambda x, w: ops.conv2d(x, w, l.stride, pad, g))
    y = fwd(x, w)
    dx = jax.jit(lambda w, y: jax.linear_transpose(
        lambda x: ops.conv2d(x, w, l.stride, pad, g), x)(y)[0])
    dw = jax.jit(lambda x, y: jax.linear_transpose(
        lambda w: ops.conv2d(x, w, l.stride, pad, g), w)(y)[0])
    c = by_kind[l.kind]
    c["layers"] += 1
    c["macs"] += l.macs * l.in_channels * args.batch
    c["forward_s"] += xla.median_time(fwd, x, w)
    c["input_grad_s"] += xla.median_time(dx, w, y)
    c["weight_grad_s"] += xla.median_time(dw, x, y)
  total = sum(c["forward_s"] + c["input_grad_s"] + c["weight_grad_s"] for c in by_kind.values())
  print(f"{args.arch}, batch {args.batch}, {args.image_size}x{args.image_size}: seconds per step "
        "(median of 5) summed over layers")
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
    print(json.dumps({"arch": args.arch, "batch": args.batch, "kinds": report}))
  return report


if __name__ == "__main__":
  main()
