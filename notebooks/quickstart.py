# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # trady-jax quickstart: fine-tune a pretrained network under a memory budget
#
# This notebook fine-tunes the ImageNet-pretrained MobileNetV2 `mbv2-w0.35` on CIFAR-10 with
# TraDy: every epoch it trains a new random set of input channels, drawn from the layers that an
# offline ranking found important, inside a budget of 27,946 memory units (TraDy's smallest budget
# for this network, about 2 % of what full fine-tuning stores). It shows
#
# 1. the memory each layer would need to be trained, and one TraDy selection inside the budget;
# 2. a short fine-tuning through the library's run loop (`trady_jax.train.Run`), TraDy next to
#    full fine-tuning;
# 3. the scratch memory XLA's compiled train step needs in each case.
#
# It runs on a CPU in a few minutes. The weights and CIFAR-10 come from a local copy (`../shared`
# beside a checkout) when there is one, else they are downloaded; with neither, the notebook says
# so and goes on with random weights and generated images.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/trady-jax/trady-jax/blob/main/notebooks/quickstart.ipynb)

# %%
import sys

if "google.colab" in sys.modules:  # Colab: install the package (a local checkout has it already)
  # %pip install -q "trady-jax @ git+https://github.com/trady-jax/trady-jax"
  pass

# %% [markdown]
# ## Settings
#
# Change these to train longer or on more images; the defaults take a few minutes on a CPU.

# %% tags=["parameters"]
ARCH = "mbv2-w0.35"   # the network: 'mbv2-w0.35', 'mcunet-in1' or 'proxyless-w0.3'
IMAGE_SIZE = 128      # input resolution (the papers': 128)
TRAIN_IMAGES = 500    # CIFAR-10 training images (class-balanced); 0 = all 50,000
TEST_IMAGES = 256     # CIFAR-10 test images; 0 = all 10,000
EPOCHS = 3            # epochs of fine-tuning (the papers: 100 on CIFAR-10, after 5 of warm-up)
BATCH = 32            # batch size (the papers': 32)
DOWNLOAD = True       # download weights and CIFAR-10 when no local copy is found

# %%
import logging
import tempfile
import warnings

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import PercentFormatter

logging.getLogger("absl").setLevel(logging.ERROR)  # tfds' notes while it looks for a copy
warnings.filterwarnings("ignore", message="IProgress not found")  # progress bars are off here
from trady_jax import config, experiment, paper, selection, strategies

# %% [markdown]
# ## The run
#
# A `Config` names everything a run depends on; `experiment.build_run` resolves it: the data, the
# pretrained network (the int8 copy in `../shared` has BatchNorm folded: it is restored by
# calibration), the layer ranking shipped with the package, and the strategy's channel selector.
# It prints where each of them came from.
#
# The shipped ranking was computed on that int8 copy. Downloaded weights (the fp32 MCUNet
# model-zoo checkpoint) are another network: `build_run` then ranks this one first, once
# (`experiment.rank_layers`: a short full fine-tuning on the training images, recording gradient
# norms), caches that ranking under the weights' hash and says so.

# %%
cfg = config.Config(arch=ARCH, dataset="cifar10", offline=not DOWNLOAD, image_size=IMAGE_SIZE,
                    train_limit=TRAIN_IMAGES, test_limit=TEST_IMAGES, batch_size=BATCH,
                    epochs=EPOCHS, warmup_epochs=0, strategy="trady",
                    budget=paper.BUDGETS[ARCH][0], measure_memory=True, progress=False).validate()
workdir = tempfile.mkdtemp(prefix="trady-quickstart-")
run = experiment.build_run(cfg, workdir)
print("pretrained weights:", run.provenance["weights_file"] or "NONE (random init: accuracies below "
      "say nothing about fine-tuning)")
print(f"data: {run.provenance['train_images']} training and {run.provenance['test_images']} test images "
      f"({run.provenance['data']})")

# %% [markdown]
# ## Memory cost of every layer
#
# `run.costs` (from `costs.trace`, read off the shapes, nothing computed) gives, for input channel
# `c` of a conv layer, the weights `C^W` and the activations per sample `C^A` that training it
# stores. The budget counts their sum over the selected channels.

# %%
print(run.costs.table())

# %% [markdown]
# ## A TraDy selection
#
# TraDy samples only inside the top-K layers of the offline ranking (those holding 97 % of the
# total reweighted gradient norm), uniformly, until the budget is full. `run.selector` is the
# strategy bound to this run; the draw for epoch 0 is the one the run will train first. A
# selection is a pytree mirroring the parameters: which channels of which kernels are trained.

# %%
first = run.selector.select(run.sampler_key, 0, run.params0, run.selector.init_state())
counts = selection.counts(first)
use = strategies.selection_summary(first, run.costs)
print(f"{sum(counts.values())} channels in {len(counts)} of {len(run.selector.layers)} candidate "
      f"layers: {use['units']:,} of {cfg.budget:,} units; weight sparsity "
      f"{use['weight_sparsity']:.1%}, activation sparsity {use['activation_sparsity']:.1%}, "
      f"weight-gradient FLOPs saved {use['flops_saved']:.1%}")

