"""Atomic writes: a file is replaced whole or left as it was, with no temporary files left."""

import json
import os

import pytest

from trady_jax import atomic


def test_write_json_atomic(tmp_path):
  p = tmp_path / "sub" / "final.json"
  atomic.write_json_atomic(p, {"a": 1, "b": [1.5, None]})
  assert json.loads(p.read_text()) == {"a": 1, "b": [1.5, None]}
  atomic.write_json_atomic(p, {"a": 2})
  assert json.loads(p.read_text()) == {"a": 2}
  with pytest.raises(TypeError):  # not serialisable: the old file stays whole
    atomic.write_json_atomic(p, {"a": object()})
  assert json.loads(p.read_text()) == {"a": 2}
  assert os.listdir(p.parent) == ["final.json"]  # no temporary files left
  mask = os.umask(0)
  os.umask(mask)
  assert p.stat().st_mode & 0o777 == 0o666 & ~mask


def test_atomic_write_failure_leaves_no_temp(tmp_path, monkeypatch):
  p = tmp_path / "t.txt"
  atomic.write_text_atomic(p, "old")
  def boom(*a):
    raise OSError("disk full")
  monkeypatch.setattr(atomic.os, "replace", boom)
  with pytest.raises(OSError, match="disk full"):
    atomic.write_text_atomic(p, "new")
  assert p.read_text() == "old" and os.listdir(tmp_path) == ["t.txt"]
