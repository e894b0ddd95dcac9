"""Grid launcher and results tooling on fake result files (no training)."""

import importlib
import json
import math
import os
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from trady_jax import atomic, workdir
from trady_jax.paper import BUDGETS as PAPER_BUDGETS
from trady_jax.grid import cli, launch, plan
from trady_jax.report import aggregate, make, records, tables, ttest


def _emit(capsys, *args):
  assert cli.main(["--emit-commands", "--python", "python", *args]) == 0
  return [l for l in capsys.readouterr().out.splitlines() if l]


# ------------------------------------------------------------------------------------------------
# Grid


def test_emit_count_workdirs_and_passthrough(tmp_path, capsys):
  res = str(tmp_path / "res")
  lines = _emit(capsys, "--archs", "mbv2-w0.35,mcunet-in1", "--datasets", "cifar10,cifar100",
                "--strategies", "trady,su,medyate", "--budgets", "paper", "--seeds", "0,42,100",
                "--results", res, "--epochs", "5", "--offline=true")
  assert len(lines) == 2 * 2 * 3 * 3 * 3
  again = _emit(capsys, "--archs", "mbv2-w0.35,mcunet-in1", "--datasets", "cifar10,cifar100",
                "--strategies", "trady,su,medyate", "--budgets", "paper", "--seeds", "0,42,100",
                "--results", res, "--epochs", "5", "--offline=true")
  assert again == lines  # deterministic
  workdirs = set()
  for line in lines:
    guard, cmd = line.split(" || ")
    argv = shlex.split(cmd)
    a = dict(zip(argv[2::2], argv[3::2]))
    assert argv[-3:] == ["--epochs", "5", "--offline=true"]
    assert a["--workdir"] == str(Path(res) / a["--arch"] / a["--dataset"] / a["--strategy"]
                                 / f"b{a['--budget']}" / f"s{a['--seed']}")
    assert guard == f"test -f {Path(a['--workdir']) / 'final.json'}"
    assert int(a["--budget"]) in PAPER_BUDGETS[a["--arch"]]
    if a["--strategy"] == "su":
      assert int(a["--su-scheme"]) == (1, 3, 5)[PAPER_BUDGETS[a["--arch"]].index(
          int(a["--budget"]))]
    else:
      assert "--su-scheme" not in a
    workdirs.add(a["--workdir"])
  assert len(workdirs) == len(lines)
  assert json.loads((Path(res) / "grid.json").read_text()) == {
      "train_flags": {"--epochs": "5", "--offline": "true"}}


def test_baseline_collapses_budgets_and_explicit_budgets(tmp_path, capsys):
  lines = _emit(capsys, "--archs", "mbv2-w0.35", "--datasets", "cifar10", "--strategies",
                "trady,baseline", "--budgets", "1000,2000", "--seeds", "0,1",
                "--results", str(tmp_path), "--no-guard")
  assert len(lines) == 2 * 2 + 2  # trady: budgets x seeds; baseline: seeds only
  base = [l for l in lines if "--strategy baseline" in l]
  assert len(base) == 2 and all("--budget" not in l for l in base)
  assert all(f"{os.sep}baseline{os.sep}bfull{os.sep}s" in l for l in base)
  assert not any(l.startswith("test -f") for l in lines)


def test_grid_rejects_bad_input(tmp_path, capsys):
  common = ["--emit-commands", "--results", str(tmp_path), "--datasets", "cifar10"]
  for bad in (["--strategies", "nope"], ["--seed", "3"], ["--budget", "5"], ["--epoch", "3"],
              ["--strategies", "su", "--budgets", "1234"],
              ["--archs", "tiny", "--budgets", "paper"]):
    with pytest.raises(SystemExit):
      cli.main(common + bad)
  cli.main(common + ["--epochs", "3"])
  capsys.readouterr()
  with pytest.raises(SystemExit, match="another --results"):  # a different protocol, same folder
    cli.main(common + ["--epochs", "4"])


