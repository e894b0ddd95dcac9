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
# # trady-jax quickstart: fine-tune a network under a memory budget
#
# This notebook shows the whole TraDy loop on a small MobileNetV2 (`mbv2-w0.35`). It reads the
# per-layer memory cost of training each input channel, draws a random channel selection inside a
# budget of 27,946 units (TraDy's smallest budget for this network, about 2 % of what full
# fine-tuning stores), trains a few steps with `sparse_update` and a new selection every epoch, and
# asks XLA how much scratch memory the compiled selective step needs next to full fine-tuning. It
# runs on a CPU in a few minutes and downloads nothing except the package itself on Colab.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/trady-jax/trady-jax/blob/main/notebooks/quickstart.ipynb)

# %%
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
  # %pip install -q "trady-jax @ git+https://github.com/trady-jax/trady-jax"
  print("trady-jax installed")

# %% [markdown]
# ## Configuration
#
# `TRADY_NOTEBOOK_SMALL=1` (set by the test suite) shrinks the images, the batch and the number of
# steps so that the notebook runs in well under a minute.

# %%
import json
import os
import warnings

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import trady_jax
from trady_jax import (costs, data, models, paper, ranking, rankings, samplers, selection, steps,
                       xla)
from trady_jax.models.tiny import TinyCNN

SMALL = os.environ.get("TRADY_NOTEBOOK_SMALL") == "1"
IMAGE_SIZE = 64 if SMALL else 128
BATCH = 8 if SMALL else 32
EPOCHS = 3 if SMALL else 5
STEPS_PER_EPOCH = 4 if SMALL else 10
NUM_CLASSES = 10
LEARNING_RATE = 0.05
# TraDy's smallest mbv2-w0.35 budget (units at 128x128), and the same share of the network memory
# for other models or image sizes.
PAPER_BUDGET, PAPER_TOTAL = paper.BUDGETS["mbv2-w0.35"][0], paper.BASELINE_UNITS["mbv2-w0.35"]
print(f"SMALL={SMALL}: {IMAGE_SIZE}x{IMAGE_SIZE} images, batch {BATCH}, "
      f"{EPOCHS} epochs x {STEPS_PER_EPOCH} steps")

# %% [markdown]
# ## The model
#
# `models.load_model` looks for the pretrained weights in `$TRADY_JAX_WEIGHTS`, in the shared
# folder's `weights/` (`../shared/weights`) and in the cache, and never downloads unless asked
# (`download=True`). Without weights the notebook falls back to the small `TinyCNN`, randomly
# initialised.

# %%
try:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the int8 weights lack the final feature-mix conv
    model, params = models.load_model("mbv2-w0.35", NUM_CLASSES,
                                      weights_dir=os.environ.get("TRADY_JAX_WEIGHTS") or None)
  MODEL_NAME = "mbv2-w0.35"
  print("pretrained mbv2-w0.35 from", models.find_weights("mbv2-w0.35").files[-1].parent,
        "(built without the feature-mix conv the int8 weights lack; fresh classifier)")
except FileNotFoundError as err:
  print(f"no pretrained weights found ({str(err).splitlines()[0][:120]}...)")
  print("using TinyCNN with random weights instead")
  MODEL_NAME = "tiny"
  model = TinyCNN(num_classes=NUM_CLASSES, width=16, expand=6)
  params = model.init(jax.random.key(0), jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)))["params"]

# %% [markdown]
# ## Memory cost of every layer
#
# `costs.trace` reads the shapes off the model (nothing is computed). For input channel `c` of a
# conv layer, training it stores its weight slice `C^W_c` and its input activation `C^A_c`
# (per sample); the budget counts the sum of both over the selected channels.

# %%
net = costs.trace(model, (1, IMAGE_SIZE, IMAGE_SIZE, 3))
print(net.table())

# %% [markdown]
# ## Candidate layers and budget
#
# TraDy samples only inside the top-K layers of an offline ranking (layers holding 97 % of the
# total reweighted gradient norm). The package ships rankings in `trady_jax/rankings/`; without
# one, the deeper half of the network is used, where the rankings put most of the gradient norm.

# %%
rank_file = rankings.default_path(MODEL_NAME)
if rank_file.exists():
  doc = ranking.load(rank_file, net)
  pool = ranking.top_k_share(doc["layer_rgn"], 0.97)
  print(f"shipped ranking {rank_file.name}: top {len(pool)} of {len(net.convs)} layers")
