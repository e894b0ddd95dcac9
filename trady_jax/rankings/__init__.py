"""Offline layer rankings shipped with the package (``experiments/rank_layers.py`` writes them)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def default_path(arch: str) -> Path:
  """The shipped ranking of ``arch`` (may not exist for models without one)."""
  return HERE / f"{arch}.json"
