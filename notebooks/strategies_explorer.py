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
# # Channel-selection strategies, side by side
#
# TraDy and MeDyate differ in where and how they draw the channels to train inside a memory
# budget. This notebook fine-tunes the pretrained `mbv2-w0.35` on a slice of CIFAR-10 with a few
# of the strategies in `trady_jax.strategies.REGISTRY`, each through the library's run loop
# (`trady_jax.experiment.build_run`, `trady_jax.train.Run`), and plots from the runs' own
# selections and records:
#
# * how each strategy spreads the budget over the layers, epoch after epoch;
# * how much of its candidate channels it has trained after `e` epochs, next to MeDyate's
#   exploration bound `1 - (1 - alpha)^e` (MeDyate section 3.5);
# * the test accuracy after each epoch.
#
# A few epochs on a few hundred images show the mechanics, not the papers' accuracies (those need
# the full protocol: `experiments/train.py`, 100 epochs of CIFAR-10).
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/trady-jax/trady-jax/blob/main/notebooks/strategies_explorer.ipynb)

# %%
import sys

if "google.colab" in sys.modules:  # Colab: install the package (a local checkout has it already)
  # %pip install -q "trady-jax @ git+https://github.com/trady-jax/trady-jax"
  pass

# %% [markdown]
# ## Settings

# %% tags=["parameters"]
STRATEGIES = ("d-full-random", "trady", "medyate", "su")  # names in strategies.REGISTRY
ARCH = "mbv2-w0.35"   # the network: 'mbv2-w0.35', 'mcunet-in1' or 'proxyless-w0.3'
IMAGE_SIZE = 128      # input resolution (the papers': 128)
TRAIN_IMAGES = 320    # CIFAR-10 training images (class-balanced); 0 = all 50,000
TEST_IMAGES = 256     # CIFAR-10 test images; 0 = all 10,000
EPOCHS = 4            # epochs per strategy
BATCH = 32            # batch size (the papers': 32)
DOWNLOAD = True       # download weights and CIFAR-10 when no local copy is found

# %%
import logging
import tempfile
import warnings

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.ticker import PercentFormatter

logging.getLogger("absl").setLevel(logging.ERROR)  # tfds' notes while it looks for a copy
warnings.filterwarnings("ignore", message="IProgress not found")  # progress bars are off here
from trady_jax import config, experiment, paper, selection, strategies

for name in STRATEGIES:
  print(f"{name:<14} {strategies.get(name)}")

# %% [markdown]
# ## The runs
#
# One `Config` per strategy, the same data, network, budget and seed. `record_draws` keeps every
# selection a run's selector draws (it observes the run; the run itself is unchanged), and
# `on_epoch_end` every epoch's record (budget used, losses, test accuracy). TraDy and MeDyate
# need a layer ranking of the network: the one shipped with the package is of the int8 weights in
# `../shared`; with downloaded weights `build_run` ranks the network first, once, as in the
# quickstart.

# %%
base = config.Config(arch=ARCH, dataset="cifar10", offline=not DOWNLOAD, image_size=IMAGE_SIZE,
                     train_limit=TRAIN_IMAGES, test_limit=TEST_IMAGES, batch_size=BATCH,
                     epochs=EPOCHS, warmup_epochs=0, budget=paper.BUDGETS[ARCH][0],
                     progress=False)


def record_draws(run, draws):
  """Append ``{kernel path: channel indices}`` of every selection ``run`` draws to ``draws``."""
  select = run.selector.select

  def recorded(*args):
    s = select(*args)
    draws.append(selection.as_numpy(s))
    return s

  run.selector.select = recorded


runs, draws, history = {}, {}, {}
for name in STRATEGIES:
  print(f"--- {name}")
  workdir = tempfile.mkdtemp(prefix=f"trady-{name}-")
  run = experiment.build_run(config.override(base, strategy=name).validate(), workdir)
  runs[name] = run
  record_draws(run, draws.setdefault(name, []))
  records = history.setdefault(name, [])
  run.run(on_epoch_end=lambda epoch, record: records.append(record))
  last = history[name][-1]
  layers = len(run.selector.layers) or "the SU scheme's"
  print(f"{name}: {layers} candidate layers, {last['units']:,} units in the last epoch, test "
        f"accuracy {last['test_accuracy']:.1%}, {last['compilations']} compilation(s)")

