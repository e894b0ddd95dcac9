"""Shared fixtures: a tiny model, its costs, and the location of ../shared."""

import jax
import jax.numpy as jnp
import pytest

from trady_jax import costs, paths
from trady_jax.models.tiny import TinyCNN

# The shared folder the package itself reads ($TRADY_JAX_SHARED, else ../shared), the first found.
SHARED = next((d for d in paths.shared_dirs() if d.is_dir()), paths.shared_dirs()[0])


@pytest.fixture(scope="session")
def shared_dir():
  """The shared folder (``paths.shared_dirs``); tests that need it skip with a reason when absent."""
  if not SHARED.is_dir():
    pytest.skip(f"{SHARED} not found: the pretrained weights and CIFAR-10 copy live there")
  return SHARED


@pytest.fixture(scope="session")
def tiny():
  """(model, params, costs) of TinyCNN at 32x32."""
  model = TinyCNN(num_classes=5)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  return model, params, costs.trace(model, (1, 32, 32, 3))


class Killed(Exception):
  """Raised by a ``kill_at`` callback: the run stops as a killed process would."""


def kill_at(epoch: int):
  """An ``on_epoch_end`` callback that raises ``Killed`` once ``epoch`` is saved."""

  def kill(done, _record):
    if done == epoch:
      raise Killed

  return kill