def test_skip_finished_runs(tmp_path, capsys):
  args = ["--archs", "mbv2-w0.35", "--datasets", "cifar10", "--strategies", "trady",
          "--budgets", "paper", "--seeds", "0", "--results", str(tmp_path)]
  lines = _emit(capsys, *args)
  assert len(lines) == 3
  runs = plan.expand(["mbv2-w0.35"], ["cifar10"], ["trady"], "paper", [0], str(tmp_path))
  done, partial = runs[0], runs[1]
  atomic.write_json_atomic(Path(done.workdir) / "final.json", _final("mbv2-w0.35", "cifar10", "trady",
                                                                done.budget, 0, 0.9))
  Path(partial.workdir).mkdir(parents=True)
  (Path(partial.workdir) / "final.json").write_text('{"epoch": 3, "test_acc')  # cut short
  assert records.is_finished(done.workdir) and not records.is_finished(partial.workdir)
  lines = _emit(capsys, *args)
  assert len(lines) == 2 and not any(done.workdir in l for l in lines)
  assert len(_emit(capsys, *args, "--include-finished")) == 3
  # --run never touches a finished run: a fake interpreter records what it was asked to run.
  fake = tmp_path / "fake_python.sh"
  fake.write_text("#!/bin/sh\necho \"$@\" >> " + shlex.quote(str(tmp_path / "calls.txt")) + "\n")
  fake.chmod(0o755)
  counts = launch.run_all(runs, [str(fake)], [])
  calls = (tmp_path / "calls.txt").read_text().splitlines()
  assert len(calls) == 2 and not any(done.workdir in c for c in calls)
  assert counts == {"done": 0, "finished_before": 1, "busy": 0, "failed": 2}  # no final.json
  assert not any(Path(r.workdir, workdir.LOCK).exists() for r in runs)  # locks released


def test_locks_and_shards(tmp_path):
  wd = tmp_path / "run"
  wd.mkdir()
  (wd / workdir.LOCK).write_text(json.dumps({"host": "here", "pid": 2 ** 22 + 12345}))
  assert workdir.holder(wd) is None and workdir.stale(wd)  # a dead process's lock: stale
  with workdir.locked(wd):  # and taken over
    assert workdir.holder(wd) is not None and not workdir.stale(wd)
  assert not (wd / workdir.LOCK).exists()
  assert launch.parse_shard("1/3") == (1, 3)
  with pytest.raises(ValueError):
    launch.parse_shard("3/3")


def test_slurm_script(tmp_path, capsys):
  script = tmp_path / "grid.sh"
  assert cli.main(["--emit-slurm", str(script), "--results", str(tmp_path / "res"),
                    "--strategies", "trady,baseline", "--seeds", "0,42", "--max-parallel", "4",
                    "--sbatch", "--gres=gpu:1 --time=1:00:00", "--epochs", "2"]) == 0
  commands = script.with_suffix(".commands").read_text().splitlines()
  assert len(commands) == 3 * 2 + 2
  text = script.read_text()
  assert f"#SBATCH --array=0-{len(commands) - 1}%4" in text
  assert "#SBATCH --gres=gpu:1" in text and "#SBATCH --time=1:00:00" in text
  assert "SLURM_ARRAY_TASK_ID + 1" in text and str(script.with_suffix(".commands")) in text


# ------------------------------------------------------------------------------------------------
# Results


def _final(arch, dataset, strategy, budget, seed, acc, **kw):
  rec = {"epoch": 10, "test_accuracy": acc, "units": 1000, "weight_sparsity": 0.9,
         "activation_sparsity": 0.95, "flops_saved": 0.97, "wall_s": 1.0, "compilations": 1,
         "pretrained": True, "data": "offline CIFAR-10 copy", "arch": arch, "dataset": dataset,
         "budget": budget, "seed": seed, "strategy": strategy}
  rec.update(kw)
  return rec


def _write_run(root, rec, epochs=3):
  b = "full" if rec["strategy"] == "baseline" else rec["budget"]
  wd = Path(root) / rec["arch"] / rec["dataset"] / rec["strategy"] / f"b{b}" / f"s{rec['seed']}"
  atomic.write_json_atomic(wd / "final.json", rec)
  lines = [json.dumps({"epoch": e, "weight_sparsity": 0.9 + 0.01 * e,
                       "activation_sparsity": 0.95, "flops_saved": 0.97 - 0.001 * e})
           for e in range(1, epochs + 1)]
  (wd / "metrics.jsonl").write_text("\n".join(lines) + "\n")
  return wd


ACC = {  # strategy -> dataset -> budget -> accuracies over seeds 0, 42, 100
    "trady": {"cifar10": {100: [0.90, 0.91, 0.92], 200: [0.92, 0.93, 0.94]},
              "cifar100": {100: [0.70, 0.70, 0.73], 200: [0.72, 0.74, 0.75]}},
    "su": {"cifar10": {100: [0.89, 0.90, 0.90], 200: [0.90, 0.92, 0.92]},
           "cifar100": {100: [0.69, 0.70, 0.70], 200: [0.71, 0.72, 0.73]}},
}


