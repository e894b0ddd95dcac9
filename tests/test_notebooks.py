"""The notebooks run top to bottom (small mode, headless) and their jupytext twins match them."""

import json
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("quickstart", "strategies_explorer")


def _execute(name, tmp_path, monkeypatch):
  """Run a copy of ``notebooks/<name>.ipynb`` in ``tmp_path``; return the executed notebook."""
  monkeypatch.setenv("TRADY_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  path = tmp_path / f"{name}.ipynb"
  shutil.copy(NOTEBOOKS / f"{name}.ipynb", path)
  nb = nbformat.read(path, as_version=4)
  # kernel 'python3' is started with this interpreter (jupyter_client swaps 'python' for it).
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError on the first failing cell
  return nb


def _stdout(nb) -> str:
  return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []) if o.get("output_type") == "stream")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs(name):
  nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code)
  assert "colab-badge.svg" in nb.cells[0].source
  assert (NOTEBOOKS / f"{name}.py").is_file(), "jupytext twin missing"


@pytest.mark.parametrize("name", NAMES)
def test_jupytext_twin_matches(name):
  jupytext = pytest.importorskip("jupytext")
  ipynb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  twin = jupytext.read(NOTEBOOKS / f"{name}.py")
  src = lambda nb: [(c.cell_type, c.source) for c in nb.cells]
  assert src(twin) == src(ipynb), f"run: jupytext --sync notebooks/{name}.py"


def test_quickstart_runs_and_selective_step_needs_less_memory(tmp_path, monkeypatch):
  nb = _execute("quickstart", tmp_path, monkeypatch)
  lines = [l for l in _stdout(nb).splitlines() if l.startswith("MEMORY_RESULT ")]
  assert len(lines) == 1, _stdout(nb)[-2000:]
  memory = json.loads(lines[0].removeprefix("MEMORY_RESULT "))
  assert 0 < memory["selective_temp_bytes"] < memory["full_temp_bytes"], memory
  assert "compiled 1 time(s)" in _stdout(nb)


def test_strategies_explorer_runs(tmp_path, monkeypatch):
  nb = _execute("strategies_explorer", tmp_path, monkeypatch)
  out = _stdout(nb)
  assert "channels explored after" in out, out[-2000:]
