"""The fine-tuning loop: the only stateful code (data, checkpoints, logging, progress).

Every epoch ``e`` the strategy draws its selection from ``fold_in(sampler_key, e)`` (and its own
state), the jitted train step runs over the epoch's batches, the test split is evaluated, one JSON
line of metrics is appended to ``workdir/metrics.jsonl`` and an orbax checkpoint is written. A run
killed at any point restarts from its last finished epoch and reaches the same final parameters.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from trady_jax import (atomic, batchnorm, checkpoint, divergence, optim, parallel, ranking,
                       rankings, step_metrics, steps, strategies, velocity, workdir, xla)
from trady_jax import oracle as oracle_lib
from trady_jax import selection as sel
from trady_jax import selector as selector_lib
from trady_jax.config import Config, ConfigError
from trady_jax.costs import trace
from trady_jax.models.registry import example_input
from trady_jax.report import records
from trady_jax.sparse_update import sparse_update

# Re-exported: the error a run raises when it diverges (``trady_jax.divergence``).
DivergedError = divergence.DivergedError

PyTree = Any


class Run:
  """One fine-tuning run: model, data, strategy and their bookkeeping."""

  def __init__(self, cfg: Config, workdir: str | Path, *, model, params: PyTree, train_source,
               test_source, batches: Callable, layer_ranking: rankings.Ranking | None = None,
               scheme_counts: Mapping[str, int] | None = None,
               batch_stats: PyTree | None = None, scheme_biases: Sequence[str] = (),
               optimizer: optim.Optimizer = optim.sgd, loss_fn: Callable = steps.cross_entropy,
               provenance: Mapping[str, Any] | None = None):
    """``optimizer(schedule)``: the optax optimiser (the papers' SGD by default; a selective run
    wraps it in ``sparse_update`` with the strategy's pool). ``loss_fn(logits, labels)``: the
    batch-mean loss of training and evaluation. ``provenance``: what the run was built from
    (weights, data, BN mode...), added to its final record."""
    self.cfg, self.workdir = cfg, Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.model, self.params0 = model, params
    # BN running statistics (None: BN folded); carried through steps, checkpoints, evaluation.
    self.batch_stats0 = self.batch_stats = batch_stats
    self.strategy = strategies.get(cfg.strategy)
    neq_source = None
    if self.strategy.selects_outputs:  # NEq's images, out of the training split
      train_source, neq_source = velocity.held_out(train_source, seed=cfg.seed)
    self.train_source, self.test_source, self.batches = train_source, test_source, batches
    self.costs = trace(model, example_input(cfg.arch, cfg.image_size))
    root = jax.random.key(cfg.seed)
    self.sampler_key = jax.random.fold_in(root, 1)
    n = len(train_source) // cfg.batch_size
    if n == 0:
      raise ConfigError(f"{len(train_source)} training images do not make one batch of "
                        f"{cfg.batch_size}")
    self.steps_per_epoch = min(n, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else n
    schedule = optim.learning_rate(cfg, self.steps_per_epoch)
    self.schedule = schedule
    oracle = None
    if self.strategy.needs_oracle:
      oracle = oracle_lib.full_gradient_norms(model, self.costs, lambda: self._oracle_batches(),
                       lambda: self.batch_stats)
    self.selector = selector_lib.Selector(
        self.strategy, params, self.costs, cfg.budget, layer_ranking=layer_ranking,
        scheme_counts=scheme_counts, share=cfg.topk_share, alpha=cfg.alpha,
        allocation=cfg.allocation, oracle=oracle, scheme_biases=scheme_biases,
        neq=None if neq_source is None else velocity.from_source(
            model, self.costs, neq_source, batches, params, batch_stats, seed=cfg.seed))
    # What it trains on (Velocity holds NEq's images out of the training split: its own count).
    self.provenance = {**(provenance or {}), "train_images": len(self.train_source)}
    self.tx = (optimizer(schedule) if self.strategy.is_full else
               sparse_update(optimizer(schedule), pool=self.selector.pool))
    track = self.strategy.tracks_norms
    train_step = steps.make_train_step(model, self.tx, costs=self.costs, loss_fn=loss_fn,
                                       norm_paths=self.selector.layers if track else (),
                                       norm_grads=cfg.medyate_norm == "epoch",
                                       prefix_chunks=cfg.prefix_chunks)
    train_step = self._traced_step = xla.count_traces(train_step)  # one trace per compilation
    # Data parallel over all devices when there are several (batch sharded, rest replicated).
    self.mesh = parallel.mesh() if jax.device_count() > 1 else None
    eval_step = steps.make_eval_step(model, loss_fn=loss_fn, chunks=cfg.prefix_chunks)
    stats = batch_stats is not None
    if self.mesh is None:
      self.train_step = jax.jit(train_step, donate_argnums=(0, 1))
      self.eval_step = jax.jit(eval_step)
    else:
      parallel.check_batch(cfg.batch_size, self.mesh)
      self.train_step = parallel.jit_train_step(train_step, self.mesh, batch_stats=stats,
                                                donate_argnums=(0, 1))
      self.eval_step = parallel.jit_eval_step(eval_step, self.mesh, batch_stats=stats)
    # What BN's backward keeps per step, beyond the budget (``batchnorm.stored_bytes``).
    self.bn_bytes = batchnorm.stored_bytes(self.costs, cfg.bn, cfg.batch_size) if stats else 0
    self.step_memory = {}  # Config.measure_memory: the compiled step's XLA figures
    self._epoch = 0
    self._events = None  # step_metrics.EventWriter while a run trains

  def _place(self, tree):
    """Replicate params / state / selection over the mesh (no-op on one device)."""
    return tree if self.mesh is None or tree is None else parallel.replicate(tree, self.mesh)

  def _to_device(self, b):
    """One loader batch on the device, or split over the mesh (each host keeps its own rows)."""
    if self.mesh is None:
      return jax.device_put(b)
    if jax.process_count() > 1:
      n, i = jax.process_count(), jax.process_index()
      b = {k: v[i * len(v) // n:(i + 1) * len(v) // n] for k, v in b.items()}
    return parallel.shard_batch(b, self.mesh)

  def _device_batches(self, *args, **kwargs):
    """The loader's batches, transferred two ahead of the step that consumes them."""
    return step_metrics.prefetch(self.batches(*args, **kwargs), self._to_device)

  def _oracle_batches(self):
    it = self.batches(self.train_source, self.cfg.batch_size, train=True, seed=self.cfg.seed + 7,
                      epoch=self._epoch)
    return (b for _, b in zip(range(self.cfg.oracle_batches or self.steps_per_epoch), it))

  def _stats_args(self) -> tuple:
    return () if self.batch_stats is None else (self.batch_stats,)

  def evaluate(self, params: PyTree) -> dict[str, float]:
    totals = {"correct": 0, "count": 0, "loss_sum": 0.0}
    for b in self._device_batches(self.test_source, self.cfg.batch_size, train=False,
                                  seed=self.cfg.seed, epoch=0):
      out = jax.device_get(self.eval_step(params, b, *self._stats_args()))
      totals = {k: totals[k] + out[k] for k in totals}
    return {"test_accuracy": float(totals["correct"] / max(totals["count"], 1)),
            "test_loss": float(totals["loss_sum"] / max(totals["count"], 1))}

  def _state(self, params, opt_state, sampler_state):
    state = {"params": params, "opt_state": opt_state, "sampler_state": sampler_state,
             "key": jax.random.key_data(self.sampler_key)}
    if self.batch_stats is not None:
      state["batch_stats"] = self.batch_stats
    return state

  def run(self, on_epoch_end: Callable[[int, dict], None] | None = None) -> dict:
    """Train to the end (resuming if a checkpoint exists); return the final metrics.

    The workdir is locked meanwhile (``workdir.WorkdirBusy`` when another process trains there).
    A non-finite loss or parameter stops the run with ``divergence.DivergedError`` and ``records.DIVERGED``;
    ``self.epochs_trained`` is 0 when the run had finished before.
    """
    with workdir.locked(self.workdir):
      try:
        return {**self._run(on_epoch_end), **self.provenance}
      except divergence.DivergedError as e:
        atomic.write_json_atomic(self.workdir / records.DIVERGED, {**e.record, "message": str(e)})
        raise

  def _run(self, on_epoch_end) -> dict:
    cfg = self.cfg
    if (self.workdir / records.DIVERGED).exists():
      raise workdir.WorkdirError(f"{self.workdir} holds a run that diverged (see "
                                 f"{self.workdir / records.DIVERGED}); use another workdir, or "
                                 "delete that file to try again")
    ckpt = checkpoint.RunCheckpoints(self.workdir, cfg.to_json())
    params, self.batch_stats = self.params0, self.batch_stats0
    opt_state = self.tx.init(params)
    sampler_state = self.selector.init_state()
    selection = None
    start = 0
    metrics_path = self.workdir / "metrics.jsonl"
    restored = ckpt.restore(self._state(params, opt_state, sampler_state))
    if restored is not None:
      start, state, meta = restored
      params, opt_state = state["params"], state["opt_state"]
      sampler_state = state["sampler_state"]
      self.batch_stats = state.get("batch_stats")
      if meta.get("selection"):
        selection = self.selector.restore(
            meta.get("capacity"),
            {p: np.asarray(i, np.int32) for p, i in meta["selection"].items()})
      workdir.truncate_metrics(metrics_path, start)
      print(f"resuming {self.workdir} after epoch {start}")
    else:
      workdir.check_nothing_to_lose(self.workdir)
      metrics_path.unlink(missing_ok=True)
    params, opt_state = self._place(params), self._place(opt_state)
    self.batch_stats = self._place(self.batch_stats)
    total_epochs = cfg.total_epochs()
    # A finished run restored from its last checkpoint reports that checkpoint's metrics.
    record: dict = dict(restored[2].get("metrics", {})) if restored is not None else {}
    t_run, wall0 = time.time(), record.get("wall_s", 0.0)
    self.epochs_trained = max(total_epochs - start, 0)
    # TensorBoard event files beside metrics.jsonl when tensorboardX is installed.
    if self.epochs_trained:
      self._events = step_metrics.EventWriter(self.workdir / "events")
    for epoch in range(start, total_epochs):
      self._epoch = epoch
      sampler_state = self.selector.measure(sampler_state, params, self.batch_stats)  # Velocity
      if epoch == 0 or self.strategy.dynamic:
        selection = self.selector.select(self.sampler_key, epoch, params, sampler_state)
      usage = strategies.selection_summary(selection, self.costs)
      if self.selector.capacity is not None:
        usage["padding_units"] = self.selector.sampler.padding_units(sel.counts(selection))
      params, opt_state, train_metrics, norms = self._train_epoch(
          epoch, params, opt_state, selection, usage)
      sampler_state = self.selector.observe(sampler_state, norms, selection)
      record = {"epoch": epoch + 1, **train_metrics, **usage,
                "lr": float(self.schedule((epoch + 1) * self.steps_per_epoch - 1)),
                "compilations": self.compilations, "wall_s": wall0 + time.time() - t_run,
                "bn_bytes": self.bn_bytes, **self.step_memory}
      if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == total_epochs:
        record.update(self.evaluate(params))
      divergence.check_finite(epoch + 1, record, params)
      ckpt.save(epoch + 1, self._state(params, opt_state, sampler_state),
                {"metrics": record, "capacity": self.selector.capacity,
                 "selection": {p: i.tolist()
                               for p, i in sel.as_numpy(selection, sort=False).items()}})
      with metrics_path.open("a") as f:
        f.write(json.dumps(record) + "\n")
      self._events.scalars(epoch + 1, record, prefix="epoch/")
      if on_epoch_end is not None:
        on_epoch_end(epoch + 1, record)
    ckpt.close()
    if self._events is not None:
      self._events.close()
    self.params = params
    if not self.epochs_trained:  # finished before: its record as it was
      return record
    return {**record, "wall_s": wall0 + time.time() - t_run, "compilations": self.compilations}

  @property
  def compilations(self) -> int:
    """Compiled versions of the train step so far (one per distinct selection shape)."""
    return self._traced_step.traces

  def _train_epoch(self, epoch, params, opt_state, selection, usage):
    cfg = self.cfg
    it = self._device_batches(self.train_source, cfg.batch_size, train=True, seed=cfg.seed,
                              epoch=epoch)
    selection = self._place(selection)
    bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.total_epochs()}",
               disable=not cfg.progress, leave=False, dynamic_ncols=True)
    meter = step_metrics.DeviceMeter(("loss", "accuracy"))
    norms = grads = None
    t0, n = time.time(), 0
    for _, batch in zip(range(self.steps_per_epoch), it):
      if cfg.measure_memory and not self.step_memory:  # what XLA's compiled step needs
        stats = xla.compiled_stats(self.train_step, params, opt_state, selection, batch,
                                   *self._stats_args())
        self.step_memory = {"step_temp_bytes": stats["temp_bytes"],
                            "step_flops": stats["flops"], "backend": jax.default_backend()}
      params, opt_state, m = self.train_step(params, opt_state, selection, batch,
                                             *self._stats_args())
      if "batch_stats" in m:
        self.batch_stats = m.pop("batch_stats")
      if "channel_norms" in m:  # MeDyate's statistic (Config.medyate_norm): 'last' or 'sum'
        cn = m.pop("channel_norms")
        last = norms is None or cfg.medyate_norm == "last"
        norms = cn if last else jax.tree.map(jnp.add, norms, cn)
      if "kernel_grads" in m:  # 'epoch': the gradient summed over the epoch, normed below
        kg = m.pop("kernel_grads")
        grads = kg if grads is None else jax.tree.map(jnp.add, grads, kg)
      n += 1
      meter.add(m, n)  # stays on the device: the loop goes on dispatching
      if n % cfg.log_every == 0:
        self._report(epoch, meter, bar, t0, usage)
    if grads is not None:
      norms = {p: ranking.channel_norm(g, self.costs[p]) for p, g in grads.items()}
    sums = self._report(epoch, meter, bar, t0, usage)  # waits for the last step
    bar.close()
    dt = time.time() - t0
    return params, opt_state, {"train_loss": sums["loss"] / max(n, 1),
                               "train_accuracy": sums["accuracy"] / max(n, 1),
                               "images_per_s": n * cfg.batch_size / max(dt, 1e-9),
                               "epoch_s": dt}, norms or {}

  def _report(self, epoch, meter, bar, t0, usage) -> dict:
    """Read the step metrics back (the one host sync), stop a diverged run, update the bar."""
    r = meter.read()
    if r["first_nonfinite_step"]:
      raise divergence.DivergedError(epoch + 1, r["first_nonfinite_step"], f"loss {r['loss']}")
    n = max(r["steps"], 1)
    if bar is not None:
      bar.set_postfix(loss=f"{r['loss'] / n:.3f}", acc=f"{r['accuracy'] / n:.3f}",
                      img_s=f"{n * self.cfg.batch_size / (time.time() - t0):.0f}",
                      budget=f"{usage['units']:,.0f}")
      bar.update(r["steps"] - bar.n)
    if self._events is not None:
      self._events.scalars(epoch * self.steps_per_epoch + r["steps"],
                           {"loss": r["loss"] / n, "accuracy": r["accuracy"] / n}, prefix="train/")
    return r