@pytest.fixture
def results_dir(tmp_path):
  root = tmp_path / "results"
  for s, by_d in ACC.items():
    for d, by_b in by_d.items():
      for b, accs in by_b.items():
        for seed, a in zip((0, 42, 100), accs):
          _write_run(root, _final("mbv2-w0.35", d, s, b, seed, a))
  for d, a in (("cifar10", 0.95), ("cifar100", 0.78)):
    for seed in (0, 42, 100):
      _write_run(root, _final("mbv2-w0.35", d, "baseline", 27946, seed, a + seed * 1e-4))
  return root


def test_aggregate_mean_std_and_corrupt_files(results_dir):
  bad = results_dir / "mbv2-w0.35" / "cifar10" / "trady" / "b300" / "s0"
  bad.mkdir(parents=True)
  (bad / "final.json").write_text('{"arch": "mbv2-w0.35", "test_accura')
  (bad.parent / "s42").mkdir()
  (bad.parent / "s42" / "final.json").write_text(json.dumps({"arch": "mbv2-w0.35"}))
  with pytest.warns(records.ResultsWarning) as rec:
    runs = records.load_runs(results_dir)
  msgs = [str(w.message) for w in rec]
  assert any("b300/s0" in m.replace(os.sep, "/") and "not valid JSON" in m for m in msgs)
  assert any("missing" in m for m in msgs)
  assert len(runs) == 2 * 2 * 2 * 3 + 2 * 3
  cells = aggregate.aggregate(runs)
  c = cells[("mbv2-w0.35", 100, "trady", "cifar100")]
  assert c.n == 3 and c.seeds == (0, 42, 100)
  assert c.mean == pytest.approx(71.0) and c.std == pytest.approx(np.std([70, 70, 73], ddof=1))
  assert cells[("mbv2-w0.35", "full", "baseline", "cifar10")].n == 3
  _, rows = tables.table_rows(cells, "mbv2-w0.35")
  row = next(r for r in rows if r["strategy"] == "trady" and r["budget"] == 100)
  avg = row["average"]
  assert avg.mean == pytest.approx((91.0 + 71.0) / 2)
  assert avg.std == pytest.approx(math.sqrt(1.0 ** 2 + np.var([70, 70, 73], ddof=1)))
  md = tables.markdown_tables(cells)
  assert "| 100 | trady | 91.00±1.00 | 71.00±1.73 | 81.00±2.00 |" in md
  assert "| full | baseline |" in md


def test_report_files_and_plots(results_dir, tmp_path):
  out = tmp_path / "out"
  with warnings.catch_warnings():
    warnings.simplefilter("error", records.ResultsWarning)  # clean inputs: no warnings
    rep = make.make_report(results_dir, out, quiet=True)
  assert {p.name for p in out.iterdir()} >= {"tables.md", "summary.csv", "runs.csv", "ttest.csv",
                                             "plots"}
  assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
  summary = (out / "summary.csv").read_text().splitlines()
  assert summary[0] == "arch,budget,strategy,dataset,n_seeds,seeds,mean,std"
  assert "mbv2-w0.35,100,trady,cifar100,3,0 42 100,71.0000,1.7321" in summary
  pngs = sorted((out / "plots").glob("*.png"))
  names = {p.name for p in pngs}
  assert {"accuracy_vs_budget_mbv2-w0.35.png", "ttest_heatmap.png",
          "sparsity_mbv2-w0.35_cifar10_b100.png"} <= names
  for p in pngs:
    assert p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert rep["ttest"].names == ["trady", "su"]  # baseline excluded, best first
  curves = aggregate.sparsity_curves(rep["runs"])[("mbv2-w0.35", "cifar10", 100)]["trady"]
  ep, mean, _ = curves["weight_sparsity"]
  assert list(ep) == [1, 2, 3] and mean == pytest.approx([91, 92, 93])


