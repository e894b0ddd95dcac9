"""Bad input and bad luck: refused flags, diverging runs, busy workdirs, vanished checkpoints."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import _run

from trady_jax import selector as selector_lib
from trady_jax import atomic, experiment, workdir
from trady_jax.config import Config, ConfigError
from trady_jax.experiment import cli as cli_lib
from trady_jax.grid import cli, launch, plan
from trady_jax.report import records
from trady_jax.train import DivergedError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
TRAIN = str(EXPERIMENTS / "train.py")
# A run of a few seconds: tiny net, generated data, two steps an epoch.
SMOKE = ["--arch", "tiny", "--dataset", "synthetic", "--strategy", "baseline", "--image-size", "32",
         "--train-limit", "64", "--test-limit", "32", "--batch-size", "16", "--epochs", "1",
         "--warmup-epochs", "0", "--max-steps-per-epoch", "2", "--progress", "false"]


def _main(capsys, argv):
  """``(exit status, stdout, stderr lines)`` of train.py's main in this process."""
  try:
    code = cli_lib.exit_status(lambda: cli_lib.train_main(argv))
  except SystemExit as e:  # argparse
    code = e.code
  out = capsys.readouterr()
  return code, out.out, out.err.strip().splitlines()


def _process(argv, cwd):
  return subprocess.run([sys.executable, TRAIN, *argv], cwd=cwd, capture_output=True, text=True,
                        timeout=300)


# ------------------------------------------------------------------------------------------------
# Flags


@pytest.mark.parametrize("flags, says", [
    ("--epochs -1", "--epochs -1"), ("--batch-size 0", "--batch-size"),
    ("--image-size 0", "--image-size"), ("--image-size -32", "--image-size"),
    ("--eval-every 0", "--eval-every"), ("--num-workers 0", "--num-workers"),
    ("--num-workers -2", "--num-workers"), ("--seed -1", "--seed"), ("--lr 0", "--lr"),
    ("--lr -0.1", "--lr"), ("--lr nan", "--lr"), ("--lr inf", "--lr"),
    ("--max-steps-per-epoch -1", "--max-steps-per-epoch"), ("--topk-share 0", "--topk-share"),
    ("--topk-share 1.5", "--topk-share"), ("--topk-share nan", "--topk-share"),
    ("--alpha 0", "--alpha"), ("--alpha 1.01", "--alpha"), ("--train-limit -1", "--train-limit"),
    ("--test-limit -1", "--test-limit"), ("--budget -1", "--budget"),
    ("--su-scheme 0", "--su-scheme"), ("--su-scheme 6", "--su-scheme"),
    ("--prefix-chunks 0", "--prefix-chunks"), ("--oracle-batches -1", "--oracle-batches"),
    ("--allocation loose", "--allocation"), ("--medyate-norm max", "--medyate-norm"),
    ("--warmup-epochs -1", "--warmup-epochs"), ("--strategy nope", "unknown"),
    ("--arch nope", "unknown"), ("--dataset nope", "unknown"),
    ("--dataset folder:/no/such/folder", "does not exist"), ("--epochs x", "invalid int"),
    ("--epoch 3", "unrecognized"), ("--pretrained maybe", "not a boolean"),
    ("--ranking /no/such.json", "no such file"), ("--weights-dir /no/such", "no such folder"),
    ("--train-limit 5", "less than one batch"),
    ("--strategy su --arch tiny", "has none"),
    ("--strategy su --su-scheme 5 --budget 1000", "93,696 units, more than --budget 1,000"),
])
def test_bad_flags_are_refused_in_one_line(tmp_path, capsys, flags, says):
  wd = tmp_path / "run"
  code, out, err = _main(capsys, flags.split() + ["--workdir", str(wd)])
  assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
  assert not wd.exists()  # refused before any work


@pytest.mark.parametrize("content, code, says", [
    (None, 2, "holds no .jpg"), (b"not an image", 1, "cannot decode image")])
def test_bad_image_folders_are_refused(tmp_path, capsys, content, code, says):
  root = tmp_path / "images"
  for split in ("train", "test"):
    (root / split / "a").mkdir(parents=True)
    if content is not None:
      (root / split / "a" / "x.jpg").write_bytes(content)
  got, _, err = _main(capsys, SMOKE[:2] + ["--dataset", f"folder:{root}", "--batch-size", "1",
                                           "--train-limit", "1", "--strategy", "baseline",
                                           "--image-size", "32", "--progress", "false",
                                           "--workdir", str(tmp_path / "run")])
  assert got == code and len(err) == 1 and err[0].startswith("error: ") and says in err[0], err


