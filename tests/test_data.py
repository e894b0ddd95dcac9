"""Data sources, transforms and the loader: CPU only, nothing downloaded."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from trady_jax import data
from trady_jax.data import transforms as T


def _image(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- transforms


def test_train_transform_shape_range_determinism():
  img = _image(40, 56)
  a = T.train_transform(img, T.example_rng(0, 3, 7))
  b = T.train_transform(img, T.example_rng(0, 3, 7))
  c = T.train_transform(img, T.example_rng(0, 4, 7))
  assert a.shape == (128, 128, 3) and a.dtype == np.float32
  assert a.min() >= -1.0 and a.max() <= 1.0
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_random_resized_crop_box_in_bounds_and_fallback():
  rng = np.random.default_rng(0)
  for h, w in [(32, 32), (40, 90), (300, 17), (1, 1)]:
    for _ in range(50):
      top, left, ch, cw = T.random_resized_crop_box(h, w, rng)
      assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0
  # an image far outside the ratio range falls back to the centred ratio-clamped crop
  top, left, ch, cw = T.random_resized_crop_box(4, 400, rng, scale=(1.0, 1.0))
  assert (ch, cw) == (4, round(4 * 4 / 3)) and left == (400 - cw) // 2


def test_eval_transform_geometry():
  """Shorter side to 147 (torchvision Resize(int) rounding), then the torchvision centre crop."""
  assert T.TransformConfig().test_resize == 147
  img = _image(200, 301)
  pil = Image.fromarray(img).resize((int(147 * 301 / 200), 147), Image.BILINEAR)  # (221, 147)
  top, left = int(round((147 - 128) / 2)), int(round((221 - 128) / 2))  # 10, 46
  expected = np.asarray(pil.crop((left, top, left + 128, top + 128)), np.float32) / 127.5 - 1
  out = T.eval_transform(img)
  assert out.shape == (128, 128, 3)
  np.testing.assert_allclose(out, expected, atol=1e-6)
  np.testing.assert_array_equal(out, T.eval_transform(img, np.random.default_rng(5)))  # no rng use
  # a tall image: width becomes 147
  assert T.resize_shorter(Image.fromarray(_image(300, 100)), 147).size == (147, 441)


def test_vww_protocol_resizes_whole_image():
  img = np.zeros((60, 90, 3), np.uint8)
  img[:, :45] = 255  # left half white: a plain resize keeps it, a centre crop would not
  out = T.make_transform(False, protocol="resize")(img, None)
  assert out.shape == (128, 128, 3)
  assert np.isclose(out[:, :60].mean(), 1.0) and np.isclose(out[:, 68:].mean(), -1.0)
  train = T.make_transform(True, protocol="resize")
  flips = {float(train(img, T.example_rng(1, 0, i))[:, :60].mean()) for i in range(16)}
  assert flips == {1.0, -1.0}  # flipped sometimes, never cropped or colour-jittered
  with pytest.raises(ValueError, match="protocol"):
    T.make_transform(True, protocol="nope")


def test_color_jitter_keeps_grey_grey_and_uint8():
  grey = Image.fromarray(np.full((8, 8, 3), 100, np.uint8))
  out = np.asarray(T.color_jitter(grey, np.random.default_rng(0), 0.4))
  assert out.dtype == np.uint8 and (out == out[0, 0, 0]).all()
  assert 60 <= out[0, 0, 0] <= 140  # brightness/contrast factors within [0.6, 1.4]


# ----------------------------------------------------------------------------- sources


@pytest.fixture
def folder(tmp_path):
  root = tmp_path / "imgs"
  counts = {"train": {"cat": 3, "ant": 2, "bee": 4}, "test": {"bee": 1, "cat": 2}}
  for split, classes in counts.items():
    for name, n in classes.items():
      d = root / split / name
      d.mkdir(parents=True)
      for i in range(n):
        fmt = ("PNG", "JPEG")[i % 2]
        img = Image.fromarray(_image(20 + i, 30, i))
        img = img.convert("L") if i == 2 else img  # one greyscale file
        img.save(d / f"{i:02d}.{'png' if fmt == 'PNG' else 'jpg'}", fmt)
      (d / "notes.txt").write_text("ignored")
  return root


def test_image_folder_source(folder):
  train = data.image_folder(folder, "train")
  assert train.class_names == ("ant", "bee", "cat") and train.num_classes == 3
  assert len(train) == 9 and train.labels.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]
  image, label = train[4]
  assert image.dtype == np.uint8 and image.shape == (22, 30, 3) and label == 1  # greyscale -> RGB
  test = data.open_dataset("folder", "test", data_dir=folder)
  assert test.class_names == train.class_names and test.labels.tolist() == [1, 2, 2]
  small = data.image_folder(folder, "train", limit_per_class=2)
  assert small.labels.tolist() == [0, 0, 1, 1, 2, 2]
  sub = data.balanced_subset(train, 1)
  assert sub.labels.tolist() == [0, 1, 2] and sub[2][1] == 2
  with pytest.raises(FileNotFoundError, match="train"):
    data.image_folder(folder / "nowhere", "train")


def test_vww_folder_and_help(tmp_path):
  with pytest.raises(data.DataUnavailableError, match="pyvww"):
    data.open_dataset("vww", "train", data_dir=tmp_path / "missing")
  for split in ("train", "test"):
    for name in ("person", "no_person"):
      (tmp_path / "vww" / split / name).mkdir(parents=True)
      Image.fromarray(_image(30, 40)).save(tmp_path / "vww" / split / name / "a.jpg")
  src = data.open_dataset("vww", "test", data_dir=tmp_path / "vww")
  assert src.protocol == "resize" and src.class_names == ("no_person", "person")
  assert src.labels.tolist() == [0, 1]


def test_tfds_source_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    src = data.TfdsSource("pets", "train")
    assert len(src) == 6 and src.num_classes == 37 and src.split == "train"
    image, label = src[3]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    assert 0 <= label < 37
    food = data.open_dataset("food101", "test")
    assert isinstance(food, data.TfdsSource) and food.split == "validation"  # official test split
    batch = next(data.batches(food, 4, train=True, seed=0, num_workers=2))
    assert batch["image"].shape == (4, 128, 128, 3) and batch["label"].dtype == np.int32


def test_dataset_table():
  papers = {"cifar10", "cifar100", "cub200", "flowers102", "food101", "pets", "vww"}
  assert papers <= set(data.DATASETS)
  assert data.dataset_spec("cub200").tfds_name == "caltech_birds2011"
  assert data.dataset_spec("vww").protocol == "resize"
  with pytest.raises(KeyError, match="known"):
    data.dataset_spec("imagenet")


def test_unavailable_dataset_says_so(tmp_path):
  with pytest.raises(data.DataUnavailableError, match="download=True"):
    data.open_dataset("cifar100", "train", data_dir=tmp_path)


def test_synthetic_source_is_deterministic_and_learnable():
  train = data.synthetic(200, 5, image_size=32, seed=3)
  again = data.synthetic(200, 5, image_size=32, seed=3)
  test = data.open_dataset("synthetic", "test", num_examples=100, num_classes=5, seed=3)
  image, label = train[7]
  assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and label == 7 % 5
  np.testing.assert_array_equal(image, again[7][0])
  assert not np.array_equal(image, test[7][0])  # same class prototypes, different examples
  assert np.bincount(train.labels).tolist() == [40] * 5
  # even a nearest-class-mean colour classifier separates the classes
  feats = lambda s: np.stack([s[i][0].reshape(-1, 3).mean(0) for i in range(len(s))])
  means = np.stack([feats(train)[train.labels == c].mean(0) for c in range(5)])
  pred = np.argmin(((feats(test)[:, None] - means) ** 2).sum(-1), axis=1)
  assert (pred == test.labels).mean() > 0.8


# ----------------------------------------------------------------------------- loader


def _collect(source, **kw):
  return list(data.batches(source, 8, **kw))


def test_loader_shapes_determinism_and_resume():
  src = data.synthetic(44, 4, image_size=16)
  epoch0 = _collect(src, train=True, seed=1, epoch=0, num_workers=2)
  assert len(epoch0) == 5 == data.steps_per_epoch(44, 8)  # last partial batch dropped
  b = epoch0[0]
  assert b["image"].shape == (8, 128, 128, 3) and b["image"].dtype == np.float32
  assert b["label"].shape == (8,) and b["label"].dtype == np.int32
  assert -1.0 <= b["image"].min() and b["image"].max() <= 1.0
  serial = _collect(src, train=True, seed=1, epoch=0, num_workers=0)
  for x, y in zip(epoch0, serial):  # thread count does not change anything
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  resumed = _collect(src, train=True, seed=1, epoch=0, num_workers=2, start_step=3)
  assert len(resumed) == 2
  for x, y in zip(epoch0[3:], resumed):
    np.testing.assert_array_equal(x["image"], y["image"])
  epoch1 = _collect(src, train=True, seed=1, epoch=1, num_workers=2)
  assert not np.array_equal(epoch0[0]["image"], epoch1[0]["image"])
  order0 = data.epoch_order(44, shuffle=True, seed=1, epoch=0)
  assert sorted(order0) == list(range(44))
  assert not np.array_equal(order0, data.epoch_order(44, shuffle=True, seed=1, epoch=1))
  assert not np.array_equal(order0, data.epoch_order(44, shuffle=True, seed=2, epoch=0))


def test_loader_eval_order_remainder_and_padding():
  src = data.synthetic(20, 4, image_size=16)
  full = _collect(src, train=False, num_workers=2)
  assert [len(b["label"]) for b in full] == [8, 8, 4]  # eval keeps the partial batch
  assert np.concatenate([b["label"] for b in full]).tolist() == src.labels.tolist()
  np.testing.assert_allclose(full[0]["image"][1], T.eval_transform(src[1][0]))
  padded = _collect(src, train=False, num_workers=0, pad_remainder=True)
  assert [b["image"].shape[0] for b in padded] == [8, 8, 8]
  assert padded[2]["mask"].tolist() == [True] * 4 + [False] * 4 and padded[0]["mask"].all()
  assert data.steps_per_epoch(20, 8, drop_remainder=False) == 3
  with pytest.raises(ValueError, match="non-negative"):
    next(data.batches(src, 8, train=True, seed=-1))


def test_loader_rows_are_the_per_example_transform():
  """uint8 rows normalised once per batch == the float transform of each example."""
  src = data.synthetic(16, 4, image_size=16)
  b = next(data.batches(src, 8, train=True, seed=3, epoch=2, num_workers=2))
  order = data.epoch_order(16, shuffle=True, seed=3, epoch=2)
  for k, i in enumerate(order[:8]):
    np.testing.assert_array_equal(b["image"][k], T.train_transform(src[i][0],
                                                                  T.example_rng(3, 2, i)))
  custom = lambda image, rng: np.full((4, 4, 3), rng.uniform(), np.float64)  # any callable
  c = next(data.batches(src, 8, train=True, seed=3, epoch=2, num_workers=2, transform=custom))
  assert c["image"].shape == (8, 4, 4, 3) and c["image"].dtype == np.float32
  assert c["image"][1, 0, 0, 0] == np.float32(T.example_rng(3, 2, order[1]).uniform())


def test_loader_early_exit_releases_threads():
  it = data.batches(data.synthetic(200, 4, image_size=16), 8, train=True, num_workers=2)
  next(it)
  it.close()  # must not hang or raise


# ----------------------------------------------------------------------------- offline CIFAR-10


@pytest.fixture(scope="module")
def mini_cifar_archive(tmp_path_factory, request):
  """One real JPEG per (split, class) copied out of ../shared's CIFAR-10 archive."""
  shared_dir = request.getfixturevalue("shared_dir")
  archive = data.find_cifar10_archive(shared_dir)
  if archive is None:
    pytest.skip(f"{shared_dir} has no data/cifar10-jpeg.tar.gz")
  out = tmp_path_factory.mktemp("mini") / "mini.tar.gz"
  seen = set()
  with tarfile.open(archive, "r|gz") as src, tarfile.open(out, "w:gz") as dst:
    for member in src:
      parts = member.name.split("/")
      if not member.isfile() or len(parts) != 4 or tuple(parts[1:3]) in seen:
        continue
      seen.add(tuple(parts[1:3]))
      dst.addfile(member, io.BytesIO(src.extractfile(member).read()))
      if len(seen) == 20:
        break
  return out


