"""The data a run trains and evaluates on, from a ``Config``: tfds, the offline copy, an image
folder or generated data (said plainly), class-balanced subsets, BN calibration batches."""

from __future__ import annotations

from trady_jax.config import ConfigError


def open_data(cfg):
  """``(train, test, num_classes, where)`` for a config: tfds, the offline copy, or generated data.

  ``cfg.offline`` uses only ``../shared`` (or an unpacked copy in the cache). When a dataset cannot
  be found anywhere, this says so plainly and falls back to generated data.
  """
  from trady_jax import data
  name = cfg.dataset
  if data.is_text_dataset(name):
    return _open_text(cfg)
  kwargs = {}
  if name.startswith("folder:"):
    name, kwargs = "folder", {"data_dir": cfg.data_dir or cfg.dataset.split(":", 1)[1]}
  elif cfg.data_dir:
    kwargs = {"data_dir": cfg.data_dir}
  try:
    if cfg.offline and name == "cifar10":
      train, test = data.cifar10_offline()
      where = "offline CIFAR-10 copy"
    else:
      download = not cfg.offline and name in data.DATASETS
      train = data.open_dataset(name, "train", download=download, **kwargs)
      test = data.open_dataset(name, "test", download=download, **kwargs)
      where = type(train).__name__
  except data.DataUnavailableError as e:
    if name == "folder":  # the user's own images: never replaced by generated ones
      raise ConfigError(f"--dataset {cfg.dataset}: {' '.join(str(e).split())}") from None
    print(f"NOTE: {name} is not available here ({str(e).splitlines()[0]}).\n"
          "NOTE: no network and no local copy, so this run uses GENERATED data "
          "(class-dependent colour patterns); its accuracy says nothing about CIFAR-10.",
          flush=True)
    train, test = data.open_dataset("synthetic", "train"), data.open_dataset("synthetic", "test")
    where = "generated data"
  except ValueError as e:  # e.g. an undecodable image or an empty class folder
    raise ConfigError(f"--dataset {cfg.dataset}: {' '.join(str(e).split())}") from None
  num_classes = getattr(train, "num_classes", None) or 10
  train = _limit(train, cfg.train_limit, num_classes, cfg.seed)
  test = _limit(test, cfg.test_limit, num_classes, cfg.seed)
  return train, test, num_classes, where


def _open_text(cfg):
  """``open_data`` for text datasets: GLUE through tfds with the checkpoint's tokenizer (when tfds
  has no copy and cannot download one, generated text, said plainly), or 'synthetic-text':
  generated token ids in the tokenizer's layout, else the arch's (BERT or RoBERTa). Examples are
  ``cfg.image_size`` tokens long (the text models' input size, as ``models.example_input``)."""
  from trady_jax import data
  from trady_jax.data import tokenizer as tokenizer_lib
  from trady_jax.models import hub, registry
  checkpoint = (hub.find_checkpoint(cfg.arch, cfg.weights_dir or None)
                if cfg.arch in registry.TRANSFORMERS else None)
  folder = cfg.tokenizer or next((str(d) for d in (cfg.weights_dir, checkpoint)
                                  if d and tokenizer_lib.has_tokenizer_files(d)), "")
  glue = cfg.dataset != "synthetic-text"
  if glue and not folder:
    raise ConfigError(f"--dataset {cfg.dataset} needs the checkpoint's tokenizer: --tokenizer DIR")
  try:
    tokenizer = data.TextTokenizer(folder) if folder else None
    train = test = None
    if glue:
      kwargs = {"data_dir": cfg.data_dir or None, "download": not cfg.offline,
                "max_length": cfg.image_size}
      try:
        train, test = (data.open_text_dataset(cfg.dataset, split, tokenizer, **kwargs)
                       for split in ("train", "test"))
        where = f"{type(train).__name__} (test = GLUE's validation split)"
      except data.DataUnavailableError as e:
        print(f"NOTE: {cfg.dataset} is not available here ({str(e).splitlines()[0]}).\n"
              "NOTE: no network and no local copy, so this run uses GENERATED text (class marker "
              "tokens); its accuracy says nothing about GLUE.", flush=True)
    if train is None:
      family = "roberta" if tokenizer is None and "roberta" in cfg.arch else "bert"
      train, test = (data.open_text_dataset("synthetic-text", split, tokenizer, seed=cfg.seed,
                                            family=family, max_length=cfg.image_size)
                     for split in ("train", "test"))
      where = "generated text"
  except (ValueError, ImportError) as e:  # an unreadable tokenizer folder, no `tokenizers`
    raise ConfigError(f"--dataset {cfg.dataset}: {' '.join(str(e).split())}") from None
  train = _limit(train, cfg.train_limit, train.num_classes, cfg.seed)
  test = _limit(test, cfg.test_limit, train.num_classes, cfg.seed)
  return train, test, train.num_classes, where


def _limit(source, n, num_classes, seed):
  """A class-balanced subset of ``n`` examples (the first ``n`` when labels are unknown)."""
  from trady_jax import data
  if not n or n >= len(source):
    return source
  if hasattr(source, "labels"):
    return data.balanced_subset(source, max(n // num_classes, 1), seed=seed)
  return data.Subset(source, range(n))


def calibration_batches(cfg, source, images: int = 256):
  """Batches of the first ``images`` training images, no augmentation: the calibration data that
  restores BatchNorm in the BN-folded int8 weights (drawn only when used: a generator)."""
  from trady_jax import data
  n = max(1, min(images, len(source)) // cfg.batch_size)
  it = data.batches(source, cfg.batch_size, train=False, seed=cfg.seed, epoch=0,
                    num_workers=cfg.num_workers, image_size=cfg.image_size, pad_remainder=False)
  return (b["image"] for _, b in zip(range(n), it))