def test_refusal_in_a_process_has_no_traceback(tmp_path):
  for flags in (["--lr", "nan"], ["--dataset", f"folder:{tmp_path / 'missing'}"],
                ["--strategy", "nope"]):
    p = _process(flags + ["--workdir", str(tmp_path / "run")], tmp_path)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and err[0].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr + p.stdout


def test_help_says_what_each_flag_means(capsys):
  with pytest.raises(SystemExit):
    cli_lib.train_main(["--help"])
  text = " ".join(capsys.readouterr().out.split())
  assert "0 = the papers' default for the dataset" in text
  assert "--topk-share" in text and "(default: 0.97)" in text


def test_config_validate():
  assert Config().validate() == Config()
  for bad in ({"lr": float("nan")}, {"alpha": 0.0}, {"budget": -1}, {"su_scheme": 9},
              {"batch_size": True}, {"strategy": "x"}, {"dataset": "folder:"}):
    with pytest.raises(ConfigError):
      Config(**bad).validate()


def test_su_scheme_over_budget(capsys):
  cfg = Config(arch="mbv2-w0.35", strategy="su", su_scheme=1, budget=27_000)
  with pytest.raises(ConfigError, match="28,282 units, more than --budget 27,000"):
    experiment.check_config(cfg)
  # The papers' own budget of scheme 1 (a known 336-unit discrepancy) runs, saying what it uses.
  experiment.check_config(Config(arch="mbv2-w0.35", strategy="su", su_scheme=1, budget=27_946))
  assert "uses 28,282 units" in capsys.readouterr().out
  experiment.check_config(Config(arch="mcunet-in1", strategy="su", su_scheme=5,
                                    budget=112_640))


@pytest.mark.slow
def test_su_records_the_units_it_uses():
  import jax
  from trady_jax import costs, strategies
  from trady_jax import models
  from trady_jax.models import schemes
  model, params = models.load_model("mbv2-w0.35", 10, pretrained=False)
  net = costs.trace(model, (1, 128, 128, 3))
  counts = schemes.scheme_counts("mbv2-w0.35", 1, net)
  s = selector_lib.Selector(strategies.get("su"), params, net, 27_946, scheme_counts=counts)
  selection = s.select(jax.random.key(0), 0, params, s.init_state())
  assert strategies.selection_summary(selection, net)["units"] == 28_282  # what a record shows


# ------------------------------------------------------------------------------------------------
# Divergence


@pytest.mark.slow
def test_diverging_run_stops_and_is_not_counted(tmp_path):
  wd = tmp_path / "res" / "run"
  p = _process(SMOKE + ["--lr", "1e30", "--workdir", str(wd)], tmp_path)
  err = p.stderr.strip().splitlines()
  assert p.returncode == DivergedError.exit_code and len(err) == 1, p.stderr
  assert err[0].startswith("error: training diverged at epoch 1") and "Traceback" not in p.stdout
  assert not (wd / "final.json").exists() and not list((wd / "checkpoints").glob("[0-9]*"))
  assert json.loads((wd / records.DIVERGED).read_text())["epoch"] == 1
  # Even a final.json beside it (e.g. from an older version) is never counted as finished.
  atomic.write_json_atomic(wd / "final.json", {
      "arch": "tiny", "dataset": "synthetic", "strategy": "baseline", "seed": 0,
      "test_accuracy": 0.1, "train_loss": float("nan")})
  assert not records.is_finished(wd)
  with pytest.warns(records.ResultsWarning, match="diverged"):
    assert records.load_runs(tmp_path / "res") == []
  (wd / records.DIVERGED).unlink()
  with pytest.raises(ValueError, match="train_loss not finite"):
    records.read_final(wd / "final.json")
  (wd / records.DIVERGED).write_text("{}")
  p = _process(SMOKE + ["--lr", "1e30", "--workdir", str(wd)], tmp_path)
  assert p.returncode != 0 and "diverged" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_nan_loss_stops_at_its_step(tmp_path):
  with pytest.raises(DivergedError, match=r"at epoch \d+, step \d+ \(loss (nan|inf)\)") as e:
    _run(tmp_path, "trady", lr=1e30).run()
  epoch = json.loads((tmp_path / records.DIVERGED).read_text())["epoch"]
  assert epoch == e.value.record["epoch"]
  assert all(int(d.name) < epoch for d in (tmp_path / "checkpoints").glob("[0-9]*"))


# ------------------------------------------------------------------------------------------------
# One run, one workdir, one process


