"""`models.norm.BatchNorm` against torch.nn.BatchNorm1d / BatchNorm3d: outputs and running
statistics over several train-mode updates (PyTorch folds the unbiased variance into
`running_var`), then eval mode; and that flax's names are kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp

from auxskd_jax.models import norm


def _torch_bn(dim: int, features: int) -> torch.nn.Module:
  bn = torch.nn.BatchNorm1d(features) if dim == 1 else torch.nn.BatchNorm3d(features)
  with torch.no_grad():  # a non-trivial affine part, so outputs test scale and bias too
    bn.weight.copy_(torch.linspace(0.5, 1.5, features))
    bn.bias.copy_(torch.linspace(-0.2, 0.3, features))
  return bn


def _to_torch_layout(x: np.ndarray) -> torch.Tensor:
  """[B, ..., C] -> [B, C, ...]."""
  return torch.from_numpy(np.moveaxis(x, -1, 1).copy())


@pytest.mark.parametrize("shape", [(6, 5), (3, 2, 3, 3, 4)], ids=["1d", "3d"])
def test_matches_torch_over_updates_then_eval(shape):
  rng = np.random.default_rng(0)
  features = shape[-1]
  ours = norm.BatchNorm(use_running_average=False)
  variables = ours.init(jax.random.key(0), jnp.zeros(shape, jnp.float32))
  assert set(variables["params"]) == {"scale", "bias"}
  assert set(variables["batch_stats"]) == {"mean", "var"}
  variables = {"params": {"scale": jnp.linspace(0.5, 1.5, features),
                          "bias": jnp.linspace(-0.2, 0.3, features)},
               "batch_stats": variables["batch_stats"]}
  theirs = _torch_bn(1 if len(shape) == 2 else 3, features).train()

  for step in range(4):
    x = (rng.normal(size=shape) * (1 + step) + step).astype(np.float32)
    y, updates = ours.apply(variables, jnp.asarray(x), mutable=["batch_stats"])
    variables = dict(variables, batch_stats=updates["batch_stats"])
    with torch.no_grad():
      y_ref = theirs(_to_torch_layout(x))
    np.testing.assert_allclose(np.asarray(y), np.moveaxis(y_ref.numpy(), 1, -1),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(variables["batch_stats"]["mean"], theirs.running_mean.numpy(),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(variables["batch_stats"]["var"], theirs.running_var.numpy(),
                               rtol=1e-6, atol=1e-6)

  # flax's BatchNorm would be off by the factor this module exists for
  n = int(np.prod(shape[:-1]))
  assert n / (n - 1) - 1 > 1e-2

  theirs.eval()
  x = rng.normal(size=shape).astype(np.float32)
  y = norm.BatchNorm(use_running_average=True).apply(variables, jnp.asarray(x))
  with torch.no_grad():
    y_ref = theirs(_to_torch_layout(x))
  np.testing.assert_allclose(np.asarray(y), np.moveaxis(y_ref.numpy(), 1, -1),
                             rtol=1e-5, atol=1e-5)


def test_sync_statistics_pool_all_devices():
  """With `axis_name`, statistics (and the unbiased factor's n) are the whole batch's, as
  SyncBatchNorm's, i.e. one BatchNorm1d over the concatenated batch."""
  devices = jax.local_device_count()
  x = np.random.default_rng(1).normal(size=(devices, 3, 4)).astype(np.float32)
  module = norm.BatchNorm(use_running_average=False, axis_name="batch")
  variables = module.init(jax.random.key(0), jnp.zeros((3, 4)))

  def step(v, xs):
    return module.apply(v, xs, mutable=["batch_stats"])

  y, updates = jax.pmap(step, axis_name="batch", in_axes=(None, 0))(variables, jnp.asarray(x))
  theirs = torch.nn.BatchNorm1d(4).train()
  with torch.no_grad():
    y_ref = theirs(torch.from_numpy(x.reshape(-1, 4)))
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 4), y_ref.numpy(), rtol=1e-5, atol=1e-5)
  for d in range(devices):
    np.testing.assert_allclose(updates["batch_stats"]["var"][d], theirs.running_var.numpy(),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["mean"][d],
                               theirs.running_mean.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("relu", [False, True], ids=["bn", "bn_relu"])
@pytest.mark.parametrize("axis_name", [None, "batch"], ids=["local", "pooled"])
def test_closed_form_gradient_is_autodiffs(relu, axis_name):
  """The training normalisation's hand-written gradient equals autodiff of the same two-pass
  formula, on 4 pmapped devices, with statistics per device and pooled (SyncBatchNorm: the
  input gradient then carries every device's loss)."""
  rng = np.random.default_rng(1)
  shape = (4, 3, 2, 3, 3, 5)
  x = jnp.asarray(rng.normal(3.0, 2.0, shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=shape), jnp.float32)
  scale = jnp.linspace(0.5, 1.5, 5)
  bias = jnp.linspace(-0.2, 0.3, 5)
  axes = (0, 1, 2, 3)

  def reference(x, s, b):
    mean, var = norm._stats(x, axes, axis_name)
    y = (x - mean) * (jax.lax.rsqrt(var + norm.EPSILON) * s) + b
    return (jax.nn.relu(y) if relu else y), mean, var

  def closed(x, s, b):
    return norm._normalize_train(x, s, b, norm.EPSILON, axis_name, relu, jnp.dtype(jnp.float32))

  def outputs_and_grads(f):
    def loss(x, s, b, w):
      y, mean, var = f(x, s, b)
      return jnp.sum(y * w), (y, mean, var)
    grad = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)
    return jax.pmap(grad, axis_name="batch", in_axes=(0, None, None, 0))(x, scale, bias, w)

  (want_grads, want_out), (got_grads, got_out) = (outputs_and_grads(reference),
                                                  outputs_and_grads(closed))
  for name, a, b in zip(("dx", "dscale", "dbias", "y", "mean", "var"),
                        (*got_grads, *got_out), (*want_grads, *want_out)):
    assert a.shape == b.shape and a.dtype == b.dtype, name
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * float(jnp.max(jnp.abs(b))),
                               err_msg=name)
  if axis_name is None:  # per-device statistics: the devices' gradients differ
    assert not np.allclose(got_grads[0][0], got_grads[0][1])
