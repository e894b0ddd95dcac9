"""Step metrics that stay on the device, batches put there ahead, and optional TensorBoard events.

A loop that calls ``jax.device_get`` on every step's loss waits for that step to finish before it
can dispatch the next, so the accelerator idles while Python reads the value, updates a progress
bar and fetches a batch. Here instead:

* ``DeviceMeter`` adds each step's metrics into device scalars (one fused add, dispatched
  asynchronously) and remembers the first step whose loss was not finite; the loop reads the sums
  back only every ``Config.log_every`` steps, for the progress bar and the divergence check;
* ``prefetch`` keeps the next ``size`` batches already transferred (``jax.device_put``, or the
  mesh's sharding), so the step is dispatched ahead while the loader prepares the following one;
* ``EventWriter`` mirrors the run's metric records into TensorBoard event files when
  ``tensorboardX`` is installed (``pip install trady-jax[tensorboard]``); without it, nothing.

    meter = DeviceMeter(("loss", "accuracy"))
    for step, batch in enumerate(prefetch(batches, place=jax.device_put), 1):
      params, opt_state, m = train_step(params, opt_state, selection, batch)
      meter.add(m, step)
      if step % 10 == 0:
        sums = meter.read()   # host sync: every 10 steps, not every step
"""

from __future__ import annotations

import collections
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp


@jax.jit
def _accumulate(state, metrics, step):
  sums, first_bad = state
  bad = ~jnp.isfinite(metrics["loss"])
  first_bad = jnp.where((first_bad == 0) & bad, step, first_bad)
  return {k: sums[k] + metrics[k] for k in sums}, first_bad


class DeviceMeter:
  """Running sums of step metrics, kept on the device until ``read``.

  ``read()`` returns ``{name: sum, 'steps': n, 'first_nonfinite_step': s}`` (``s`` is 0 while
  every loss has been finite) as host floats: the only host synchronisation.
  """

  def __init__(self, names: Sequence[str] = ("loss", "accuracy")):
    self.names = tuple(names)
    self._state = ({k: jnp.zeros((), jnp.float32) for k in self.names}, jnp.zeros((), jnp.int32))
    self.steps = 0

  def add(self, metrics: Mapping[str, jax.Array], step: int) -> None:
    """Add one step's scalar metrics (``step`` counts from 1)."""
    picked = {k: jnp.asarray(metrics[k], jnp.float32) for k in self.names}
    self._state = _accumulate(self._state, picked, jnp.int32(step))
    self.steps += 1

  def read(self) -> dict[str, float]:
    sums, first_bad = jax.device_get(self._state)
    return {**{k: float(v) for k, v in sums.items()}, "steps": self.steps,
            "first_nonfinite_step": int(first_bad)}

  def means(self) -> dict[str, float]:
    """``read()``'s sums divided by the step count."""
    r = self.read()
    return {k: r[k] / max(r["steps"], 1) for k in self.names}


def prefetch(batches: Iterable[Any], place: Callable[[Any], Any], size: int = 2) -> Iterator[Any]:
  """``place(batch)`` for each batch, ``size`` batches ahead of the consumer."""
  queue: collections.deque = collections.deque()
  it = iter(batches)
  for b in it:
    queue.append(place(b))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


class EventWriter:
  """TensorBoard scalars for each metric record (a no-op without ``tensorboardX``)."""

  def __init__(self, logdir: str | Path):
    try:
      from tensorboardX import SummaryWriter
    except ImportError:
      self._writer = None
      return
    self._writer = SummaryWriter(str(logdir))

  @property
  def enabled(self) -> bool:
    return self._writer is not None

  def scalars(self, step: int, record: Mapping[str, Any], prefix: str = "") -> None:
    if self._writer is None:
      return
    for k, v in record.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        self._writer.add_scalar(prefix + k, v, step)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
