"""A run from a ``Config``: data, network, ranking and SU scheme resolved (``build_run``),
trained to the end with its ``final.json`` written (``run``)."""

from __future__ import annotations

import json
from pathlib import Path

from trady_jax import costs as costs_lib
from trady_jax import host_memory, models, paths, rankings, strategies, train
from trady_jax import workdir as workdir_lib
from trady_jax.config import Config, ConfigError
from trady_jax.experiment.checks import check_scheme_budget
from trady_jax.experiment.inputs import open_data
from trady_jax.experiment.network import load_ranking, network_for
from trady_jax.models import schemes
from trady_jax.report import records


def default_workdir(cfg: Config) -> str:
  """``runs/<arch>-<dataset>-<strategy>-b<budget>-s<seed>``."""
  return (f"runs/{cfg.arch}-{cfg.dataset.replace(':', '_').replace('/', '_')}-"
          f"{cfg.strategy}-b{cfg.budget}-s{cfg.seed}")


def ranking_of_this_network(cfg: Config, costs, key) -> rankings.Ranking:
  """The ranking of the network ``cfg`` loads when the shipped one is of other weights (e.g. the
  fp32 model-zoo checkpoint a run downloads, where the shipped rankings are of the int8 copies),
  or when none is shipped for the arch.

  The papers rank the network they fine-tune (TraDy App. D.5): this runs ``rank_layers`` once, a
  pass over the run's own training split at its lr and BN mode, says so, and caches the result in
  ``<cache>/rankings/`` under the weights' content hash, so later runs reuse it.
  """
  from trady_jax.experiment.rank import rank_layers  # the ranking run loads its own data and net
  path = (paths.cache_dir() / "rankings" /
          f"{cfg.arch}-{key['weights_sha256'] or 'random'}-{cfg.bn}.json")
  if not path.exists():
    why = (f"the shipped ranking of {cfg.arch} is of other weights than "
           f"{key['weights'] or 'these'}" if rankings.default_path(cfg.arch).exists() else
           f"no layer ranking is shipped for {cfg.arch}")
    print(f"NOTE: {why}; ranking this network first (one pass over the training split, then "
          f"cached in {path})", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    rank_layers(cfg, out=path)
  doc = rankings.load(path, costs)
  rankings.check_network(doc, key, source=f"the cached ranking {path}")
  return doc


def build_run(cfg: Config, workdir: str | Path) -> train.Run:
  """A ``trady_jax.train.Run`` for a config: data, network, ranking and SU scheme resolved."""
  from trady_jax import data  # imports tensorflow-datasets: only when a run is built
  train_src, test_src, num_classes, where = open_data(cfg)
  net, pretrained = network_for(cfg, train_src, num_classes)
  model, params = net.module, net.params
  costs = costs_lib.trace(model, models.registry.example_input(cfg.arch, cfg.image_size))
  strategy = strategies.get(cfg.strategy)
  doc = load_ranking(cfg.arch, cfg.ranking, costs) if strategy.needs_ranking else None
  notes = []
  bn = models.registry.bn_mode(cfg.arch, cfg.bn)
  key = rankings.network_key(net.weights, bn, net.random_init_layers)
  if strategy.needs_ranking and doc is None:  # nothing shipped for this arch: rank it once
    doc = ranking_of_this_network(cfg, costs, key)
  elif doc is not None:
    try:
      source = f"the layer ranking {cfg.ranking or rankings.default_path(cfg.arch).name}"
      notes = rankings.check_network(doc, key, source=source)
    except rankings.RankingMismatch as e:
      if cfg.ranking:  # the user's own file, of another network: refused
        raise ConfigError(f"{e} --arch {cfg.arch} --bn {cfg.bn} --out FILE` and pass "
                          "--ranking FILE") from None
      doc = ranking_of_this_network(cfg, costs, key)
  for note in notes:
    print(f"NOTE: {note}", flush=True)
  counts, biases = None, ()
  if strategy.is_scheme:
    counts = schemes.scheme_counts(cfg.arch, cfg.su_scheme, costs)
    biases = schemes.bias_paths(cfg.arch, cfg.su_scheme, costs)
    check_scheme_budget(cfg, costs.usage(counts)["units"])
  print(f"{cfg.arch} ({'pretrained' if pretrained else 'random init'}), {len(train_src)} train / "
        f"{len(test_src)} test images from {where}, strategy {cfg.strategy}, "
        f"budget {cfg.budget:,} units", flush=True)
  print(f"training on {len(train_src)} images, {cfg.total_epochs()} epochs "
        f"({cfg.warmup_epochs} warm-up), lr {cfg.lr}, bn {bn}, weights "
        f"{net.weights or 'none (random init)'}; random-init layers: "
        f"{'all' if not pretrained else ', '.join(net.random_init_layers) or 'none'}", flush=True)

  def batches(source, batch_size, *, train, seed, epoch):
    return data.batches(source, batch_size, train=train, seed=seed, epoch=epoch,
                        num_workers=cfg.num_workers, image_size=cfg.image_size,
                        pad_remainder=not train)

  provenance = {"pretrained": pretrained, "data": where, "test_images": len(test_src),
                "bn": bn, "weights_file": net.weights,
                "random_init_layers": list(net.random_init_layers), "ranking_notes": notes,
                "host_memory": host_memory.describe()}
  run = train.Run(cfg, workdir, model=model, params=params, train_source=train_src,
                  test_source=test_src, batches=batches, layer_ranking=doc, scheme_counts=counts,
                  batch_stats=net.batch_stats, scheme_biases=biases, provenance=provenance)
  return run


def run(cfg: Config, workdir: str | Path | None = None) -> dict:
  """Train ``cfg`` in ``workdir`` to the end (resuming a checkpoint) and return its final record,
  also written to ``WORKDIR/final.json``; a run that had finished is left as it was.

  >>> import tempfile
  >>> from trady_jax import config, experiment
  >>> cfg = config.Config(arch="tiny", dataset="synthetic", strategy="d-full-random", epochs=1,
  ...                     warmup_epochs=0, max_steps_per_epoch=1, train_limit=64, test_limit=32,
  ...                     progress=False)
  >>> final = experiment.run(cfg, tempfile.mkdtemp() + "/run")  # doctest: +ELLIPSIS
  tiny (random init), ...
  >>> sorted(k for k in final if k in ("test_accuracy", "units", "bn"))
  ['bn', 'test_accuracy', 'units']
  """
  wd = str(workdir or default_workdir(cfg))
  with workdir_lib.locked(wd):
    r = build_run(cfg, wd)
    final = r.run()
    if not r.epochs_trained and records.is_finished(wd):
      print(f"{wd} had finished; its final.json is left as it was")
      return json.loads((r.workdir / "final.json").read_text())
    return records.write_final(r.workdir, {**final, "workdir": wd}, cfg)
