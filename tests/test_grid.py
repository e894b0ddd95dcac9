"""The grid launcher: emitted commands, workdirs, finished runs skipped, locks, shards, Slurm."""

import json
import os
import shlex
from pathlib import Path

import pytest

from trady_jax import atomic, workdir
from trady_jax.paper import BUDGETS as PAPER_BUDGETS
from trady_jax.grid import cli, launch, plan
from trady_jax.report import records

from fake_results import final_record


def _emit(capsys, *args):
  assert cli.main(["--emit-commands", "--python", "python", *args]) == 0
  return [l for l in capsys.readouterr().out.splitlines() if l]



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
  atomic.write_json_atomic(Path(done.workdir) / "final.json", final_record("mbv2-w0.35", "cifar10", "trady",
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
