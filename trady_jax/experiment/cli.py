"""The command line of a run: presets, flags, one-line errors with exit codes (``train_main`` is
``experiments/train.py``)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Callable, Sequence

from trady_jax import checkpoint, config, divergence, parallel, workdir
from trady_jax.config import ConfigError
from trady_jax.data.folder import ImageError
from trady_jax.experiment.assemble import default_workdir, run
from trady_jax.experiment.checks import check_config

TRAIN_DOC = """Fine-tune a pretrained network under a memory budget: one run.

    python experiments/train.py                       # quick preset: short TraDy run, CIFAR-10
    python experiments/train.py --strategy medyate --budget 66592 --workdir runs/m1
    python experiments/train.py --preset quick --offline true  # the same, only ../shared

Presets (``--preset``) give the other flags their defaults: ``quick`` (``QUICK``: 2,000 train /
1,000 test images, 1 + 1 epochs, lr 0.03) for the bare command only; ``paper``, the papers'
protocol for the dataset (every image, the dataset's epochs + 5 warm-up, lr 0.125, BatchNorm in
train mode), for any command with a flag. Every run prints what it trains on.

With network the data comes from tensorflow-datasets and the weights from the public model zoo
(cached); offline the copies in ../shared are used; with neither the run says so and uses generated
data and random weights. Every field of ``trady_jax.config.Config`` is a ``--flag``. Progress bars
show loss, accuracy, images/s and the budget in use; ``WORKDIR/metrics.jsonl`` gets one line per
epoch; checkpoints go to ``WORKDIR/checkpoints`` and an interrupted run resumes where it stopped.

Bad flags are refused before any work, one line ``error: ...`` on stderr (exit 2). One process
trains a workdir at a time (exit 75 when another holds it); a run whose loss or parameters stop
being finite stops (exit 3, ``WORKDIR/diverged.json``, no checkpoint of it); rerunning a finished
run changes nothing.
"""

# The embedded default: a short TraDy fine-tuning (a couple of minutes on a laptop CPU).
# lr 0.03: at the papers' 0.125 the BN-folded nets diverge (offline, this preset: train loss 81 in
# the second epoch, test accuracy 10 %); 0.03 reached 43 % and 0.01 34 % in the same two epochs.
QUICK = config.Config(strategy="trady", train_limit=2000, test_limit=1000, epochs=1,
                      warmup_epochs=1, lr=0.03)
PRESETS = {"quick": QUICK, "paper": config.Config()}  # 'paper': the papers' protocol

# Failures the user can act on: one line on stderr, no traceback (see ``exit_status``).
USER_ERRORS = (ConfigError, workdir.WorkdirError, divergence.DivergedError, checkpoint.CheckpointError,
               ImageError)


def exit_status(main: Callable[[], object]) -> int:
  """``main()``'s exit status: 0, or a user error's ``exit_code`` after ``error: ...`` on stderr."""
  try:
    main()
  except USER_ERRORS as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    return getattr(e, "exit_code", 1)
  return 0


def parse_train_args(argv: Sequence[str]) -> tuple[str, str, config.Config]:
  """``(preset, workdir, config)`` from ``experiments/train.py``'s flags: the quick preset for the
  bare command (or ``--preset quick``), the papers' protocol otherwise."""
  ap = config.ArgumentParser(description=TRAIN_DOC, allow_abbrev=False,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workdir", default="", help="run folder (default runs/<arch>-<strategy>-...)")
  ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                  help="defaults of the other flags: 'quick' for the bare command, else 'paper'")
  pre = argparse.ArgumentParser(add_help=False)  # reads --preset only, before the full parser
  pre.add_argument("--preset", choices=sorted(PRESETS), default=None)
  preset = pre.parse_known_args(argv)[0].preset or ("quick" if not argv else "paper")
  config.add_arguments(ap, PRESETS[preset])
  args = ap.parse_args(argv)
  return preset, args.workdir, config.from_args(args)


def train_main(argv: Sequence[str] | None = None) -> dict:
  """One run from the command line; prints a summary and the final record as a JSON line."""
  argv = sys.argv[1:] if argv is None else list(argv)
  preset, wd, cfg = parse_train_args(argv)
  print(f"preset {preset}", flush=True)
  check_config(cfg)
  parallel.initialize()  # joins a multi-host job when the environment describes one
  final = run(cfg, wd or default_workdir(cfg))
  g = {k: final.get(k, math.nan) for k in ("test_accuracy", "units", "weight_sparsity",
                                           "activation_sparsity", "flops_saved", "wall_s")}
  print(f"final test accuracy {g['test_accuracy']:.4f}  budget used {g['units']:,.0f} units  "
        f"weight sparsity {g['weight_sparsity']:.3f}  activation sparsity "
        f"{g['activation_sparsity']:.3f}  dW FLOPs saved {g['flops_saved']:.3f}  "
        f"compilations {final.get('compilations')}  wall {g['wall_s']:.0f} s")
  print(json.dumps(final))
  return final