# %%
convs = run.costs.convs
x = np.arange(len(convs))
w_units = np.array([l.weight * l.in_channels for l in convs])
a_units = np.array([l.activation * l.in_channels for l in convs])
n_in = np.array([l.in_channels for l in convs])
chosen = np.array([counts.get(l.path, 0) for l in convs])
candidates = [i for i, l in enumerate(convs) if l.path in run.selector.layers]

fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
ax0.bar(x, w_units, color="tab:blue", label="weights (C^W x C_in)")
ax0.bar(x, a_units, bottom=w_units, color="tab:orange", label="activations (C^A x C_in)")
ax0.axhline(cfg.budget, color="k", ls="--", lw=1, label=f"budget {cfg.budget:,}")
ax0.set_yscale("log")
ax0.set_ylabel("units to train the layer")
ax0.set_title(f"{ARCH} at {IMAGE_SIZE}x{IMAGE_SIZE}: memory of training each layer in full")
ax1.bar(x, n_in, color="lightgrey", label="input channels")
ax1.bar(x, chosen, color="tab:green", label="selected")
ax1.set_yscale("log")
ax1.set_ylabel("channels")
ax1.set_xlabel("conv layer (forward order); shaded: TraDy's candidate layers")
ax1.set_title(f"the epoch-0 draw: {chosen.sum()} channels, {use['units']:,} units")
for ax in (ax0, ax1):
  for i in candidates:
    ax.axvspan(i - 0.5, i + 0.5, color="tab:green", alpha=0.08, lw=0)
  ax.legend(loc="upper left", ncol=3, fontsize=8)
ax0.set_ylim(0.5 * w_units.min(), 30 * (w_units + a_units).max())
ax1.set_ylim(0.7, 30 * n_in.max())
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Fine-tuning: TraDy and full fine-tuning
#
# `Run.run` trains to the end: a new selection every epoch, SGD restricted to it
# (`sparse_update`), the test split evaluated after each epoch, a checkpoint per epoch in the
# run's folder. A selection's index arrays are padded to per-layer capacities, so the step
# compiles again only when a draw outgrows them (`compilations` in the records; a few at most). `on_epoch_end` receives each epoch's record. The same config with
# `strategy="baseline"` is full fine-tuning. With `measure_memory=True` each run records the XLA
# temp memory of its compiled train step (`step_temp_bytes`).

# %%
history = {}


def keep(name):
  """An ``on_epoch_end`` callback storing each epoch's record under ``name``."""
  return lambda epoch, record: history.setdefault(name, []).append(record)


final = {"TraDy": run.run(on_epoch_end=keep("TraDy"))}
full = experiment.build_run(config.override(cfg, strategy="baseline"),
                            tempfile.mkdtemp(prefix="trady-quickstart-full-"))
final["full fine-tuning"] = full.run(on_epoch_end=keep("full fine-tuning"))
for name, rec in final.items():
  print(f"{name:>16}: test accuracy {rec['test_accuracy']:.1%}, {rec['units']:,} units, "
        f"step compiled {rec['compilations']} time(s), XLA temp memory "
        f"{rec['step_temp_bytes'] / 2**20:.1f} MiB")

# %% [markdown]
# ## What the savings look like
#
# XLA's temp memory is the scratch space of the compiled train step beyond its arguments and
# outputs: mostly what autodiff keeps for the backward pass. The selective layers store only the
# selected channels' activations, and the frozen layers below the shallowest selected one run
# without a backward pass. BatchNorm in training mode (the papers' protocol) keeps its inputs for
# its backward pass either way: the run records them as `bn_bytes`, the dashed line.

# %%
colors = {"TraDy": "tab:green", "full fine-tuning": "tab:red"}
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6))
mib = [final[n]["step_temp_bytes"] / 2**20 for n in colors]
bars = ax0.bar(list(colors), mib, color=list(colors.values()))
ax0.bar_label(bars, fmt="%.0f MiB")
ax0.set_ylim(0, 1.35 * max(mib))
ax0.axhline(final["TraDy"]["bn_bytes"] / 2**20, color="k", ls="--", lw=1,
            label="BatchNorm's stored inputs (bn_bytes)")
ax0.legend(loc="upper left", fontsize=8)
ax0.set_ylabel("XLA temp memory of a train step (MiB)")
ax0.set_title(f"batch {BATCH} at {IMAGE_SIZE}x{IMAGE_SIZE}: {mib[1] / mib[0]:.1f}x less")
for name, color in colors.items():
  epochs = [r["epoch"] for r in history[name]]
  ax1.plot(epochs, [r["test_accuracy"] for r in history[name]], "o-", color=color, label=name)
ax1.set_xlabel("epoch")
ax1.set_xticks(epochs)
ax1.set_ylabel("test accuracy")
ax1.yaxis.set_major_formatter(PercentFormatter(1.0))
ax1.set_title(f"{run.provenance['train_images']} training images")
ax1.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Next
#
# * `experiments/train.py --strategy medyate` (or any name in `trady_jax.strategies.REGISTRY`)
#   runs the papers' protocol from the command line; `trady_jax.experiment.run(cfg)` does the same
#   from Python and writes the run's `final.json`.
# * `strategies_explorer.ipynb` compares the strategies side by side.
