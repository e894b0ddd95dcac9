"""Data parallelism on 4 forced CPU devices matches 1 device, with less memory per device."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent(r"""
  import json
  import jax, jax.numpy as jnp, numpy as np, optax
  from trady_jax import costs, parallel, samplers, sparse_update, steps, xla
  from trady_jax import selection as S
  from trady_jax.models.tiny import TinyCNN

  assert jax.device_count() == 4, jax.devices()
  model = TinyCNN(num_classes=4, width=8)
  params0 = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  net = costs.trace(model, (1, 32, 32, 3))
  sampler = samplers.uniform(params0, net, 3000)
  draw = jax.jit(sampler.sample)
  tx = optax.chain(sparse_update(), optax.sgd(0.1))
  step = steps.make_train_step(model, tx)
  rng = np.random.default_rng(0)
  batches = [{"image": rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
              "label": rng.integers(0, 4, 16).astype(np.int32)} for _ in range(3)]
  out = {}
  for n in (1, 4):
    mesh = parallel.mesh(jax.devices()[:n])
    f = parallel.jit_train_step(step, mesh)
    p, o = parallel.replicate(params0, mesh), parallel.replicate(tx.init(params0), mesh)
    sels = []
    for epoch, b in enumerate(batches):
      s = parallel.replicate(draw(jax.random.fold_in(jax.random.key(1), epoch)), mesh)
      sels.append({k: v.tolist() for k, v in S.as_numpy(s).items()})
      p, o, m = f(p, o, s, parallel.shard_batch(b, mesh))
    stats = xla.compiled_stats(f, p, o, s, parallel.shard_batch(batches[0], mesh))
    out[n] = {"sels": sels, "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(p)],
              "temp": stats["temp_bytes"], "shards": len(p["classifier"]["kernel"].sharding.device_set)}
  # A chunked frozen prefix (mbv2, trained layers from stage 5 up) on 1 and 4 devices.
  from trady_jax import models
  net2 = models.build_model("mbv2-w0.35", 4)
  q0 = net2.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  c2 = costs.trace(net2, (1, 32, 32, 3))
  pool = [l.path for l in c2.convs if net2.stage_of(l.path) >= 5]
  s2 = samplers.uniform(q0, c2, 2000, pool).sample(jax.random.key(2))
  step2 = steps.make_train_step(net2, tx, prefix_chunks=4)
  for n in (1, 4):
    mesh = parallel.mesh(jax.devices()[:n])
    rep = lambda t: parallel.replicate(t, mesh)
    q, _, _ = parallel.jit_train_step(step2, mesh)(rep(q0), rep(tx.init(q0)), rep(s2),
                                                    parallel.shard_batch(batches[0], mesh))
    out[f"prefix{n}"] = [(np.asarray(a) - np.asarray(b)).ravel().tolist()
                         for a, b in zip(jax.tree.leaves(q), jax.tree.leaves(q0))]
  # BatchNorm in train mode: statistics over the global batch, the same as on one device.
  bn_model = TinyCNN(num_classes=4, width=8, bn="train")
  v0 = bn_model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  sgd = optax.sgd(0.1)
  step3 = steps.make_train_step(bn_model, sgd)
  for n in (1, 4):
    mesh = parallel.mesh(jax.devices()[:n])
    rep = lambda t: parallel.replicate(t, mesh)
    r, _, m3 = parallel.jit_train_step(step3, mesh, batch_stats=True)(
        rep(v0["params"]), rep(sgd.init(v0["params"])), None,
        parallel.shard_batch(batches[0], mesh), rep(v0["batch_stats"]))
    out[f"bn{n}"] = [np.asarray(x).ravel().tolist()
                     for x in jax.tree.leaves((r, m3["batch_stats"]))]
  print("RESULT " + json.dumps(out))
""")


def test_four_devices_match_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
  out = json.loads(line[len("RESULT "):])
  one, four = out["1"], out["4"]
  assert one["sels"] == four["sels"], "the same seed must draw the same channels on 1 or 4 devices"
  for a, b in zip(one["params"], four["params"]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert four["shards"] == 4
  assert four["temp"] < one["temp"], (four["temp"], one["temp"])
  moved = 0
  for a, b in zip(out["prefix1"], out["prefix4"]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    moved += int(np.any(np.asarray(a) != 0))
  assert moved > 1
  for a, b in zip(out["bn1"], out["bn4"]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
