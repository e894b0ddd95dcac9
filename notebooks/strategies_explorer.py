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
# # Channel-sampling strategies, side by side
#
# TraDy and MeDyate differ mainly in how they draw the channels to train inside a memory budget.
# This notebook compares the package's samplers on one set of candidate layers of `mbv2-w0.35`:
# how fully each draw uses the budget, how the channels are spread over the layers, and how fast
# repeated draws explore the search space, next to MeDyate's exploration bound
# `u_e = (1 - alpha)^e` (MeDyate section 3.5). MeDyate's importance signal is simulated, so no
# training, no weights and no data are needed; it runs in seconds on a CPU.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/trady-jax/trady-jax/blob/main/notebooks/strategies_explorer.ipynb)

# %%
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
  # %pip install -q "trady-jax @ git+https://github.com/trady-jax/trady-jax"
  print("trady-jax installed")

# %% [markdown]
# ## Configuration
#
# `TRADY_NOTEBOOK_SMALL=1` (set by the test suite) uses fewer draws, epochs and seeds.

# %%
import os

import jax
import matplotlib.pyplot as plt
import numpy as np

from trady_jax import costs, models, paper, ranking, rankings, samplers, selection

SMALL = os.environ.get("TRADY_NOTEBOOK_SMALL") == "1"
DRAWS = 100 if SMALL else 500
EPOCHS = 10 if SMALL else 20
SEEDS = 2 if SMALL else 5
BUDGET = paper.BUDGETS["mbv2-w0.35"][0]  # units: TraDy's smallest mbv2-w0.35 budget, about 2.2 %
ALPHA_OPT = paper.ALPHA_OPT  # MeDyate's target budget / search-space ratio

# %% [markdown]
# ## Layer set
#
# Only the shapes matter here, so the architecture is built without pretrained weights. The
# candidate layers follow MeDyate's rule (Eq. 10): the smallest top-K prefix of a layer ranking
# whose memory `M_K` makes `alpha_K = B_mem / M_K <= 0.2`. The ranking is the shipped LaRa ranking
# when the package has one, otherwise the layers are taken deepest first.

# %%
model, params = models.load_model("mbv2-w0.35", 10, pretrained=False)
net = costs.trace(model, (1, 128, 128, 3))
rank_file = rankings.default_path("mbv2-w0.35")
if rank_file.exists():
  scores = ranking.load(rank_file, net)["lara"]
  print(f"layer order: shipped LaRa ranking ({rank_file.name})")
else:
  scores = {l.path: float(l.index + 1) for l in net.convs}
  print("no shipped ranking for mbv2-w0.35: layers ordered deepest first")
pool = sorted(ranking.top_k_alpha(scores, net, BUDGET, ALPHA_OPT), key=lambda p: net[p].index)
layers = [net[p] for p in pool]
pool_memory = sum(l.layer_memory for l in layers)
alpha = BUDGET / pool_memory
print(f"{len(pool)} candidate layers, {sum(l.in_channels for l in layers)} channels, "
      f"{pool_memory:,} units; alpha = {BUDGET:,} / {pool_memory:,} = {alpha:.3f}")
for l in layers:
  print(f"  {l.path.removesuffix('/kernel'):<22} {l.kind:<9} C_in {l.in_channels:>4}  "
        f"{l.memory:>4} units/channel")

# %% [markdown]
# ## A simulated importance signal
#
# Each channel gets a fixed "true importance" (a per-layer scale times a log-normal spread). A
# measured gradient norm is the true importance times log-normal noise, shrinking over epochs as
# gradients do during fine-tuning. MeDyate stores the measured norms of the channels it trained
# (`samplers.medyate_update`); after epoch 1 the channels it has not seen yet get the largest norm
# observed, so they are explored first.

# %%
rng = np.random.default_rng(0)
layer_scale = rng.lognormal(0.0, 0.5, len(layers))
true_importance = np.concatenate([s * rng.lognormal(0.0, 1.0, l.in_channels)
                                  for s, l in zip(layer_scale, layers)])
