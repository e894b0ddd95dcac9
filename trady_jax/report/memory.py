"""Per-layer memory report of a network (paper Eq. 3-4, method-spec 1.4, 7.3, Appendix A).

    python experiments/memory_report.py --arch mbv2-w0.35 [--budget 66592] [--json]

(``main`` is that script.)
Prints ``costs.table()`` (per input channel: weight cost C^W, activation cost C^A, layer memory,
weight-derivative MACs), the totals, the MIT Sparse Update schemes 1-5 in units, and with
``--budget`` how much of the network that budget is and how many channels it can hold. With
``--json`` the last line is one JSON object. Needs no weights: the MCU nets come from the
architecture descriptions shipped in ``trady_jax/models/arch`` (the papers' architectures, with
the feature-mix conv the int8 weights lack; ``--no-feature-mix`` counts the network those weights
describe). Also reported, outside the budget as in the papers: the bytes BatchNorm's backward
keeps per sample in train mode (``batchnorm.stored_bytes``).
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from trady_jax import batchnorm, costs, paper
from trady_jax import models
from trady_jax.models import schemes


def budget_summary(net: costs.NetworkCosts, budget: int) -> dict:
  """Share of the network a budget is, and how many channels fit (cheapest / dearest first)."""
  per_channel = np.sort(np.concatenate([np.full(l.in_channels, l.memory) for l in net.convs]))
  cum = np.cumsum(per_channel)
  cum_dear = np.cumsum(per_channel[::-1])
  total = net.totals()["total"]
  return {"units": budget, "share": budget / total, "kib_fp32": math.ceil(budget * 4 / 1024),
          "channels_total": int(per_channel.size),
          "max_channels": int(np.searchsorted(cum, budget, side="right")),
          "min_channels": int(np.searchsorted(cum_dear, budget, side="right"))}


def papers_accounting(arch: str, net: costs.NetworkCosts) -> dict | None:
  """How the papers' Baseline total of a transformer (method-spec 8) comes out of ``net``'s costs.

  BERT / RoBERTa: every linear weight, the classifier head's included, plus one activation per
  token for each input feature of the charged layers counted at ``T + 1`` tokens: at ``T = 128``
  that is ``84,934,656 + 589,824 + 1,536 + 12 * 6,912 * 129 = 96,225,792``, exactly the papers'.
  Which extra token they count (a pooled one?) is not stated. Returns None for other networks.
  """
  if arch not in paper.TRANSFORMER_BUDGETS:
    return None
  t, head = net.totals(), net.head_weights()
  if arch in models.registry.TEXT:
    tokens = net.charged[0].activation
    value = t["weights"] + head + t["activations"] * (tokens + 1) // tokens
    rule = (f"linear weights incl. the head ({head:,}) + activations at {tokens + 1} tokens "
            f"({tokens} + 1) per charged input feature")
  else:
    value = t["total"]
    rule = "linear and conv weights + activations per charged input feature (head excluded)"
  return {"papers_baseline": paper.BASELINE_UNITS[arch], "ours": value, "rule": rule,
          "difference": value - paper.BASELINE_UNITS[arch]}


def report(arch: str, input_size: int = 128, feature_mix: bool = True,
           budget: int | None = None) -> tuple[costs.NetworkCosts, dict]:
  """The traced costs and the JSON summary. ``input_size``: the image side, or a text model's
  sequence length in tokens."""
  classes = 2 if arch in models.registry.TEXT else 10  # GLUE's binary tasks
  model = models.build_model(arch, classes, feature_mix=feature_mix, bn="train",
                             image_size=input_size)
  x = models.registry.example_input(arch, input_size)
  net = costs.trace(model, x)
  t = net.totals()
  out = {"arch": arch, "input": list(x.shape[1:-1] if x.ndim > 2 else x.shape[1:]),
         "feature_mix": feature_mix, "conv_layers": len(net.convs),
         "charged_layers": len(net.charged), "weights": t["weights"],
         "activations": t["activations"], "total": t["total"], "macs": t["macs"],
         "head_weights": net.head_weights(), "su_schemes": {}, "su_channels": {},
         "bn_train_bytes_per_sample": batchnorm.stored_bytes(net, "train", 1)}
  accounting = papers_accounting(arch, net)
  if accounting is not None:
    out["papers_accounting"] = accounting
  if arch in schemes.SCHEMES:
    for k in schemes.SCHEMES[arch]:
      counts = schemes.scheme_counts(arch, k, net)
      out["su_schemes"][str(k)] = net.usage(counts)["units"]
      out["su_channels"][str(k)] = sum(counts.values())
  if budget is not None:
    out["budget"] = budget_summary(net, budget)
  return net, out


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--arch", required=True, choices=list(models.NAMES))
  ap.add_argument("--input-size", type=int, default=None,
                  help="image side, or a text model's tokens (default: 128; 224 for ViT / Swin)")
  ap.add_argument("--no-feature-mix", action="store_true",
                  help="leave out the final 1x1 conv of mbv2-w0.35 / proxyless-w0.3")
  ap.add_argument("--budget", type=int, default=None, help="memory budget B_mem in units")
  ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
  args = ap.parse_args(argv)
  if args.budget is not None and args.budget < 0:
    ap.error("--budget must be non-negative")
  size = args.input_size or (224 if args.arch in models.registry.VISION_TRANSFORMERS else 128)
  net, out = report(args.arch, size, not args.no_feature_mix, args.budget)
  print(net.table())
  total = out["total"]
  for k, units in out["su_schemes"].items():
    print(f"MIT SU scheme {k}: {units:,} units ({100 * units / total:.2f} %), "
          f"{out['su_channels'][k]} channels, {math.ceil(units * 4 / 1024)} KiB at fp32")
  if "papers_accounting" in out:
    a = out["papers_accounting"]
    print(f"the papers' Baseline total {a['papers_baseline']:,} units; ours {a['ours']:,} "
          f"({a['difference']:+,}) with {a['rule']}")
  print(f"BatchNorm in train mode keeps {out['bn_train_bytes_per_sample'] / 1024:,.0f} KiB per "
        f"sample for its backward (x_hat of every BN), outside the budget; the whole network is "
        f"{math.ceil(total * 4 / 1024):,} KiB of units at fp32")
  if args.budget is not None:
    b = out["budget"]
    print(f"budget {b['units']:,} units = {100 * b['share']:.2f} % of {total:,} "
          f"({b['kib_fp32']} KiB at fp32): {b['min_channels']}-{b['max_channels']} of "
          f"{b['channels_total']} channels (dearest / cheapest first)")
  if args.json:
    print(json.dumps(out))
  return out

