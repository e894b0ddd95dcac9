"""Weight conversion: BatchNorm and input normalisation folded into the convs."""

import numpy as np
import pytest

from trady_jax.models import convert

from nchw_reference import rand_conv, ref_bn, ref_conv


@pytest.mark.parametrize("groups", [1, 6])
def test_fold_bn_exact(groups):
  rng, sd = np.random.default_rng(3), {}
  rand_conv(rng, sd, "w", 6, 6 // groups, 3, bn="bn")
  sd["b"] = rng.normal(size=6)
  x = rng.normal(size=(2, 6, 9, 9))
  want = ref_bn(ref_conv(x, sd["w"], 2, groups) + sd["b"][None, :, None, None], sd, "bn", 1e-3)
  bn = (sd[f"bn.{n}"] for n in ("weight", "bias", "running_mean", "running_var"))
  w, b = convert.fold_bn(sd["w"], *bn, eps=1e-3, bias=sd["b"])
  np.testing.assert_allclose(ref_conv(x, w, 2, groups) + b[None, :, None, None], want, atol=1e-5)


def test_fold_input_norm_interior():
  rng = np.random.default_rng(4)
  w, b = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
  x = rng.uniform(-1, 1, (1, 3, 12, 12))
  mean, std = np.array(convert.IMAGENET_MEAN), np.array(convert.IMAGENET_STD)
  want = ref_conv((0.5 * x + 0.5 - mean[:, None, None]) / std[:, None, None], w) + b[:, None, None]
  k, c = convert.fold_input_norm(convert.to_hwio(w), b)
  got = ref_conv(x, np.transpose(k, (3, 2, 0, 1))) + c[:, None, None]
  np.testing.assert_allclose(got[..., 1:-1, 1:-1], want[..., 1:-1, 1:-1], atol=1e-4)
