"""Generated images for runs with neither network nor local data.

Every class has its own pair of colours and a sinusoidal grating of its own orientation and
frequency; each example draws a phase, small orientation/frequency jitter, a brightness change and
pixel noise. Colour survives random crops and the grating survives flips well enough for a small CNN
to learn the classes within a few epochs. Images are generated on access from ``(seed, index)``:
nothing is stored.
"""

from __future__ import annotations

import numpy as np

_SPLITS = {"train": 0, "test": 1}  # split -> stream tag, so train and test examples differ


class GeneratedExamples:
  """What generated sources share: ``num_examples`` examples of a ``split``, example ``i`` drawn
  from its own stream ``(seed, split, i)`` (so any order, any worker, gives the same example)."""
  num_examples: int
  seed: int
  split: str
  labels: np.ndarray

  @staticmethod
  def check_split(split: str) -> None:
    if split not in _SPLITS:
      raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLITS)}")

  def __len__(self) -> int:
    return self.num_examples

  def example(self, index: int) -> tuple[int, np.random.Generator]:
    """``(label, rng)`` of example ``index`` (``IndexError`` out of range)."""
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range for {self.num_examples} examples")
    return int(self.labels[index]), np.random.default_rng([self.seed, 1, _SPLITS[self.split],
                                                           index])


class SyntheticSource(GeneratedExamples):
  """``num_examples`` generated square RGB images; example ``i`` has label ``i % num_classes``."""

  protocol = "standard"

  def __init__(self, num_examples: int, num_classes: int, image_size: int = 32, seed: int = 0,
               split: str = "train"):
    if num_examples < 1 or num_classes < 1 or image_size < 4:
      raise ValueError(f"need num_examples >= 1, num_classes >= 1, image_size >= 4; got "
                       f"{num_examples}, {num_classes}, {image_size}")
    self.num_examples, self.num_classes = int(num_examples), int(num_classes)
    self.check_split(split)
    self.image_size, self.seed, self.split = int(image_size), int(seed), split
    self.class_names = tuple(f"class_{c}" for c in range(self.num_classes))
    self.labels = np.arange(self.num_examples, dtype=np.int64) % self.num_classes
    rng = np.random.default_rng([self.seed, 0, 0, 0])  # class prototypes, shared by the splits
    self._colors = rng.uniform(0.1, 0.9, size=(self.num_classes, 2, 3))
    self._angles = (np.arange(self.num_classes) * np.pi / self.num_classes
                    + rng.uniform(0, np.pi / (2 * self.num_classes)))
    self._freqs = rng.uniform(1.5, 6.0, size=self.num_classes)
    grid = (np.arange(self.image_size) + 0.5) / self.image_size
    self._yy, self._xx = np.meshgrid(grid, grid, indexing="ij")

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    label, rng = self.example(index)
    angle = self._angles[label] + rng.normal(0, 0.1)
    freq = self._freqs[label] * rng.uniform(0.9, 1.1)
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * freq * (self._xx * np.cos(angle) + self._yy * np.sin(angle)) + phase)
    mix = (0.5 + 0.5 * wave)[..., None]
    c0, c1 = self._colors[label]
    image = (mix * c0 + (1 - mix) * c1) * rng.uniform(0.8, 1.2)
    image = image + rng.normal(0, 0.06, size=image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), label

  def __repr__(self) -> str:
    return (f"SyntheticSource({self.num_examples} examples, {self.num_classes} classes, "
            f"{self.image_size}px, seed={self.seed}, split={self.split!r})")


def synthetic(num_examples: int = 1000, num_classes: int = 10, image_size: int = 32, seed: int = 0,
              split: str = "train") -> SyntheticSource:
  """A :class:`SyntheticSource`; ``'train'`` and ``'test'`` share classes but not examples."""
  return SyntheticSource(num_examples, num_classes, image_size, seed, split)