def test_final_record_written_and_read_by_one_schema(tmp_path):
  from trady_jax.config import Config
  cfg = Config(arch="mcunet-in1", dataset="cifar100", strategy="medyate", budget=64832, seed=42)
  rec = records.write_final(tmp_path, {"test_accuracy": 0.625, "units": 64000,
                                       "pretrained": True}, cfg)
  assert json.loads((tmp_path / records.FINAL).read_text()) == rec
  run = records.read_final(tmp_path / records.FINAL)
  assert (run.arch, run.dataset, run.strategy, run.budget, run.seed, run.accuracy) == (
      "mcunet-in1", "cifar100", "medyate", 64832, 42, 62.5)
  assert records.is_finished(tmp_path) and not run.fallback
  base = records.write_final(tmp_path / "b", {"test_accuracy": 0.7},
                             Config(strategy="baseline", budget=123))
  assert records.read_final(tmp_path / "b" / records.FINAL).budget == records.FULL
  assert base["budget"] == 123  # recorded as given, tabulated as full fine-tuning


def test_metrics_bad_lines_skipped(tmp_path):
  p = tmp_path / "metrics.jsonl"
  p.write_text('{"epoch": 1, "a": 1}\n{"epoch": 2, "a": 2}\n{"epoch": 1, "a": 3}\n{"epoch": 3, "a')
  with pytest.warns(records.ResultsWarning, match="bad line"):
    m = records.load_metrics(p)
  assert [(r["epoch"], r["a"]) for r in m] == [(1, 3), (2, 2)]


# ------------------------------------------------------------------------------------------------
# t-tests


def test_paired_ttest_known_value():
  # d = x - y = [1, 2, 3]: mean 2, sd 1, t = 2 sqrt(3), df = 2, and for df = 2 the t tail is
  # P(T > t) = 1/2 - t / (2 sqrt(t^2 + 2)) = 1/2 - sqrt(3/14) = 0.0370862...
  res = ttest.paired_ttest([11, 12, 13], [10, 10, 10])
  assert res.t == pytest.approx(2 * math.sqrt(3))
  assert res.p == pytest.approx(0.5 - math.sqrt(3 / 14), rel=1e-10)
  assert res.n == 3 and res.mean_diff == pytest.approx(2.0)
  assert ttest.paired_ttest([10, 10, 10], [11, 12, 13]).p == pytest.approx(1 - res.p, rel=1e-10)
  assert ttest.paired_ttest([11, 12, 13], [10, 10, 10], "two-sided").p == pytest.approx(2 * res.p)
  assert math.isnan(ttest.paired_ttest([1], [0]).p)
  # constant differences: t is infinite and the answer certain (scipy itself returns nan)
  assert ttest.paired_ttest([2, 3], [1, 2]).p == 0.0
  assert ttest.paired_ttest([2, 3], [1, 2], "less").p == 1.0
  assert ttest.paired_ttest([1, 2], [2, 3], "two-sided").p == 0.0
  assert math.isnan(ttest.paired_ttest([2, 3], [2, 3]).p)  # no difference at all
  with pytest.raises(ValueError, match="alternative"):
    ttest.paired_ttest([1, 2], [0, 0], "bigger")


def test_report_without_scipy_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "scipy", None)  # import scipy now fails
  monkeypatch.delitem(sys.modules, "trady_jax.report.ttest")
  with pytest.raises(ImportError, match=r"need scipy: pip install 'trady-jax\[report\]'"):
    importlib.import_module("trady_jax.report.ttest")


def test_ttest_matrix_pairs_matched_runs():
  def run(s, seed, acc, budget=100, dataset="cifar10"):
    return records.parse_record(_final("mbv2-w0.35", dataset, s, budget, seed, acc))
  runs = [run("a", s, 0.5 + 0.01 * s + 0.001 * s * s) for s in range(5)]
  runs += [run("b", s, 0.5 + 0.01 * s) for s in range(5)]
  runs += [run("b", 9, 0.99)]  # no partner: not paired
  m = ttest.ttest_matrix(runs)
  assert m.names == ["a", "b"]  # a beats b on every matched seed
  i, j = m.names.index("a"), m.names.index("b")
  ref = ttest.paired_ttest([0.1 * s * s for s in range(5)], [0.0] * 5)
  assert m.n[i, j] == 5 and m.p[i, j] == pytest.approx(ref.p)
  assert m.p[j, i] == pytest.approx(1 - ref.p) and math.isnan(m.p[i, i])
  m2 = ttest.ttest_matrix(runs, pair_unit="condition")
  assert m2.n[i, j] == 1 and math.isnan(m2.p[i, j])


# ------------------------------------------------------------------------------------------------
# Atomic writes


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
