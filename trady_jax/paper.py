"""The papers' protocol as constants: epochs, learning rate, batch, seeds, layer-choice rules, budgets.

Training protocol of TraDy (App. D.1) and MeDyate (4.1), method-spec 10: SGD without momentum or
weight decay, learning rate from ``LR`` down to 0 by a cosine after ``WARMUP_EPOCHS`` of linear
warm-up (counted on top of the epochs per dataset, as in the predecessor code), batch
``BATCH_SIZE`` (the predecessor configs'), seeds ``SEEDS``. TraDy keeps the top layers holding
``TOPK_SHARE`` of the layer RGN (K = 35 / 27 / 43 layers of mbv2-w0.35 / mcunet-in1 /
proxyless-w0.3, method-spec 2.5); MeDyate the smallest K with ``B_mem / M_K <= ALPHA_OPT``
(Eq. 10, method-spec 5.4). The memory budgets ``BUDGETS`` are the units (Eq. 3) of the MIT Sparse
Update schemes ``BUDGET_SCHEMES`` (method-spec 7.3; the schemes themselves: ``models.schemes``);
``BASELINE_UNITS`` is the whole network's B_mem (TraDy Table 1 "Baseline", method-spec 0.3).
"""

from __future__ import annotations

# Fine-tuning epochs per dataset (method-spec 10); other datasets get DEFAULT_EPOCHS.
EPOCHS = {"cifar10": 100, "cifar100": 50, "food101": 50, "vww": 50,
          "cub200": 200, "pets": 200, "flowers102": 200}
DEFAULT_EPOCHS = 50
WARMUP_EPOCHS = 5
LR = 0.125
BATCH_SIZE = 32
SEEDS = (0, 42, 100)
TOPK_SHARE = 0.97
ALPHA_OPT = 0.2

# The three budgets of the TraDy / MeDyate tables, in units: SU schemes 1, 3 and 5 of each net.
BUDGET_SCHEMES = (1, 3, 5)
BUDGETS = {"mbv2-w0.35": (27_946, 66_592, 93_696), "mcunet-in1": (15_936, 64_832, 112_640),
           "proxyless-w0.3": (25_984, 72_960, 101_376)}
BASELINE_UNITS = {"mbv2-w0.35": 1_252_320, "mcunet-in1": 1_309_808, "proxyless-w0.3": 1_162_032,
                  "swin-t": 31_889_952, "bert-base": 96_225_792, "roberta-base": 96_225_792}
# The transformers' budgets (method-spec 8; no SU scheme behind them): the "absolute" ones (the
# smallest mbv2-w0.35 and the largest mcunet-in1 budget) and the "proportional" ones, 1.988 % and
# 8.679 % of the Baseline.
TRANSFORMER_BUDGETS = {"swin-t": (27_946, 112_640, 633_859, 2_767_686),
                       "bert-base": (27_946, 112_640, 1_912_629, 8_351_308),
                       "roberta-base": (27_946, 112_640, 1_912_629, 8_351_308)}


def budgets(arch: str) -> tuple[int, ...]:
  """The papers' budgets for ``arch`` (``KeyError`` when they have none).

  >>> budgets("mbv2-w0.35"), budgets("bert-base")[2:]
  ((27946, 66592, 93696), (1912629, 8351308))
  """
  if arch in BUDGETS:
    return BUDGETS[arch]
  return TRANSFORMER_BUDGETS[arch]


def epochs(dataset: str) -> int:
  """The papers' fine-tuning epochs for ``dataset``, warm-up excluded.

  >>> epochs("cifar10"), epochs("food101"), epochs("pets")
  (100, 50, 200)
  """
  return EPOCHS.get(dataset, DEFAULT_EPOCHS)
