"""PyTorch checkpoints read without PyTorch (fixtures written by torch 2.13 ``torch.save``)."""

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from trady_jax.models.formats import files, torch_file

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["tiny_zip.pth", "tiny_legacy.pth"])
def test_both_torch_save_layouts_match_the_saved_tensors(name):
  expected = np.load(DATA / "tiny_expected.npz")
  obj = torch_file.load(DATA / name)
  assert obj["epoch"] == 3
  sd = obj["state_dict"]
  assert list(sd) == list(expected.files)
  for k in expected.files:  # float32/16/64, int64, a scalar, a transposed view, a sliced storage
    assert sd[k].dtype == expected[k].dtype and sd[k].shape == expected[k].shape, k
    np.testing.assert_array_equal(sd[k], expected[k], err_msg=k)


def test_load_state_dict_unwraps_and_drops_batch_counters():
  sd = files.load_state_dict(DATA / "tiny_zip.pth")
  assert "conv.weight" in sd and not any(k.endswith("num_batches_tracked") for k in sd)


def test_code_in_a_checkpoint_is_refused(tmp_path):
  class Evil:
    def __reduce__(self):
      return (print, ("pwned",))

  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("evil/data.pkl", pickle.dumps({"w": Evil()}))
  with pytest.raises(ValueError, match="refusing to load builtins.print"):
    torch_file.load(path)
  (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError, match="could not be read"):
    torch_file.load(tmp_path / "junk.pth")