channel_memory = np.concatenate([np.full(l.in_channels, l.memory) for l in layers])


def measure(epoch, rng):
  """Gradient norms measured after an epoch: true importance, noise, and a slow decay."""
  noise = rng.lognormal(0.0, 0.3, true_importance.shape)
  return true_importance * noise * 0.9 ** epoch

# %% [markdown]
# ## The samplers
#
# * **uniform, fixed counts** (`allocation="fixed"`): every channel has the same inclusion
#   probability and every draw has the same per-layer counts, so a jitted step compiles once;
# * **uniform, fill rule** (the papers' rule, the package default): channels in random order,
#   added while the running total fits in the budget;
# * **MeDyate weighted**: sampling without replacement proportional to the stored norms, with the
#   fill rule, here with MeDyate's state after a few epochs;
# * **deterministic**: highest weight first, here the reweighted importance (importance per unit
#   of memory, as Det RGN); every draw is the same.

# %%
def selected(sampler, sel):
  """Flat boolean vector over the sampler's pool: the channels ``sel`` trains.

  Host-side ``samplers.selected_vector``: the fill-rule selections change shape from draw to draw,
  and numpy avoids compiling a scatter for every new shape.
  """
  idx = selection.as_numpy(sel)
  return np.concatenate([np.isin(np.arange(l.in_channels), idx.get(l.path, ()))
                         for l in sampler.layers])


uniform_fixed = samplers.uniform(params, net, BUDGET, pool, allocation="fixed")
uniform_fill = samplers.uniform(params, net, BUDGET, pool, allocation="exact")
medyate = samplers.weighted(params, net, BUDGET, pool, allocation="exact")
det = samplers.deterministic(params, net, BUDGET, pool)

# MeDyate's state after a few epochs: epoch 1 is uniform (all norms equal), then every epoch
# stores the norms measured on the channels it trained.
state = samplers.medyate_init(medyate)
for e in range(1, 9):
  s = medyate.sample(jax.random.key(100 + e), state["norms"])
  state = samplers.medyate_update(state, measure(e, rng), selected(medyate, s))
print(f"MeDyate state after {int(state['updates'])} epochs: "
      f"{float(state['seen'].mean()):.0%} of the channels measured at least once")

strategies = {
    "uniform, fixed counts": (jax.jit(uniform_fixed.sample), None),
    "uniform, fill rule": (uniform_fill.sample, None),
    "MeDyate weighted": (medyate.sample, state["norms"]),
    "deterministic (RGN)": (det.sample, true_importance / channel_memory),
}
key = jax.random.key(0)
fill, alloc = {}, {}
for name, (sample, weights) in strategies.items():
  draws = 1 if name.startswith("deterministic") else DRAWS
  rows = []
  for i in range(draws):
    c = selection.counts(sample(jax.random.fold_in(key, i), weights))
    rows.append([c.get(p, 0) for p in pool])
  rows = np.array(rows * (DRAWS // draws))
  alloc[name] = rows
  fill[name] = rows @ np.array([l.memory for l in layers]) / BUDGET
  print(f"{name:<22} budget used: mean {fill[name].mean():.2%}, min {fill[name].min():.2%}; "
        f"channels per draw: {rows.sum(1).mean():.1f}")
  assert fill[name].max() <= 1.0

# %%
fig, ax = plt.subplots(figsize=(8, 3.8))
lo = min(f.min() for f in fill.values())
bins = np.linspace(lo - 1e-3, 1.0 + 1e-3, 40)
styles = iter([("-", 4), (":", 2.5)])
for (name, f), color in zip(fill.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
  if np.ptp(f) == 0:  # the same fill every draw: a vertical line
    ls, lw = next(styles)
    ax.axvline(f[0], color=color, ls=ls, lw=lw, label=f"{name}: {f[0]:.2%} every draw")
  else:
    ax.hist(f, bins=bins, histtype="stepfilled", alpha=0.45, color=color, label=name)
ax.set_xlabel("units used / budget")
ax.set_ylabel(f"draws (of {DRAWS})")
ax.set_title(f"budget fill over {DRAWS} draws, budget {BUDGET:,} units")
ax.legend(fontsize=8, loc="upper left")
fig.tight_layout()
plt.show()

# %%
fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(pool) + 3), 4.5))
x = np.arange(len(pool))
width = 0.8 / len(alloc)
for j, (name, rows) in enumerate(alloc.items()):
  ax.bar(x + (j - (len(alloc) - 1) / 2) * width, rows.mean(0), width, yerr=rows.std(0),
         capsize=2, label=name)
