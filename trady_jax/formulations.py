"""Which formulation of a convolution kind runs, chosen when code is traced.

``depthwise`` and ``pointwise`` each offer several formulations of the same convolution (exact to
float32 rounding) and a table of the one measured fastest per backend. A ``Choice`` reads, in
order: the innermost ``with choice.override(name):`` block, the kind's environment variable
(e.g. ``TRADY_JAX_DEPTHWISE``), then the measured choice it is given. It is read at trace time: a
function already compiled keeps the formulation it was traced with (``jax.jit`` caches by
function and shapes), so wrap a fresh function to compare formulations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Iterator


@contextlib.contextmanager
def pushed(stack: list, value) -> Iterator[None]:
  """``value`` on top of ``stack`` (a trace-time setting) for the block."""
  stack.append(value)
  try:
    yield
  finally:
    stack.pop()


@dataclasses.dataclass(frozen=True)
class Choice:
  """The formulations ``names`` of convolution ``kind``, overridable by ``with`` blocks and by the
  environment variable ``env``."""

  kind: str
  names: tuple[str, ...]
  env: str
  _stack: list = dataclasses.field(default_factory=list, repr=False, compare=False)

  def override(self, name: str) -> contextlib.AbstractContextManager:
    """Use formulation ``name`` for code traced in the ``with`` block."""
    if name not in self.names:
      raise ValueError(f"unknown {self.kind} formulation {name!r}; choose from {self.names}")
    return pushed(self._stack, name)

  def active(self, measured: str) -> str:
    """The innermost override, else ``$env``, else ``measured`` (the backend's table)."""
    if self._stack:
      return self._stack[-1]
    env = os.environ.get(self.env, "")
    if env:
      if env not in self.names:
        raise ValueError(f"{self.env}={env!r}: choose from {self.names}")
      return env
    return measured
