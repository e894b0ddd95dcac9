"""The PyTorch peer is the same network as the Flax model (skipped without torch)."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from trady_jax import models  # noqa: E402
from trady_jax.models import torch_peer  # noqa: E402
from trady_jax.models.tiny import TinyCNN  # noqa: E402


def _random_params(params, seed=0):
  """Random weights of unit-scale activations (the random init's zero biases hide mistakes)."""
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  out = [rng.normal(0, 1 / np.sqrt(np.prod(a.shape[:-1])) if a.ndim > 1 else 0.1,
                    a.shape).astype(np.float32) for a in leaves]
  return jax.tree.unflatten(tree, out)


@pytest.mark.parametrize("name", ["mbv2-w0.35", "mcunet-in1", "resnet18"])
def test_logits_match(name):
  model, params = models.load_model(name, 10, pretrained=False)
  params = _random_params(params)
  x = np.random.default_rng(1).uniform(-1, 1, (2, 48, 48, 3)).astype(np.float32)
  ref = np.asarray(model.apply({"params": params}, x))
  net = torch_peer.torch_model(model, params)
  with torch.no_grad():
    out = net(torch_peer.to_nchw(x)).numpy()
  assert np.abs(ref).max() > 0.1
  np.testing.assert_allclose(out, ref, atol=1e-3 * np.abs(ref).max())


def test_sgd_step_updates_all_parameters():
  model, params = models.load_model("mbv2-w0.35", 10, pretrained=False)
  net = torch_peer.torch_model(model, _random_params(params))
  before = {k: v.clone() for k, v in net.state_dict().items()}
  step = torch_peer.sgd_step(net, 0.1)
  x = torch_peer.to_nchw(np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)))
  loss = step(x, torch.tensor([0, 1, 2, 3]))
  assert np.isfinite(loss)
  assert all(not torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_unsupported_model_says_so():
  with pytest.raises(NotImplementedError, match="no PyTorch peer for TinyCNN"):
    torch_peer.torch_model(TinyCNN(), {})


def test_timed_full_step_reports_the_step_and_its_forward_pass():
  model, params = models.load_model("mbv2-w0.35", 10, pretrained=False)
  params = _random_params(params)
  rng = np.random.default_rng(2)
  batch = {"image": rng.uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32),
           "label": np.array([0, 1, 2, 3])}
  out = torch_peer.timed_full_step(model, params, batch, {"jax": lambda: None}, repeats=3)
  assert set(out["interleaved_step_s"]) == {"jax"}  # the peer's own entries are popped
  assert out["torch_forward_s"] > 0 and out["torch_full_step_s"] > 0  # no timing comparison:
  # under a loaded test run either can be the slower (benchmarks compare times, tests do not)
