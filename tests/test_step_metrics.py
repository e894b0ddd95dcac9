"""Step metrics on the device, batches put there ahead, TensorBoard events; the loop's host syncs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trady_jax import divergence, step_metrics
from tests.test_train import _run


def test_meter_sums_on_device_and_finds_the_first_nonfinite_step():
  meter = step_metrics.DeviceMeter(("loss", "accuracy"))
  losses = [1.0, 2.0, np.nan, np.inf, 3.0]
  for i, l in enumerate(losses, 1):
    meter.add({"loss": jnp.float32(l), "accuracy": jnp.float32(0.5)}, i)
    assert isinstance(meter._state[0]["loss"], jax.Array)  # nothing read back yet
  r = meter.read()
  assert r["steps"] == 5 and r["first_nonfinite_step"] == 3
  assert r["accuracy"] == pytest.approx(2.5) and np.isnan(r["loss"])
  clean = step_metrics.DeviceMeter(("loss",))
  clean.add({"loss": jnp.float32(2.0)}, 1)
  clean.add({"loss": jnp.float32(4.0)}, 2)
  assert clean.read()["first_nonfinite_step"] == 0 and clean.means() == {"loss": 3.0}


def test_prefetch_keeps_order_and_places_ahead():
  placed = []

  def place(b):
    placed.append(b)
    return b * 10

  out = []
  for y in step_metrics.prefetch(iter(range(5)), place, size=2):
    out.append(y)
    assert len(placed) - len(out) == min(2, 5 - len(out))  # two placed ahead while they last
  assert out == [0, 10, 20, 30, 40]
  assert list(step_metrics.prefetch([], place)) == []


# 96 images / 16 = 6 steps an epoch, 3 epochs; one read every log_every steps and one at the end.
@pytest.mark.parametrize("log_every, reads", [(1, 7 * 3), (4, 2 * 3), (100, 1 * 3)])
def test_run_reads_metrics_back_every_log_every_steps(tmp_path, monkeypatch, log_every, reads):
  calls = []
  real = step_metrics.DeviceMeter.read
  monkeypatch.setattr(step_metrics.DeviceMeter, "read", lambda self: calls.append(1) or real(self))
  final = _run(tmp_path, "trady", log_every=log_every).run()
  assert np.isfinite(final["train_loss"])
  assert len(calls) == reads


def test_nonfinite_step_is_named_after_a_deferred_read(tmp_path):
  with pytest.raises(divergence.DivergedError) as e:
    _run(tmp_path, "baseline", lr=1e30, log_every=100).run()
  # Read once, after the epoch's 6th step; the error names the step that went wrong (the first
  # warm-up step has lr 0).
  assert e.value.record["epoch"] == 1 and 2 <= e.value.record["step"] < 6


def test_events_for_tensorboard(tmp_path):
  pytest.importorskip("tensorboardX")
  _run(tmp_path, "trady", log_every=3).run()
  files = list((tmp_path / "events").glob("events.out.tfevents.*"))
  assert files and files[0].stat().st_size > 0
  from tensorboardX.event_file_writer import EventFileWriter  # noqa: F401  (format is tensorboard's)
  data = files[0].read_bytes()
  assert b"epoch/test_accuracy" in data and b"train/loss" in data
