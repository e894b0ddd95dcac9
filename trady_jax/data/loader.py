"""Deterministic, threaded batch iterator over a random-access source.

The example order of an epoch is a permutation drawn from ``(seed, epoch)``, and the augmentation of
example ``i`` uses its own generator ``(seed, epoch, i)`` (see :mod:`trady_jax.data.transforms`).
Batches therefore depend only on ``(seed, epoch, step)``: not on ``num_workers`` or timing, and a
run resumed at ``start_step`` sees exactly the batches it would have seen.

Decoding and transforms run in a thread pool (PIL releases the GIL in decode/resize/enhance), a few
batches ahead of the consumer. Workers write their rows straight into the batch; with the protocol
transforms the rows are uint8 and the worker that completes a batch normalises it in one numpy
operation (no per-image float arrays, no stacking).

Why threads and not ``grain`` (``experiments/bench_loader.py --grain``, 2-core CPU shared with other
jobs, batch 32, train transforms, 2 workers; images/s, range of the medians of five runs; grain
0.2.18 fed the same uint8 rows and per-batch normalisation):

  ==================  ======================  ====================  ==================
  pipeline            offline CIFAR-10 32 px  500x375 JPEG folder   first batch
  ==================  ======================  ====================  ==================
  this loader         720 - 1220              250 - 480             0.04 - 0.15 s
  grain, threads      650 - 1280              210 - 750             0.05 - 0.25 s
  grain, processes    605 - 1745              295 - 765             1.1 - 3.9 s
  ==================  ======================  ====================  ==================

All three give the same batches for ``(seed, epoch)`` and resume exactly (grain from its iterator
state, this loader from ``start_step``). Run to run, the three swap places within the noise of the
shared machine; process workers start seconds late every epoch and share the cores of the train
step, which is 5-18x slower than this loader anyway (55-95 img/s for mbv2-w0.35 TraDy at 128 px; a
run with this loader reached 0.84-1.01x the step alone, median 0.93). So the loader stays a thread
pool, with no dependency.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import os
import sys
import threading
from typing import Iterator

import numpy as np

from trady_jax.data import transforms as T
from trady_jax.data.folder import Source


def steps_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
  """Number of batches :func:`batches` yields for a source of ``num_examples``."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  full, rest = divmod(num_examples, batch_size)
  return full + (0 if drop_remainder or rest == 0 else 1)


def epoch_order(num_examples: int, *, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
  """Dataset indices in the order one epoch visits them."""
  if not shuffle:
    return np.arange(num_examples)
  return T.epoch_rng(seed, epoch).permutation(num_examples)


def default_workers() -> int:
  """Threads used when ``num_workers`` is not given: the CPU count, at most 8."""
  return max(1, min(8, os.cpu_count() or 1))


def batches(source: Source, batch_size: int, *, train: bool, seed: int = 0, epoch: int = 0,
            drop_remainder: bool | None = None, num_workers: int | None = None, start_step: int = 0,
            shuffle: bool | None = None, transform: T.Transform | None = None,
            image_size: int = T.IMAGE_SIZE, prefetch: int = 2,
            pad_remainder: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Yield ``{'image': float32 (B, S, S, 3), 'label': int32 (B,)}`` for one epoch.

  Text sources (``protocol == 'text'``) give ``'image'`` as int32 token ids ``(B, max_length)``.

  Args:
    source: random-access source (``len``, ``[i] -> (uint8 HWC, label)``, optional ``protocol``).
    batch_size: examples per batch.
    train: training transforms (random crop/flip/jitter) and, by default, shuffling and dropping the
      last partial batch; otherwise the deterministic test transform in dataset order.
    seed, epoch: fix the order and the augmentation (non-negative integers).
    drop_remainder: drop the last partial batch; defaults to ``train``.
    num_workers: decoding/transform threads; 0 runs everything in the calling thread; default
      :func:`default_workers`.
    start_step: skip the first ``start_step`` batches (resume mid-epoch); they are not decoded.
    shuffle: shuffle the order; defaults to ``train``.
    transform: ``transform(uint8 HWC, rng) -> float32 HWC``; defaults to the papers' transforms for
      ``source.protocol`` at ``image_size``.
    image_size: output side of the default transform.
    prefetch: batches prepared ahead of the consumer (with worker threads).
    pad_remainder: pad the last partial batch to ``batch_size`` by repeating its first example, and
      add ``'mask'`` (bool ``(B,)``, False on padding) to every batch: evaluation keeps one shape.
  """
  drop_remainder = train if drop_remainder is None else drop_remainder
  shuffle = train if shuffle is None else shuffle
  if transform is None:
    transform = T.make_transform(train, protocol=getattr(source, "protocol", "standard"),
                                 image_size=image_size)
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  order = epoch_order(len(source), shuffle=shuffle, seed=seed, epoch=epoch)
  steps = steps_per_epoch(len(order), batch_size, drop_remainder)
  workers = default_workers() if num_workers is None else int(num_workers)

  split = isinstance(transform, T.ProtocolTransform)  # uint8 rows, normalised once per batch
  per_example = transform.pixels if split else transform
  lock = threading.Lock()

  def new_batch(step: int) -> dict:
    """The batch of ``step``, filled in place by ``fill`` (workers write their rows into it)."""
    idx = order[step * batch_size:(step + 1) * batch_size]
    rows = batch_size if pad_remainder else len(idx)
    batch = {"image": None, "label": np.empty(rows, np.int32), "index": idx, "todo": len(idx)}
    if pad_remainder:
      batch["mask"] = np.arange(rows) < len(idx)
    return batch

  def fill(batch: dict, k: int) -> None:
    index = int(batch["index"][k])
    image, label = source[index]
    row = per_example(image, T.example_rng(seed, epoch, index))
    with lock:  # the first row done sizes the batch (a custom transform's own size)
      if batch["image"] is None:
        shape = (len(batch["label"]), *row.shape)
        dtype = np.uint8 if split else getattr(transform, "dtype", np.float32)  # text: int32
        batch["image"] = np.empty(shape, dtype)
    batch["image"][k], batch["label"][k] = row, label
    with lock:
      batch["todo"] -= 1
      last = batch["todo"] == 0
    if last and split:  # the worker that completes the batch normalises it
      batch["image"] = transform.normalize(batch["image"])

  def finish(batch: dict) -> dict[str, np.ndarray]:
    n = len(batch.pop("index"))
    del batch["todo"]
    batch["image"][n:], batch["label"][n:] = batch["image"][0], batch["label"][0]  # padding
    return batch

  if workers == 0:
    for step in range(start_step, steps):
      batch = new_batch(step)
      for k in range(len(batch["index"])):
        fill(batch, k)
      yield finish(batch)
    return

  pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trady-data")
  pending: collections.deque = collections.deque()

  def submit(step: int) -> None:
    batch = new_batch(step)
    pending.append((batch, [pool.submit(fill, batch, k) for k in range(len(batch["index"]))]))

  try:
    next_step = start_step
    for _ in range(max(1, prefetch) + 1):
      if next_step < steps:
        submit(next_step)
        next_step += 1
    while pending:
      batch, futures = pending.popleft()
      for f in futures:
        f.result()
      if next_step < steps:  # keep the queue full before handing the batch out
        submit(next_step)
        next_step += 1
      yield finish(batch)
  finally:
    for _, futures in pending:
      for f in futures:
        f.cancel()
    if not sys.is_finalizing():  # an unfinished generator collected at exit: threads already joined
      pool.shutdown(wait=True)  # pending work was cancelled above; running items finish quickly