else:
  pool = [l.path for l in net.convs[len(net.convs) // 2:]]
  print(f"no shipped ranking for {MODEL_NAME}: using the deeper half, "
        f"{len(pool)} of {len(net.convs)} conv layers")

total = net.totals()["total"]
if MODEL_NAME == "mbv2-w0.35" and IMAGE_SIZE == 128:
  budget = PAPER_BUDGET
else:
  budget = round(PAPER_BUDGET / PAPER_TOTAL * total)
pool_memory = sum(net[p].layer_memory for p in pool)
print(f"budget {budget:,} units = {budget / total:.1%} of the network's {total:,}; "
      f"{budget / pool_memory:.1%} of the candidate layers' {pool_memory:,}")

# %% [markdown]
# ## A TraDy draw
#
# `samplers.uniform` gives every candidate channel the same chance and fixes how many channels each
# layer gets, so every draw has the same shapes and the train step compiles once. A draw is a
# selection pytree that mirrors the parameters: `FROZEN`, `ALL` (the classifier) or `Channels`.

# %%
sampler = samplers.uniform(params, net, budget, pool)
sample = jax.jit(sampler.sample)
key = jax.random.key(0)
sel = sample(jax.random.fold_in(key, 0))
counts = selection.counts(sel)
use = net.usage(counts)
print(f"{sum(counts.values())} channels in {len(counts)} layers, {use['units']:,} of {budget:,} "
      f"units; weight sparsity {use['weight_sparsity']:.1%}, "
      f"activation sparsity {use['activation_sparsity']:.1%}, dW FLOPs saved {use['flops_saved']:.1%}")

# %%
convs = net.convs
x = np.arange(len(convs))
w_units = np.array([l.weight * l.in_channels for l in convs])
a_units = np.array([l.activation * l.in_channels for l in convs])
in_pool = np.array([l.path in pool for l in convs])
chosen = np.array([counts.get(l.path, 0) for l in convs])
n_in = np.array([l.in_channels for l in convs])

fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(12, 6.5), sharex=True)
ax0.bar(x, w_units, color="tab:blue", label="weights  (C^W x C_in)")
ax0.bar(x, a_units, bottom=w_units, color="tab:orange", label="activations  (C^A x C_in)")
ax0.set_yscale("log")
ax0.set_ylabel("units to train the whole layer")
ax0.set_title(f"{MODEL_NAME} at {IMAGE_SIZE}x{IMAGE_SIZE}: where the memory of full fine-tuning goes")
ax1.bar(x, n_in, color="lightgrey", label="input channels")
ax1.bar(x, chosen, color="tab:green", label="selected in this draw")
ax1.set_yscale("log")
ax1.set_ylabel("channels")
ax1.set_xlabel("conv layer (forward order)")
ax1.set_title(f"one TraDy draw: {chosen.sum()} channels, {use['units']:,} / {budget:,} units")
for ax in (ax0, ax1):
  for i in np.flatnonzero(in_pool):
    ax.axvspan(i - 0.5, i + 0.5, color="tab:green", alpha=0.07, lw=0)
  ax.legend(loc="upper left", ncol=2, fontsize=8)
ax0.set_ylim(0.5 * w_units.min(), 8 * (w_units + a_units).max())
ax1.set_ylim(0.7, 8 * n_in.max())
ax1.text(0.99, 0.95, "shaded: candidate layers", transform=ax1.transAxes, ha="right", va="top",
         fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Train a few steps
#
# `sparse_update()` restricts the optimizer's updates to the selection, which travels to every
# step as an extra argument. The step is jitted once; a new selection is drawn every epoch from
# `jax.random.fold_in(key, epoch)`, with the same per-layer counts, so it never recompiles. The data
# are generated images (class-dependent colour patterns) so that nothing is downloaded; see
# `trady_jax.data.open_dataset` for CIFAR-10 and the papers' other datasets.

# %%
train = data.open_dataset("synthetic", "train", num_examples=BATCH * STEPS_PER_EPOCH,
                          num_classes=NUM_CLASSES, image_size=IMAGE_SIZE)
tx = optax.chain(trady_jax.sparse_update(), optax.sgd(LEARNING_RATE))
train_step = steps.make_train_step(model, tx)
traces = []


def counted_step(*args):
  traces.append(1)  # runs only when jax traces (and compiles) the step
  return train_step(*args)


step = jax.jit(counted_step)
opt_state = tx.init(params)
losses = []
for epoch in range(EPOCHS):
  sel = sample(jax.random.fold_in(key, epoch))
  for batch in data.batches(train, BATCH, train=True, seed=0, epoch=epoch, image_size=IMAGE_SIZE):
    params, opt_state, metrics = step(params, opt_state, sel, batch)
    losses.append(float(metrics["loss"]))
  print(f"epoch {epoch}: loss {np.mean(losses[-STEPS_PER_EPOCH:]):.3f}")
print(f"train step compiled {len(traces)} time(s) for {len(losses)} steps")
assert len(traces) == 1

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(np.arange(1, len(losses) + 1), losses, marker=".")
for e in range(1, EPOCHS):
  ax.axvline(e * STEPS_PER_EPOCH + 0.5, color="grey", ls=":", lw=1)
ax.set_xlabel("step (dotted: new selection)")
ax.set_ylabel("training loss")
ax.set_title(f"{MODEL_NAME}, TraDy, budget {budget:,} units")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## What XLA needs: full fine-tuning vs the selective step
#
# `xla.compiled_stats` compiles a step and reads XLA's memory analysis. The temp memory is the
# scratch space beyond the arguments and outputs, mostly what autodiff keeps for the backward
# pass; the selective layers store only the selected channels' activations, and the frozen layers
# below the shallowest selected one (which need no backward pass) run a few examples at a time.

# %%
full_tx = optax.sgd(LEARNING_RATE)
full = xla.compiled_stats(steps.make_train_step(model, full_tx), params, full_tx.init(params),
                          None, batch)
selective = xla.compiled_stats(train_step, params, opt_state, sel, batch)
ratio = full["temp_bytes"] / selective["temp_bytes"]
MEMORY = {"model": MODEL_NAME, "image_size": IMAGE_SIZE, "batch": BATCH,
          "full_temp_bytes": full["temp_bytes"], "selective_temp_bytes": selective["temp_bytes"]}
print("MEMORY_RESULT " + json.dumps(MEMORY))
assert selective["temp_bytes"] < full["temp_bytes"]

# %%
mib = np.array([full["temp_bytes"], selective["temp_bytes"]]) / 2**20
fig, ax = plt.subplots(figsize=(5, 3.5))
bars = ax.bar(["full fine-tuning", f"TraDy ({budget:,} units)"], mib,
              color=["tab:red", "tab:green"])
ax.bar_label(bars, fmt="%.1f MiB")
ax.set_ylabel("XLA temp memory of one train step (MiB)")
ax.margins(y=0.15)
ax.set_title(f"batch {BATCH} at {IMAGE_SIZE}x{IMAGE_SIZE}: full / selective = {ratio:.1f}x")
fig.tight_layout()
plt.show()