# %% [markdown]
# ## Where the budget goes
#
# Each column is an epoch, each row a conv layer (forward order, input side at the top); the
# colour (square-root scale) is the share of the budget that layer's selected channels use
# (`C^W + C^A` per channel).
# D-Full-Random draws anywhere in the network; TraDy only inside the top-K layers of the offline
# RGN ranking; MeDyate inside the LaRa top-K, weighting channels by their stored gradient norms;
# SU trains the same fixed scheme every epoch. A static strategy draws once: its one selection is
# repeated.

# %%
costs = runs[STRATEGIES[0]].costs
convs = costs.convs
budget = base.budget


def shares(name):
  """``(layers, epochs)`` share of the budget each layer's selected channels use."""
  out = np.zeros((len(convs), len(history[name])))
  for e in range(out.shape[1]):
    picked = draws[name][min(e, len(draws[name]) - 1)]
    out[:, e] = [len(picked.get(l.path, ())) * l.memory / budget for l in convs]
  return out


fig, axes = plt.subplots(1, len(STRATEGIES), figsize=(2.6 * len(STRATEGIES) + 1, 5.5),
                         sharey=True, squeeze=False)
vmax = max(shares(n).max() for n in STRATEGIES)
for ax, name in zip(axes[0], STRATEGIES):
  im = ax.imshow(shares(name), aspect="auto", cmap="magma_r", norm=PowerNorm(0.5, 0, vmax),
                 extent=(0.5, len(history[name]) + 0.5, len(convs) - 0.5, -0.5))
  ax.set_title(name, fontsize=10)
  ax.set_xlabel("epoch")
  ax.set_xticks(range(1, len(history[name]) + 1))
axes[0, 0].set_ylabel("conv layer (forward order)")
fig.colorbar(im, ax=axes[0].tolist(), label="share of the budget", shrink=0.8,
             format=PercentFormatter(1.0))
plt.show()

# %% [markdown]
# ## Exploration
#
# The fraction of a strategy's candidate channels trained at least once after `e` epochs. If each
# epoch covered a fraction `alpha = B_mem / M_K` of the candidates' memory independently, the
# unexplored fraction would be `u_e = (1 - alpha)^e`; uniform sampling follows that bound, MeDyate
# pushes the channels it has not measured yet and explores faster.

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.8))
for name, color in zip(STRATEGIES, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
  pool = [costs[p] for p in runs[name].selector.layers]
  if not pool:  # a fixed scheme: nothing to explore
    continue
  seen = {l.path: set() for l in pool}
  explored = [0.0]
  for e in range(len(history[name])):
    for p, idx in draws[name][min(e, len(draws[name]) - 1)].items():
      seen[p].update(idx.tolist())
    explored.append(sum(len(seen[l.path]) * l.memory for l in pool)
                    / sum(l.layer_memory for l in pool))
  alpha = budget / sum(l.layer_memory for l in pool)
  epochs = np.arange(len(explored))
  ax.plot(epochs, explored, "o-", color=color, label=f"{name} (alpha {alpha:.3f})")
  ax.plot(epochs, 1 - (1 - alpha) ** epochs, ":", color=color)
ax.set_xlabel("epoch")
ax.set_xticks(epochs)
ax.set_ylabel("candidates' memory trained at least once")
ax.yaxis.set_major_formatter(PercentFormatter(1.0))
ax.set_title("exploration; dotted: the bound 1 - (1 - alpha)^e")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Accuracy and budget use per strategy

# %%
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6))
for name in STRATEGIES:
  epochs = [r["epoch"] for r in history[name]]
  ax0.plot(epochs, [r["test_accuracy"] for r in history[name]], "o-", label=name)
  ax1.plot(epochs, [r["units"] / budget for r in history[name]], "o-", label=name)
for ax in (ax0, ax1):
  ax.set_xlabel("epoch")
  ax.set_xticks(epochs)
  ax.yaxis.set_major_formatter(PercentFormatter(1.0))
ax0.set_ylabel("test accuracy")
ax0.set_title(f"{runs[STRATEGIES[0]].provenance['train_images']} training images")
ax1.set_ylabel("units used / budget")
ax1.set_title(f"budget {budget:,} units")
ax0.legend(fontsize=8)
fig.tight_layout()
plt.show()
