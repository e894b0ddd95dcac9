"""The notebooks: committed with their outputs, matching their jupytext twins, and runnable top to
bottom (on a copy, with tiny settings injected after their ``parameters`` cell, papermill style)."""

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
# Tiny settings for CI: a few steps at 64x64, nothing downloaded (local copies or generated data).
TINY = {"IMAGE_SIZE": 64, "TRAIN_IMAGES": 32, "TEST_IMAGES": 16, "EPOCHS": 1, "BATCH": 8,
        "DOWNLOAD": False}
EXPLORER_TINY = {**TINY, "EPOCHS": 2, "STRATEGIES": ("trady", "medyate")}
RESULT = "NOTEBOOK_RESULT "


def _parameters_index(nb) -> int:
  tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", ())]
  assert len(tagged) == 1, "one cell tagged 'parameters'"
  return tagged[0]


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
  """One persistent XLA compilation cache for the notebooks' kernels: a step compiled again (the
  measured copy of a train step, the same eval step in another run) is read back, not rebuilt."""
  return tmp_path_factory.mktemp("jax-cache")


def _execute(name, tmp_path, monkeypatch, jax_cache, params, result_expr):
  """Run a copy of ``notebooks/<name>.ipynb`` in ``tmp_path`` with ``params`` injected after its
  parameters cell; return the JSON the appended cell prints from ``result_expr``."""
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(jax_cache))
  path = tmp_path / f"{name}.ipynb"
  shutil.copy(NOTEBOOKS / f"{name}.ipynb", path)
  nb = nbformat.read(path, as_version=4)
  injected = "\n".join(f"{k} = {v!r}" for k, v in params.items())
  nb.cells.insert(_parameters_index(nb) + 1, nbformat.v4.new_code_cell(injected))
  nb.cells.append(nbformat.v4.new_code_cell(
      f"import json\nprint({RESULT!r} + json.dumps({result_expr}))"))
  # kernel 'python3' is started with this interpreter (jupyter_client swaps 'python' for it).
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError on the first failing cell
  out = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
  assert out.startswith(RESULT), out
  return json.loads(out.removeprefix(RESULT))


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_with_its_figures(name):
  path = NOTEBOOKS / f"{name}.ipynb"
  nb = nbformat.read(path, as_version=4)
  assert "colab-badge.svg" in nb.cells[0].source
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count for c in code), f"run: jupyter execute --inplace {path}"
  figures = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
  assert figures, "no figure in the committed notebook"
  assert not [o for c in code for o in c.outputs if o.output_type == "error"]
  assert path.stat().st_size < 1_000_000
  _parameters_index(nb)


@pytest.mark.parametrize("name", NAMES)
def test_jupytext_twin_matches(name):
  jupytext = pytest.importorskip("jupytext")
  ipynb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  twin = jupytext.read(NOTEBOOKS / f"{name}.py")
  src = lambda nb: [(c.cell_type, c.source) for c in nb.cells]
  assert src(twin) == src(ipynb), f"run: jupytext --sync notebooks/{name}.py"


@pytest.mark.slow
def test_quickstart_runs_and_selective_step_needs_less_memory(tmp_path, monkeypatch, jax_cache):
  committed = (NOTEBOOKS / "quickstart.ipynb").read_bytes()
  result = _execute("quickstart", tmp_path, monkeypatch, jax_cache, TINY,
                    "{n: {k: r[k] for k in ('step_temp_bytes', 'compilations', 'units', "
                    "'test_accuracy')} for n, r in final.items()}")
  tra, full = result["TraDy"], result["full fine-tuning"]
  assert 0 < tra["step_temp_bytes"] < full["step_temp_bytes"], result
  assert tra["compilations"] == 1 and 0 < tra["units"] <= 27_946 < full["units"], result
  assert (NOTEBOOKS / "quickstart.ipynb").read_bytes() == committed  # a copy ran


@pytest.mark.slow
def test_strategies_explorer_runs(tmp_path, monkeypatch, jax_cache):
  result = _execute("strategies_explorer", tmp_path, monkeypatch, jax_cache, EXPLORER_TINY,
                    "{n: [r['units'] for r in h] for n, h in history.items()}")
  assert set(result) == {"trady", "medyate"}, result
  assert all(len(units) == 2 and 0 < min(units) and max(units) <= 27_946
             for units in result.values()), result
