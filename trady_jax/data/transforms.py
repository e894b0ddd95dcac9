"""Image transforms of the papers' protocol (WACV-W 2024 predecessor code), in numpy and PIL.

* train: ``RandomResizedCrop(128, scale=(0.08, 1), ratio=(3/4, 4/3))`` + horizontal flip (p=0.5) +
  ``ColorJitter(0.4, 0.4, 0.4)`` (brightness, contrast, saturation in random order), bilinear;
* test: resize the shorter side to ``ceil(128 / 0.875) = 147``, centre crop 128;
* VWW (``resize_only``): ``Resize((128, 128))`` + flip for training, ``Resize((128, 128))`` to test;
* then normalise with mean = std = 0.5, giving float32 HWC in ``[-1, 1]``.

The geometry and colour operations follow torchvision's PIL code paths (same sampling of the crop
box, ``PIL.ImageEnhance`` for the colour jitter), with a ``numpy.random.Generator`` as the only
source of randomness. ``example_rng(seed, epoch, index)`` gives each example of each epoch its own
stream, so augmentations do not depend on batch composition, data order or thread scheduling.
``make_transform`` returns a ``ProtocolTransform``: the uint8 ``pixels`` of one example, then
``normalize`` (which the loader applies to a whole batch at once).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance

IMAGE_SIZE = 128  # input resolution of the papers
_SHUFFLE_STREAM, _AUGMENT_STREAM = 0, 1  # tags that keep the order and augmentation streams apart

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _check_seed(seed: int, epoch: int) -> None:
  if int(seed) < 0 or int(epoch) < 0:
    raise ValueError(
        f"seed and epoch must be non-negative integers, got seed={seed}, epoch={epoch}")


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
  """Generator that fixes the example order of one epoch."""
  _check_seed(seed, epoch)
  return np.random.default_rng([int(seed), int(epoch), _SHUFFLE_STREAM, 0])


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  """Generator for the augmentation of dataset example ``index`` in ``epoch``."""
  _check_seed(seed, epoch)
  return np.random.default_rng([int(seed), int(epoch), _AUGMENT_STREAM, int(index)])


@dataclasses.dataclass(frozen=True)
class TransformConfig:
  """Parameters of the train/test transforms; the defaults are the papers' protocol."""

  image_size: int = IMAGE_SIZE  # side of the square output image
  scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area fraction range
  ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect-ratio range (w / h)
  hflip: float = 0.5  # probability of a horizontal flip (train only)
  color_jitter: float = 0.4  # brightness/contrast/saturation strength; 0 disables (train only)
  crop_pct: float = 0.875  # test: resize shorter side to ceil(image_size / crop_pct), centre crop
  mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per-channel mean, on the [0, 1] scale
  std: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per-channel std, on the [0, 1] scale
  resize_only: bool = False  # VWW protocol: plain resize to a square (no crop, no colour jitter)

  @property
  def test_resize(self) -> int:
    """Shorter side before the test centre crop (147 at 128)."""
    return math.ceil(self.image_size / self.crop_pct)


