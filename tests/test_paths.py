"""One cache folder and one shared folder for weights and data; the papers' constants in one place."""

import pytest

from trady_jax import config, data, paper, paths
from trady_jax.models import store


def test_shared_and_cache_folders_serve_weights_and_data(tmp_path, monkeypatch):
  shared, cache = (tmp_path / "shared").resolve(), (tmp_path / "cache").resolve()
  monkeypatch.setenv("TRADY_JAX_SHARED", str(shared))
  monkeypatch.setenv("TRADY_JAX_CACHE", str(cache))
  monkeypatch.delenv("TRADY_JAX_WEIGHTS", raising=False)
  assert paths.shared_dirs() == [shared]
  assert store.shipped_dirs() == [shared / "weights"]
  assert store.search_dirs() == [shared / "weights", cache]
  assert data.find_cifar10_archive() is None
  archive = shared / "data" / "cifar10-jpeg.tar.gz"
  archive.parent.mkdir(parents=True)
  archive.write_bytes(b"")
  assert data.find_cifar10_archive() == archive
  archive.unlink()
  with pytest.raises(data.DataUnavailableError, match=str(cache / paths.CIFAR10_CACHE)):
    data.cifar10_offline()


def test_shared_folder_defaults_to_siblings_of_cwd_and_checkout(tmp_path, monkeypatch):
  monkeypatch.delenv("TRADY_JAX_SHARED", raising=False)
  monkeypatch.delenv("TRADY_JAX_CACHE", raising=False)
  (tmp_path / "work").mkdir()
  monkeypatch.chdir(tmp_path / "work")
  assert paths.shared_dirs() == [(tmp_path / "shared").resolve(),
                                 (paths.CHECKOUT.parent / "shared").resolve()]
  assert paths.cache_dir() == paths.Path.home() / ".cache" / "trady_jax"


def test_paper_constants_feed_the_config():
  assert set(paper.EPOCHS) <= set(data.DATASETS)
  cfg = config.Config()
  assert (cfg.lr, cfg.warmup_epochs, cfg.batch_size) == (paper.LR, paper.WARMUP_EPOCHS, 32)
  assert cfg.budget == paper.BUDGETS[cfg.arch][0] == 27_946
  assert config.Config(dataset="cifar10").total_epochs() == 100 + 5
  assert config.Config(dataset="pets").total_epochs() == 200 + 5
  assert config.Config(dataset="wake_vision", epochs=3).total_epochs() == 3 + 5
