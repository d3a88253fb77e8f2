"""Initialisation: a fresh model's weights follow PyTorch's defaults layer by layer (as the
authors' models, which never re-initialise), and init='kaiming' keeps the earlier scheme."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from auxskd_jax import models
from auxskd_jax.weights import convert
from auxskd_jax.models import init as init_lib

HEADS = {"linear": 5, "linear_segment": 3}
CLIP = jnp.zeros((1, 4, 16, 16, 3), jnp.float32)


def _fresh(name, init, heads=HEADS):
  model = models.build(name, heads=heads, width=8, init=init)
  return convert.to_torch(jax.jit(model.init)(jax.random.PRNGKey(0), CLIP), name)


def _is_bn(key, sd):
  return key.rsplit(".", 1)[0] + ".running_mean" in sd


def _fan_in(key, sd):
  weight = sd[key.rsplit(".", 1)[0] + ".weight"]  # (out, in, ...) in PyTorch's layout
  return int(np.prod(weight.shape[1:]))


def test_factories():
  key = jax.random.PRNGKey(1)
  kernel_init, bias_init = init_lib.dense_init("torch", 400)
  w, b = kernel_init(key, (400, 300)), bias_init(key, (300,))
  assert float(jnp.abs(w).max()) <= 0.05 and float(jnp.abs(w).max()) > 0.049
  np.testing.assert_allclose(float(jnp.std(w)), 0.05 / math.sqrt(3), rtol=0.02)
  assert float(jnp.abs(b).max()) <= 0.05 and float(jnp.std(b)) > 0.02
  kernel_init, bias_init = init_lib.conv_init("kaiming", 27 * 16)
  w = kernel_init(key, (3, 3, 3, 16, 64))
  np.testing.assert_allclose(float(jnp.std(w)), math.sqrt(2 / (27 * 64)), rtol=0.05)
  assert not np.any(bias_init(key, (64,)))
  with pytest.raises(ValueError, match="model.init"):
    init_lib.conv_init("he", 3)


@pytest.mark.parametrize("name", ["r21d_10", "c3d"])
def test_fresh_model_matches_pytorch_defaults_layer_by_layer(name):
  torch = pytest.importorskip("torch")
  from auxskd_jax.testing import reference_torch

  ours = _fresh(name, "torch")
  torch.manual_seed(0)
  theirs = {k: v.numpy() for k, v in
            reference_torch.build_torch(name, heads=HEADS, width=8).state_dict().items()}
  assert set(ours) == set(theirs)
  checked = 0
  for key, t in theirs.items():
    o = ours[key]
    assert o.shape == t.shape, key
    if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
      np.testing.assert_array_equal(o, t, err_msg=key)
    elif _is_bn(key, theirs):  # BN scale 1, bias 0, in both
      np.testing.assert_array_equal(o, t, err_msg=key)
      assert np.all(o == (1.0 if key.endswith("weight") else 0.0)), key
    else:  # conv / linear weight or bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) in both
      bound = 1 / math.sqrt(_fan_in(key, theirs))
      for label, a in (("ours", o), ("torch", t)):
        assert np.abs(a).max() <= bound * (1 + 1e-6), (label, key)
      if t.size >= 300:
        want = bound / math.sqrt(3)
        for label, a in (("ours", o), ("torch", t)):
          assert abs(a.std() / want - 1) < 0.12, (label, key, a.std(), want)
          assert abs(a.mean()) < 0.15 * want, (label, key)
        assert np.abs(o).max() > 0.9 * bound, key
        checked += 1
  assert checked >= 8


def test_kaiming_scheme_is_the_earlier_one():
  ours = _fresh("c3d", "kaiming", heads={"linear": 400})
  for key, a in ours.items():
    if key.endswith("num_batches_tracked") or _is_bn(key, ours):
      continue
    if key == "linear.weight":  # LeCun normal (truncated): std 1/sqrt(fan_in)
      np.testing.assert_allclose(a.std(), 1 / math.sqrt(a.shape[1]), rtol=0.1)
    elif key.endswith(".weight"):  # Kaiming normal, fan_out, ReLU gain
      fan_out = a.shape[0] * int(np.prod(a.shape[2:]))
      np.testing.assert_allclose(a.std(), math.sqrt(2 / fan_out), rtol=0.1, err_msg=key)
    else:
      assert not np.any(a), key  # zero biases
