"""What XLA says about a compiled function: temp memory, FLOPs, compilation count."""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any, Callable


def compiled_stats(fn: Callable, *args, **kwargs) -> dict[str, Any]:
  """Compile ``jax.jit(fn)`` (or ``fn`` itself if already jitted) and read its analyses.

  Under sharding the figures are per device (the SPMD program each device runs).

  Returns ``temp_bytes`` (``memory_analysis().temp_size_in_bytes``: the scratch memory the step
  needs beyond its arguments and outputs, the figure that tracks what autodiff saves for the
  backward pass), ``argument_bytes``, ``output_bytes`` and ``flops`` (``cost_analysis()['flops']``).
  """
  import jax
  jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
  compiled = jitted.lower(*args, **kwargs).compile()
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returns one dict per device program
    cost = cost[0] if cost else {}
  return {"temp_bytes": int(mem.temp_size_in_bytes),
          "argument_bytes": int(mem.argument_size_in_bytes),
          "output_bytes": int(mem.output_size_in_bytes),
          "flops": float((cost or {}).get("flops", float("nan")))}


def count_traces(fn: Callable) -> Callable:
  """``fn`` counting its traces in ``.traces``: wrapped in ``jax.jit``, one per compilation (a
  public count, where a jitted function's cache size is private). Tests that only need a bound
  use ``chex.assert_max_traces``.

  >>> import jax, jax.numpy as jnp
  >>> f = count_traces(lambda x: x + 1)
  >>> g = jax.jit(f)
  >>> _ = g(jnp.ones(2)), g(jnp.zeros(2)), g(jnp.ones(3))  # a new shape compiles again
  >>> f.traces
  2
  """

  @functools.wraps(fn)
  def counted(*args, **kwargs):
    counted.traces += 1
    return fn(*args, **kwargs)

  counted.traces = 0
  return counted


def median_time(fn: Callable, *args, repeats: int = 5, warmup: int = 1) -> float:
  """Median wall time of ``fn(*args)`` (blocked until ready) over ``repeats`` calls after warm-up."""
  import jax
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def interleaved_median_times(calls: dict[str, Callable], repeats: int = 5,
                             warmup: int = 1) -> dict[str, float]:
  """Median wall time of each zero-argument call (blocked until ready), timed in interleaved rounds
  so that a machine whose load drifts weighs on all of them alike."""
  import jax
  for fn in calls.values():
    for _ in range(warmup):
      jax.block_until_ready(fn())
  times = {k: [] for k in calls}
  for _ in range(repeats):
    for k, fn in calls.items():
      t = time.perf_counter()
      jax.block_until_ready(fn())
      times[k].append(time.perf_counter() - t)
  return {k: statistics.median(v) for k, v in times.items()}


def residual_bytes(loss, params, *, by: str = "dtype") -> dict[str, int]:
  """Bytes of what autodiff saves for ``loss``'s backward pass at ``params``.

  ``by='dtype'``: float activations, bool masks, other; ``by='producer'``: keyed by the name of
  the primitive that computes each residual (``'reshape'``, ``'jit'``, ...). The residuals are
  the leaves of the function ``jax.vjp`` returns; those that are the arguments or constants
  (parameters, the batch) are already live, not temp memory, and are left out."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  if by not in ("dtype", "producer"):
    raise ValueError(f"by={by!r}: use 'dtype' or 'producer'")
  closed = jax.make_jaxpr(lambda p: jax.tree.leaves(jax.vjp(loss, p)[1]))(params)
  live = set(closed.jaxpr.invars) | set(closed.jaxpr.constvars)
  for e in closed.jaxpr.eqns:  # stop_gradient of a live value (a frozen kernel) is that value
    if e.primitive.name == "stop_gradient" and e.invars[0] in live:
      live.update(e.outvars)
  producer = {o: e.primitive.name for e in closed.jaxpr.eqns for o in e.outvars}
  out = {"float_activations": 0, "bool_masks": 0, "other": 0} if by == "dtype" else {}
  for v in closed.jaxpr.outvars:
    if type(v).__name__ == "Literal" or v in live:  # a literal, an argument or a constant
      continue
    aval = v.aval
    n = int(np.prod(aval.shape)) * aval.dtype.itemsize
    if by == "producer":
      kind = producer.get(v, "?")
    else:
      kind = ("bool_masks" if aval.dtype in (jnp.bool_, jnp.uint8) else
              "float_activations" if jnp.issubdtype(aval.dtype, jnp.floating) else "other")
    out[kind] = out.get(kind, 0) + n
  return out
