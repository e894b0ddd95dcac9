"""Offline layer ranking: a short full fine-tuning on a proxy task, recording gradient norms.

    python experiments/rank_layers.py --arch mbv2-w0.35 --offline true [--passes 2] [--out r.json]

A full fine-tuning of the loaded network (the papers' protocol: lr 0.125, BatchNorm in train mode,
batch 32; a linear warm-up over the first tenth of the steps, then cosine) over ``--passes`` whole
epochs of the training split ("a few epochs suffice", TraDy App. D.5). Accumulates, over the
steps, every conv layer's per-channel gradient norms (Eq. 6) and layer gradient norms, and writes
layer RGN (Eq. 8) and LaRa (Eq. 9) to a JSON that runs reuse (``--ranking``; the default output is
the ranking shipped in ``trady_jax/rankings``). The papers rank on CIFAR-10. The ranking is taken
on the network a run trains (``--bn``, BN restored in int8 weights, no layer the weights lack) and
records which weights and BN mode it came from (``trady_jax.experiment.rank_layers``).
"""

from __future__ import annotations

import argparse
import sys

from trady_jax import host_memory
from trady_jax import config, experiment
from trady_jax.experiment import cli


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--passes", type=int, default=1, help="epochs over the training split")
  ap.add_argument("--steps", type=int, default=0,
                  help="fine-tuning steps to accumulate over (0: --passes whole epochs)")
  ap.add_argument("--out", default="", help="output JSON (default: the shipped ranking)")
  config.add_arguments(ap, config.Config(test_limit=10, lr=0.125))
  args = ap.parse_args(argv)
  return experiment.rank_layers(config.from_args(args), passes=args.passes, steps=args.steps,
                                out=args.out or None)


if __name__ == "__main__":
  host_memory.reexec_with_tunables()  # huge pages for XLA's per-call scratch (host_memory.py)
  sys.exit(cli.exit_status(main))