def to_pil(image: np.ndarray) -> Image.Image:
  """uint8 HWC (or HW) array -> RGB PIL image."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise TypeError(f"expected a uint8 image, got dtype {image.dtype}")
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  pil = Image.fromarray(image)
  return pil if pil.mode == "RGB" else pil.convert("RGB")


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """``(top, left, h, w)`` sampled as ``torchvision.transforms.RandomResizedCrop.get_params``."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height  # fallback: central crop with the ratio clamped into range
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def color_jitter(image: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
  """``ColorJitter(strength, strength, strength)``: factors in ``[1-s, 1+s]``, random order."""
  enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
  lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
  for k in rng.permutation(3):
    image = enhancers[k](image).enhance(float(rng.uniform(lo, hi)))
  return image


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
  """torchvision ``Resize(int)``: shorter side to ``size``, longer ``int(size * long / short)``."""
  w, h = image.size
  if w <= h:
    new_w, new_h = size, int(size * h / w)
  else:
    new_w, new_h = int(size * w / h), size
  return image.resize((new_w, new_h), Image.BILINEAR)


def center_crop(image: Image.Image, size: int) -> Image.Image:
  """torchvision ``CenterCrop(size)`` for images at least ``size`` on each side."""
  w, h = image.size
  if w < size or h < size:
    raise ValueError(f"image {w}x{h} is smaller than the crop {size}")
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return image.crop((left, top, left + size, top + size))


def normalize(image, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> np.ndarray:
  """uint8 RGB (PIL image, HWC or a batch NHWC) -> float32 ``(x / 255 - mean) / std``.

  A lookup of the 256 values, computed in float32 as ``x * (1 / (255 std)) - mean / std``.
  """
  x = np.asarray(image)
  if x.dtype != np.uint8:
    raise TypeError(f"expected uint8 pixels, got dtype {x.dtype}")
  std = np.asarray(std, np.float32)
  lut = np.arange(256, dtype=np.float32)[:, None] * (1.0 / (255.0 * std))
  lut -= np.asarray(mean, np.float32) / std
  if (lut == lut[:, :1]).all():  # one table for all channels (the default mean = std = 0.5)
    return np.take(lut[:, 0], x)
  return lut[x, np.arange(3)]


def train_pixels(image: np.ndarray, rng: np.random.Generator,
                 config: TransformConfig = TransformConfig()) -> np.ndarray:
  """Training augmentation of one uint8 HWC image -> uint8 ``(S, S, 3)``, before normalising."""
  pil, size = to_pil(image), config.image_size
  if config.resize_only:
    pil = pil.resize((size, size), Image.BILINEAR)
  else:
    top, left, h, w = random_resized_crop_box(pil.height, pil.width, rng, config.scale,
                                              config.ratio)
    pil = pil.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
  if config.hflip > 0 and rng.uniform() < config.hflip:
    pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
  if config.color_jitter > 0 and not config.resize_only:
    pil = color_jitter(pil, rng, config.color_jitter)
  return np.asarray(pil)


def eval_pixels(image: np.ndarray, rng: np.random.Generator | None = None,
                config: TransformConfig = TransformConfig()) -> np.ndarray:
  """Deterministic test transform of one uint8 HWC image -> uint8 ``(S, S, 3)``."""
  del rng  # deterministic
  pil, size = to_pil(image), config.image_size
  if config.resize_only:
    pil = pil.resize((size, size), Image.BILINEAR)
  else:
    pil = center_crop(resize_shorter(pil, config.test_resize), size)
  return np.asarray(pil)


def train_transform(image: np.ndarray, rng: np.random.Generator,
                    config: TransformConfig = TransformConfig()) -> np.ndarray:
  """Training augmentation of one uint8 HWC image -> float32 ``(S, S, 3)``."""
  return normalize(train_pixels(image, rng, config), config.mean, config.std)


def eval_transform(image: np.ndarray, rng: np.random.Generator | None = None,
                   config: TransformConfig = TransformConfig()) -> np.ndarray:
  """Deterministic test transform of one uint8 HWC image -> float32 ``(S, S, 3)``."""
  return normalize(eval_pixels(image, rng, config), config.mean, config.std)


@dataclasses.dataclass(frozen=True)
class ProtocolTransform:
  """``transform(image, rng) -> float32 HWC``, split in two for the loader: ``pixels`` (uint8, per
  example) and ``normalize`` (once per batch, the same arithmetic)."""
  train: bool
  config: TransformConfig

  def pixels(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    return (train_pixels if self.train else eval_pixels)(image, rng, self.config)

  def normalize(self, pixels: np.ndarray) -> np.ndarray:
    return normalize(pixels, self.config.mean, self.config.std)

  def __call__(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    return self.normalize(self.pixels(image, rng))


@dataclasses.dataclass(frozen=True)
class TokenIds:
  """Text examples (protocol ``'text'``): token ids pass unchanged, as int32; no augmentation."""
  dtype = np.int32  # the loader's batch dtype for this transform

  def __call__(self, ids: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    del rng  # deterministic
    return np.asarray(ids, np.int32)


def make_transform(train: bool, *, protocol: str = "standard", image_size: int = IMAGE_SIZE,
                   **overrides) -> ProtocolTransform | TokenIds:
  """``transform(image, rng) -> float32 HWC``; protocol ``'standard'`` or ``'resize'`` (VWW);
  ``'text'``: :class:`TokenIds` (``train``, ``image_size`` and ``overrides`` do not apply)."""
  if protocol == "text":
    return TokenIds()
  if protocol not in ("standard", "resize"):
    raise ValueError(f"unknown transform protocol {protocol!r}; expected 'standard', 'resize' "
                     "or 'text'")
  return ProtocolTransform(train, TransformConfig(image_size=image_size,
                                                  resize_only=protocol == "resize", **overrides))