def _holder_process(wd):
  """A process that holds ``wd``'s lock until killed (e.g. a trainer whose launcher died)."""
  code = (f"import time; from trady_jax import workdir; workdir.acquire({str(wd)!r}); print('held', flush=True);"
          " time.sleep(600)")
  p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == "held"
  return p


def test_second_process_on_a_workdir_is_refused(tmp_path):
  wd = tmp_path / "run"
  holder = _holder_process(wd)
  try:
    p = _process(SMOKE + ["--workdir", str(wd)], tmp_path)
    err = p.stderr.strip().splitlines()
    assert p.returncode == workdir.WorkdirBusy.exit_code and len(err) == 1, p.stderr
    assert "is in use by process" in err[0] and f":{holder.pid}" in err[0]
    with pytest.raises(workdir.WorkdirBusy):
      workdir.acquire(wd)
  finally:
    holder.kill()
    holder.wait()
  assert workdir.holder(wd) is None and workdir.stale(wd)  # the kernel dropped the lock
  with workdir.locked(wd):
    assert workdir.holder(wd) is not None
  assert not (wd / workdir.LOCK).exists()


def test_grid_skips_runs_held_by_an_orphaned_trainer(tmp_path, capsys):
  res = tmp_path / "res"
  args = ["--archs", "mbv2-w0.35", "--datasets", "cifar10", "--strategies", "trady",
          "--budgets", "27946", "--seeds", "0,1", "--results", str(res)]
  runs = plan.expand(["mbv2-w0.35"], ["cifar10"], ["trady"], "27946", [0, 1], str(res))
  fake = tmp_path / "fake_python.sh"
  fake.write_text("#!/bin/sh\necho \"$@\" >> " + str(tmp_path / "calls.txt") + "\n")
  fake.chmod(0o755)
  orphan = _holder_process(runs[0].workdir)
  try:
    counts = launch.run_all(runs, [str(fake)], [])
    assert counts["busy"] == 1 and len((tmp_path / "calls.txt").read_text().splitlines()) == 1
    assert cli.main(["--status", *args]) == 0
    out = capsys.readouterr().out
    assert "1 running (locked)" in out and f":{orphan.pid}" in out
  finally:
    orphan.kill()
    orphan.wait()
  (Path(runs[1].workdir) / workdir.LOCK).write_text("")  # an empty lock file: nobody's
  assert cli.main(["--status", *args]) == 0
  out = capsys.readouterr().out
  assert "0 running (locked)" in out and out.count("stale lock") == 2
  (Path(runs[1].workdir) / records.DIVERGED).write_text("{}")
  assert cli.main(["--status", *args]) == 0
  assert "1 diverged" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# Nothing silently thrown away


@pytest.mark.parametrize("vanish", ["deleted", "renamed-dir", "renamed-steps"])
def test_metrics_kept_when_checkpoints_vanished(tmp_path, vanish):
  _run(tmp_path, "trady").run()
  metrics = (tmp_path / "metrics.jsonl").read_text()
  ckpt = tmp_path / "checkpoints"
  if vanish == "deleted":
    shutil.rmtree(ckpt)
  elif vanish == "renamed-dir":
    ckpt.rename(tmp_path / "checkpoints-tmp")
  else:
    for d in ckpt.iterdir():
      d.rename(d.with_name(d.name + "-tmp"))
  with pytest.raises(workdir.WorkdirError, match="no checkpoint to resume from"):
    _run(tmp_path, "trady").run()
  assert (tmp_path / "metrics.jsonl").read_text() == metrics


def test_damaged_last_metrics_line_does_not_block_a_resume(tmp_path):
  class Killed(Exception):
    pass

  def kill(epoch, _):
    if epoch == 2:
      raise Killed

  with pytest.raises(Killed):
    _run(tmp_path, "trady").run(on_epoch_end=kill)
  with (tmp_path / "metrics.jsonl").open("a") as f:
    f.write('{"epoch": 3, "train_lo')  # cut short by the kill
  _run(tmp_path, "trady").run()
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3]


@pytest.mark.slow
def test_rerun_of_a_finished_run_keeps_final_json(tmp_path, capsys):
  argv = SMOKE + ["--workdir", str(tmp_path / "run")]
  code, _, _ = _main(capsys, argv)
  final = tmp_path / "run" / "final.json"
  before = final.read_bytes()
  assert code == 0 and json.loads(before)["compilations"] == 1
  code, out, err = _main(capsys, argv)
  assert code == 0 and final.read_bytes() == before and "left as it was" in out, err
