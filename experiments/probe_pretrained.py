"""Check that pretrained weights load correctly: linear probe on CIFAR-10 and ImageNet predictions.

1. Ridge-regression probe on frozen pooled features (CIFAR-10 JPEGs resized to 128x128, [-1, 1]):
   pretrained vs randomly initialised network (the design note measured 53 % vs 20 %).
2. With the pretrained 1000-way ImageNet head: how often the top ImageNet class of CIFAR-10
   airplane / ship / truck test images is a matching ImageNet class, against chance (|set| / 1000)
   and against the rate on the other CIFAR-10 classes' images.

    python experiments/probe_pretrained.py --data ../shared/data/cifar10-jpeg.tar.gz [--json]

The archive is unpacked (only the images used) into a temporary directory outside the repository.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from trady_jax import host_memory
from trady_jax import data
from trady_jax.data import CIFAR10_CLASSES as CLASSES
from trady_jax import models

# ImageNet-1k indices matching a CIFAR-10 class.
IMAGENET_MATCH = {
    "airplane": (404, 895, 405, 908, 812),  # airliner, warplane, airship, wing, space shuttle
    "ship": (510, 628, 554, 625, 814, 780, 484, 871, 403, 724, 913, 914, 472, 833, 694, 536),
    "truck": (867, 675, 717, 864, 569, 555, 866, 734, 656, 609, 407, 561, 586, 595, 803, 565),
}


def extract(archive: Path, dest: Path, per_class: dict[str, int]) -> dict[str, list[Path]]:
  """Unpack the first ``per_class[split]`` images (sorted names) of every class and split."""
  with tarfile.open(archive) as tar:
    members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")]
    chosen, counts = set(), {}
    for m in sorted(members, key=lambda m: m.name):
      _, split, cls, _ = m.name.split("/")
      if split in per_class and counts.get((split, cls), 0) < per_class[split]:
        counts[(split, cls)] = counts.get((split, cls), 0) + 1
        chosen.add(m.name)
    # Archive order: a gzip stream is only cheap to read forwards.
    tar.extractall(dest, members=[m for m in members if m.name in chosen], filter="data")
  return {s: sorted(dest.glob(f"cifar10/{s}/*/*.jpg")) for s in per_class}


def load_images(paths: list[Path], size: int) -> tuple[np.ndarray, np.ndarray]:
  """NHWC float32 images in [-1, 1] (bilinear resize) and their class labels."""
  x = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR))
                for p in paths]).astype(np.float32)
  y = np.array([CLASSES.index(p.parent.name) for p in paths])
  return x / 127.5 - 1.0, y


def forward(module, params, x: np.ndarray, pooled: bool, batch: int = 200) -> np.ndarray:
  """Batched, jitted forward pass (pooled features or logits)."""
  f = jax.jit(lambda p, x: module.apply({"params": p}, x, pooled=pooled))
  out = [np.asarray(f(params, jnp.asarray(x[i:i + batch]))) for i in range(0, len(x), batch)]
  return np.concatenate(out)


def ridge_probe(f_train, y_train, f_test, y_test, lambdas=(1e-2, 1e-1, 1, 10, 100, 1000)) -> float:
  """Test accuracy of one-vs-all ridge regression on standardised features (lambda by 5-fold CV)."""
  mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
  a, b = (f_train - mu) / sd, (f_test - mu) / sd
  a, b = np.hstack([a, np.ones((len(a), 1))]), np.hstack([b, np.ones((len(b), 1))])
  t = np.eye(10)[y_train]

  def fit(x, y, lam):
    return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)

  folds = np.arange(len(a)) % 5
  cv = [np.mean([(a[folds == k] @ fit(a[folds != k], t[folds != k], lam)).argmax(1) ==
                 y_train[folds == k] for k in range(5)]) for lam in lambdas]
  w = fit(a, t, lambdas[int(np.argmax(cv))])
  return float(((b @ w).argmax(1) == y_test).mean())


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--data", default=str(data.find_cifar10_archive()),
                  help="the CIFAR-10 JPEG archive (default: the copy in the shared folder)")
  ap.add_argument("--arch", default="mbv2-w0.35", choices=list(models.MCU_NETS))
  ap.add_argument("--weights-dir", default=None)
  ap.add_argument("--train-per-class", type=int, default=200)
  ap.add_argument("--test-per-class", type=int, default=100)
  ap.add_argument("--size", type=int, default=128)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--json", action="store_true", help="print one JSON line of results last")
  args = ap.parse_args()

  t0 = time.time()
  with tempfile.TemporaryDirectory(prefix="cifar10-probe-") as tmp:
    files = extract(Path(args.data), Path(tmp),
                    {"train": args.train_per_class, "test": args.test_per_class})
    x_train, y_train = load_images(files["train"], args.size)
    x_test, y_test = load_images(files["test"], args.size)
  print(f"data: {len(x_train)} train / {len(x_test)} test images, {args.size}x{args.size} "
        f"({time.time() - t0:.1f} s)")

  # Pooled block features: the int8 mbv2 / proxyless lack the feature-mix conv, so leave it out.
  kw = dict(weights_dir=args.weights_dir, feature_mix=False, imagenet_head=True)
  res = {"arch": args.arch, "n_train": len(x_train), "n_test": len(x_test)}
  pre, pre_params = models.load_model(args.arch, **kw)
  rnd, rnd_params = models.load_model(args.arch, 1000, pretrained=False, feature_mix=False,
                                      seed=args.seed)
  feats = {}
  for name, (m, p) in {"pretrained": (pre, pre_params), "random": (rnd, rnd_params)}.items():
    t = time.time()
    feats[name] = forward(m, p, np.concatenate([x_train, x_test]), pooled=True)
    acc = ridge_probe(feats[name][:len(x_train)], y_train, feats[name][len(x_train):], y_test)
    res[f"probe_{name}"] = acc
    print(f"ridge probe, {name:>10} weights: {100 * acc:.1f} % ({time.time() - t:.1f} s)")

  head = pre_params["classifier"]
  test_feats = feats["pretrained"][len(x_train):]
  logits = test_feats @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
  top5 = np.argsort(-logits, axis=1)[:, :5]
  res["imagenet"] = {}
  for cls, match in IMAGENET_MATCH.items():
    own = y_test == CLASSES.index(cls)
    r = {"chance": len(match) / 1000}
    for k in (1, 5):
      hit = np.isin(top5[:, :k], match).any(1)
      r[f"top{k}_rate"] = float(hit[own].mean())
      r[f"top{k}_other_classes"] = float(hit[~own].mean())
    res["imagenet"][cls] = r
    print(f"ImageNet top-1 (top-5) of CIFAR {cls:>8} images in {len(match):>2} matching classes: "
          f"{100 * r['top1_rate']:5.1f} % ({100 * r['top5_rate']:.1f} %); other CIFAR classes "
          f"{100 * r['top1_other_classes']:.1f} % ({100 * r['top5_other_classes']:.1f} %); "
          f"chance {100 * r['chance']:.1f} %")
  print(f"total {time.time() - t0:.1f} s")
  if args.json:
    print(json.dumps(res))


if __name__ == "__main__":
  host_memory.reexec_with_tunables()  # huge pages for XLA's per-call scratch (host_memory.py)
  warnings.simplefilter("ignore", UserWarning)
  main()
