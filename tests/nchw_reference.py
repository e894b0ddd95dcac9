"""NCHW reference ops with BatchNorm kept apart, and random weights in PyTorch layouts."""

import jax.numpy as jnp
import numpy as np
from jax import lax


def ref_conv(x, w, stride=1, groups=1):
  k = w.shape[-1] // 2
  return lax.conv_general_dilated(x, w, (stride, stride), [(k, k)] * 2, feature_group_count=groups,
                                  dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                  precision=lax.Precision.HIGHEST)


def ref_bn(x, sd, p, eps=1e-5):
  s = lambda n: sd[f"{p}.{n}"][None, :, None, None]
  return (x - s("running_mean")) / np.sqrt(s("running_var") + eps) * s("weight") + s("bias")


def rand_bn(rng, sd, p, c):
  sd[f"{p}.weight"], sd[f"{p}.bias"] = rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c)
  sd[f"{p}.running_mean"], sd[f"{p}.running_var"] = rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)
  sd[f"{p}.num_batches_tracked"] = np.array(7)


def rand_conv(rng, sd, key, o, i, k, bn=None):
  sd[key] = rng.normal(0, np.sqrt(2 / (i * k * k)), (o, i, k, k))
  if bn:
    rand_bn(rng, sd, bn, o)


def n_params(sd):
  return sum(v.size for k, v in sd.items() if not k.endswith(("running_mean", "running_var",
                                                                "num_batches_tracked")))


def assert_close(got, want, rtol):
  np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-4 * np.abs(want).max())


def apply(module, params, x, **kw):
  return np.asarray(module.apply({"params": params}, jnp.asarray(x, jnp.float32), **kw))
