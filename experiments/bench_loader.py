"""Is the input pipeline ever the bottleneck? Images/s of the loader, the train step and a run.

    python experiments/bench_loader.py [--arch mbv2-w0.35] [--batch 32] [--folder DIR] [--grain]

* ``loader``: ``data.batches`` with the train transforms over the offline CIFAR-10 copy and over an
  image folder (``--folder``, default: generated 500x375 JPEGs, the size of ImageNet photos);
* ``run``: a short ``train.Run`` on the offline CIFAR-10 copy, epochs of ``--steps`` steps;
* ``step``: the same run's epochs in between, whose batches are one cached batch (the step and the
  run loop without the loader). Epoch 0 compiles and is left out; the others alternate, and each
  figure is the median of ``--rounds``.

The run should reach 0.9x the slower of loader and step (``ratios.run_over_slower``). ``--grain`` also times the same pipeline
through ``grain`` (threads, process workers) and checks that it yields the same batches and resumes
from its iterator state (see the :mod:`trady_jax.data.loader` docstring for the measured outcome).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from trady_jax import host_memory
from trady_jax import experiment
from trady_jax import data, paper
from trady_jax.config import Config
from trady_jax.data import transforms as T


def make_folder(root: Path, classes: int = 4, per_class: int = 168, size=(500, 375)) -> Path:
  """``root/train/<class>/*.jpg``: smooth random photos-like JPEGs (decode cost of real photos)."""
  rng = np.random.default_rng(0)
  for c in range(classes):
    d = root / "train" / f"class{c}"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
      small = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
      img = Image.fromarray(small).resize(size, Image.BICUBIC)
      noise = rng.integers(-12, 13, (size[1], size[0], 3))
      img = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))
      img.save(d / f"{i:04d}.jpg", quality=90)
  return root


def images_per_s(batches, n: int) -> float:
  """Images/s over ``n`` batches after the first (which includes start-up)."""
  it = iter(batches)
  next(it)
  t, count = time.perf_counter(), 0
  for _, b in zip(range(n), it):
    count += len(b["label"])
  return count / (time.perf_counter() - t)


def alternating(batches, steps: int):
  """A run's ``batches`` whose even training epochs repeat one cached batch: the step alone, in the
  same loop, interleaved with the loader's epochs (epoch 0 also compiles)."""
  cached = {}

  def fn(source, batch_size, *, train, seed, epoch):
    if not train or epoch % 2:
      return batches(source, batch_size, train=train, seed=seed, epoch=epoch)
    if "batch" not in cached:
      cached["batch"] = next(iter(batches(source, batch_size, train=True, seed=seed, epoch=0)))
    return itertools.repeat(cached["batch"], steps)

  return fn


def grain_batches(source, batch_size: int, *, seed: int, epoch: int, threads: int = 0,
                  processes: int = 0, state=None):
  """The same batches as ``data.batches(..., train=True)``, through a grain pipeline.

  Order and augmentation come from the loader's ``(seed, epoch[, index])`` generators, so the two
  pipelines can be compared batch for batch. Returns the grain iterator (``get_state`` /
  ``set_state`` for resume).
  """
  import grain
  order = data.epoch_order(len(source), shuffle=True, seed=seed, epoch=epoch)
  transform = T.make_transform(True, protocol=getattr(source, "protocol", "standard"))

  def load(position):  # uint8 rows, normalised once per batch, as the threaded loader does
    index = int(order[position])
    image, label = source[index]
    return transform.pixels(image, T.example_rng(seed, epoch, index)), np.int32(label)

  steps = data.steps_per_epoch(len(order), batch_size)
  ds = grain.MapDataset.range(steps * batch_size).map(load).batch(batch_size)
  ds = ds.map(lambda b: {"image": transform.normalize(b[0]), "label": b[1]})
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(threads, 1),
                                               prefetch_buffer_size=2 * batch_size))
  if processes:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=processes,
                                                           per_worker_buffer_size=2))
  it = iter(it_ds)
  if state is not None:
    it.set_state(state)
  return it


def compare_grain(sources: dict, batch: int, n: int, rounds: int, workers: int) -> dict:
  """Throughput, determinism and resume of grain (threads / processes) vs the threaded loader."""
  try:
    import grain  # noqa: F401
    from absl import flags
  except ImportError:
    print("grain is not installed (pip install grain): comparison skipped", flush=True)
    return {"grain": "not installed"}
  if not flags.FLAGS.is_parsed():  # grain reads absl flags in its worker processes
    flags.FLAGS.mark_as_parsed()
  variants = {
      "threaded": lambda s: data.batches(s, batch, train=True, seed=0, epoch=1,
                                         num_workers=workers),
      "grain_threads": lambda s: grain_batches(s, batch, seed=0, epoch=1, threads=workers),
      "grain_processes": lambda s: grain_batches(s, batch, seed=0, epoch=1, processes=workers),
  }
  out = {}
  for where, src in sources.items():
    times = {k: [] for k in variants}
    starts = {k: [] for k in variants}
    for r in range(rounds):  # interleaved, each round in a rotated order
      names = list(variants)
      for k in names[r % len(names):] + names[:r % len(names)]:
        make = variants[k]
        t = time.perf_counter()
        it = iter(make(src))
        first = next(it)
        starts[k].append(time.perf_counter() - t)
        times[k].append(images_per_s(_chain(first, it), n))
    ref = list(zip(range(3), data.batches(src, batch, train=True, seed=0, epoch=1, num_workers=0)))
    res = {}
    for k, make in variants.items():
      got = list(zip(range(3), make(src)))
      same = all(np.array_equal(a[1]["image"], b[1]["image"]) and
                 np.array_equal(a[1]["label"], b[1]["label"]) for a, b in zip(ref, got))
      res[k] = {"images_per_s": statistics.median(times[k]),
                "first_batch_s": statistics.median(starts[k]), "same_batches": same}
    res["threaded"]["resume_exact"] = _same(
        next(iter(data.batches(src, batch, train=True, seed=0, epoch=1, start_step=2))), ref[2][1])
    for k, kw in (("grain_threads", {"threads": workers}), ("grain_processes",
                                                            {"processes": workers})):
      it = grain_batches(src, batch, seed=0, epoch=1, **kw)
      next(it), next(it)
      state = it.get_state()
      resumed = grain_batches(src, batch, seed=0, epoch=1, state=state, **kw)
      res[k]["resume_exact"] = _same(next(resumed), ref[2][1])
    for k, v in res.items():
      print(f"{where:>7} {k:>16}: {v['images_per_s']:7.0f} img/s  first batch "
            f"{v['first_batch_s']:.2f} s  same batches {v['same_batches']}  resume exact "
            f"{v['resume_exact']}", flush=True)
    out[where] = res
  return out


def _chain(first, it):
  yield first
  yield from it


def _same(a, b) -> bool:
  return bool(np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"]))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--arch", default="mbv2-w0.35")
  ap.add_argument("--budget", type=int, default=paper.BUDGETS["mbv2-w0.35"][0])
  ap.add_argument("--strategy", default="trady")
  ap.add_argument("--batch", type=int, default=paper.BATCH_SIZE)
  ap.add_argument("--workers", type=int, default=Config.num_workers, help="loader threads")
  ap.add_argument("--batches", type=int, default=20, help="batches per loader measurement")
  ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
  ap.add_argument("--steps", type=int, default=30, help="run: steps per epoch")
  ap.add_argument("--folder", default="", help="image folder root/train/<class>/ (default: "
                  "generated 500x375 JPEGs)")
  ap.add_argument("--grain", action="store_true", help="compare with grain pipelines")
  ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
  args = ap.parse_args(argv)

  tmp = tempfile.TemporaryDirectory()
  cifar, _ = data.cifar10_offline()
  folder_root = Path(args.folder) if args.folder else make_folder(Path(tmp.name) / "folder")
  sources = {"cifar10": cifar, "folder": data.image_folder(folder_root, "train")}
  loader = {k: [] for k in sources}
  for r in range(args.rounds):  # interleaved: machine load drifts
    for k, src in sources.items():
      loader[k].append(images_per_s(data.batches(src, args.batch, train=True, seed=0, epoch=r,
                                                 num_workers=args.workers), args.batches))
  cfg = Config(arch=args.arch, dataset="cifar10", offline=True, budget=args.budget,
               strategy=args.strategy, batch_size=args.batch, num_workers=args.workers,
               epochs=2 * args.rounds + 1, warmup_epochs=0, max_steps_per_epoch=args.steps,
               test_limit=2 * args.batch, progress=False, lr=0.01)
  run = experiment.build_run(cfg, Path(tmp.name) / "run")
  run.batches = alternating(run.batches, run.steps_per_epoch)
  epochs = []
  result = run.run(on_epoch_end=lambda e, rec: epochs.append(rec["images_per_s"]))
  report = {"arch": args.arch, "strategy": args.strategy, "batch": args.batch,
            "workers": args.workers, "cpu_count": os.cpu_count(),
            "loader_images_per_s": {k: statistics.median(v) for k, v in loader.items()},
            "step_images_per_s": statistics.median(epochs[2::2]),
            "run_images_per_s": statistics.median(epochs[1::2]),
            "epoch_images_per_s": epochs, "run_compilations": result["compilations"]}
  slower = min(report["loader_images_per_s"]["cifar10"], report["step_images_per_s"])
  report["ratios"] = {
      "run_over_slower": report["run_images_per_s"] / slower,
      # each loader epoch over the step epoch after it: robust to load drifting between rounds
      "run_over_step_paired": statistics.median(
          r / s for r, s in zip(epochs[1::2], epochs[2::2])),
      "loader_over_step": {k: v / report["step_images_per_s"]
                           for k, v in report["loader_images_per_s"].items()}}
  for k, v in report["loader_images_per_s"].items():
    print(f"loader ({k}, {args.workers} threads): {v:8.0f} img/s", flush=True)
  print(f"step ({args.arch} {args.strategy}, batch {args.batch}): "
        f"{report['step_images_per_s']:8.1f} img/s")
  print(f"run (loader epochs of {args.steps} steps, median): "
        f"{report['run_images_per_s']:8.1f} img/s = "
        f"{report['ratios']['run_over_slower']:.3f}x the slower of loader and step "
        f"({report['ratios']['run_over_step_paired']:.3f}x the step, paired by round)")
  if args.grain:
    report["grain"] = compare_grain(sources, args.batch, args.batches, args.rounds, args.workers)
  tmp.cleanup()
  if args.json:
    print(json.dumps(report))
  return report


if __name__ == "__main__":
  host_memory.reexec_with_tunables()  # huge pages for XLA's per-call scratch (host_memory.py)
  main()
