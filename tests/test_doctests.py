"""The ``>>>`` examples in the package's docstrings run as tests, one per module that has any."""

import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import trady_jax


def _modules_with_examples() -> list[str]:
  found = []
  for info in pkgutil.walk_packages(trady_jax.__path__, "trady_jax."):
    spec = importlib.util.find_spec(info.name)
    if spec.origin and spec.origin.endswith(".py") and ">>> " in Path(spec.origin).read_text():
      found.append(info.name)
  return sorted(found)


MODULES = _modules_with_examples()


def test_the_core_modules_carry_examples():
  for name in ("costs", "nnx_layers", "selection", "sparse_update"):
    assert f"trady_jax.{name}" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_examples(name):
  result = doctest.testmod(importlib.import_module(name),
                           optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0, f"{name}: {result}"
