"""Launch a grid of fine-tuning runs (``trady_jax.grid``); ``--help`` lists the modes.

    python experiments/grid.py --archs mbv2-w0.35 --datasets cifar10 \\
        --strategies trady,su,baseline --budgets paper --seeds 0,42,100 --results results/ \\
        --emit-commands --epochs 5 --offline true
"""

import sys
from pathlib import Path


from trady_jax import host_memory
from trady_jax.grid import cli

if __name__ == "__main__":
  host_memory.reexec_with_tunables()  # huge pages for XLA's per-call scratch (host_memory.py)
  sys.exit(cli.main(train_script=Path(__file__).with_name("train.py")))