def test_cifar10_offline_unpacks_once(mini_cifar_archive, tmp_path):
  cache = tmp_path / "cache" / "cifar10-jpeg"
  train, test = data.cifar10_offline(mini_cifar_archive, cache)
  assert len(train) == len(test) == 10 and train.class_names == data.CIFAR10_CLASSES
  assert train.labels.tolist() == list(range(10))
  image, label = test[data.CIFAR10_CLASSES.index("cat")]
  assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and label == 3
  assert [p.name for p in cache.parent.iterdir()] == ["cifar10-jpeg"]  # no temporary left over
  train2, _ = data.cifar10_offline(tmp_path / "no-archive-needed", cache)  # cached: archive unused
  assert train2.paths == train.paths
  src = data.open_dataset("cifar10", "test", data_dir=tmp_path / "no-tfds",
                          shared_dir=mini_cifar_archive, cache_dir=cache)
  assert isinstance(src, data.ImageFolderSource) and len(src) == 10
  batch = next(data.batches(src, 4, train=True, seed=0))
  assert batch["image"].shape == (4, 128, 128, 3)


def test_cifar10_offline_missing(tmp_path):
  with pytest.raises(data.DataUnavailableError, match="offline CIFAR-10"):
    data.cifar10_offline(tmp_path / "nothing", tmp_path / "cache")