short = lambda p: (p.removesuffix("/kernel").replace("blocks_", "b").replace("pointwise", "pw")
                   .replace("depthwise", "dw"))
ax.set_xticks(x, [f"{short(l.path)}\n{l.in_channels} x {l.memory}u" for l in layers], fontsize=7)
ax.set_xlabel("layer: input channels x units per channel")
ax.set_ylabel("channels selected (mean, std over draws)")
ax.set_title("per-layer allocation")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Exploration over epochs
#
# One draw per epoch. The bound assumes each epoch covers a fraction `alpha` of the search space
# independently, so the unexplored fraction after `e` epochs is `u_e = (1 - alpha)^e`. Uniform
# sampling with fixed counts gives every channel probability about `alpha` per epoch and follows
# the bound; MeDyate pushes the unseen channels first and explores faster.

# %%
def explore(seed):
  """Explored fraction (channels, memory) after each epoch, for uniform and MeDyate sampling."""
  rng = np.random.default_rng(seed + 1)
  k = jax.random.key(seed)
  uni_seen = np.zeros(uniform_fixed.num_channels, bool)
  st = samplers.medyate_init(medyate)
  out = {"uniform, fixed counts": [], "MeDyate weighted": []}
  for e in range(1, EPOCHS + 1):
    ke = jax.random.fold_in(k, e)
    s = strategies["uniform, fixed counts"][0](ke)
    uni_seen |= selected(uniform_fixed, s)
    s = medyate.sample(ke, st["norms"])
    st = samplers.medyate_update(st, measure(e, rng), selected(medyate, s))
    for name, seen in (("uniform, fixed counts", uni_seen),
                       ("MeDyate weighted", np.asarray(st["seen"]))):
      out[name].append((seen.mean(), channel_memory[seen].sum() / channel_memory.sum()))
  return {n: np.array(v) for n, v in out.items()}


runs = [explore(s) for s in range(SEEDS)]
epochs = np.arange(0, EPOCHS + 1)
bound = 1 - (1 - alpha) ** epochs
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for j, (ax, what) in enumerate(zip(axes, ("channels", "memory"))):
  ax.plot(epochs, bound, "k--", label=f"bound 1 - (1 - {alpha:.2f})^e")
  for name, color in (("uniform, fixed counts", "tab:blue"), ("MeDyate weighted", "tab:red")):
    v = np.stack([np.concatenate([[0.0], r[name][:, j]]) for r in runs])
    ax.plot(epochs, v.mean(0), color=color, marker=".", label=f"{name} (mean of {SEEDS})")
    ax.fill_between(epochs, v.min(0), v.max(0), color=color, alpha=0.15)
  ax.set_xlabel("epoch")
  ax.set_title(f"fraction of the search space's {what} ever selected")
  ax.grid(alpha=0.3)
axes[0].set_ylabel("explored = 1 - u_e")
axes[0].legend(fontsize=8, loc="lower right")
fig.tight_layout()
plt.show()
for name in ("uniform, fixed counts", "MeDyate weighted"):
  last = np.mean([r[name][-1, 0] for r in runs])
  print(f"{name:<22} channels explored after {EPOCHS} epochs: {last:.1%} "
        f"(bound {bound[-1]:.1%})")
