"""The model registry: weight lookup, download into the cache, and the built networks."""

import io

import pytest

from trady_jax import costs
from trady_jax import models
from trady_jax.models import hub, registry, store


def test_registry_lookup_and_download(tmp_path, monkeypatch):
  monkeypatch.setenv("TRADY_JAX_WEIGHTS", str(tmp_path / "w"))
  monkeypatch.setenv("TRADY_JAX_CACHE", str(tmp_path / "cache"))
  dirs = store.search_dirs()
  assert dirs[0] == (tmp_path / "w").resolve() and dirs[-1] == (tmp_path / "cache").resolve()
  assert store.search_dirs(tmp_path) == [tmp_path]
  assert models.find_weights("mcunet-in1", tmp_path) is None
  with pytest.raises(KeyError, match="known"):
    models.load_model("resnet19")
  assert set(store.TORCHVISION_URLS) | set(models.MCU_NETS) | set(hub.HUB_IDS) == set(
      models.NAMES)
  assert hub.find_checkpoint("swin-t", tmp_path) is None
  with pytest.warns(DeprecationWarning, match="trady_jax.models.load_model"):
    assert registry.load_model is models.load_model  # the loaders' former home still answers
  with pytest.raises(AttributeError):
    getattr(registry, "no_such_name")
  urls = []

  def fake_urlopen(url, timeout):
    urls.append(url)
    return io.BytesIO(b"payload")

  monkeypatch.setattr(store.urllib.request, "urlopen", fake_urlopen)
  found = store.download_weights("mcunet-in1")
  assert urls == [store.ZOO_URL + "mcunet-5fps_imagenet.json",
                  store.ZOO_URL + "mcunet-5fps_imagenet.pth"]
  assert found.kind == "zoo" and all(f.parent == tmp_path / "cache" for f in found.files)
  assert models.find_weights("mcunet-in1", source="zoo") == found
  store.download_weights("mcunet-in1")  # cached: no second fetch
  assert len(urls) == 2


@pytest.mark.parametrize("name,convs", [("mbv2-w0.35", 52), ("mcunet-in1", 42),
                                        ("proxyless-w0.3", 61), ("resnet18", 20),
                                        ("resnet50", 53), ("mobilenetv2", 52)])
def test_build_models(name, convs):
  model = models.build_model(name, 10)
  net = costs.trace(model, (1, 64, 64, 3))
  assert len(net.convs) == convs
  assert net.layers[-1].path == "classifier/kernel" and net.layers[-1].out_channels == 10
  assert all(l.path.endswith("/kernel") for l in net.layers)
