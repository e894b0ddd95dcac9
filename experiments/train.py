"""Fine-tune a pretrained network under a memory budget: one run (``--help`` says how).

    python experiments/train.py                       # quick preset: short TraDy run, CIFAR-10
    python experiments/train.py --strategy medyate --budget 66592 --workdir runs/m1
    python experiments/train.py --preset quick --offline true  # the same, only ../shared

The run is assembled and trained by ``trady_jax.experiment`` (``experiment.run(config)`` in code).
"""

import sys

from trady_jax import host_memory
from trady_jax.experiment import cli

if __name__ == "__main__":
  host_memory.reexec_with_tunables()  # huge pages for XLA's per-call scratch (host_memory.py)
  sys.exit(cli.exit_status(cli.train_main))
