"""Results tooling on fake run folders: loading, aggregation, tables, report files, plots."""

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from trady_jax import atomic
from trady_jax.report import aggregate, make, records, tables

from fake_results import final_record


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
          _write_run(root, final_record("mbv2-w0.35", d, s, b, seed, a))
  for d, a in (("cifar10", 0.95), ("cifar100", 0.78)):
    for seed in (0, 42, 100):
      _write_run(root, final_record("mbv2-w0.35", d, "baseline", 27946, seed, a + seed * 1e-4))
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
