"""Per-layer memory report of a network (``trady_jax.report.memory``; ``--help`` lists the flags).

    python experiments/memory_report.py --arch mbv2-w0.35 [--budget 66592] [--json]
"""

import sys

from trady_jax.report import memory

if __name__ == "__main__":
  memory.main(sys.argv[1:])
