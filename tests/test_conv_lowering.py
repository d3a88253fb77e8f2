"""Every conv lowering computes the same convolution as XLA's autodiff of one 3-D conv
("native"): forward, input and kernel gradients agree to float32 rounding on tiny shapes of
each kind the models use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from auxskd_jax.models import layers

# (input shape, kernel shape, strides, padding): the stem, spatial and temporal convs with
# and without stride, a 1x1x1 downsampling conv and a full 3-D conv (R3D / C3D).
SHAPES = [
    ((2, 3, 10, 10, 3), (1, 7, 7, 3, 5), (1, 2, 2), (0, 3, 3)),
    ((2, 3, 6, 6, 4), (1, 3, 3, 4, 6), (1, 1, 1), (0, 1, 1)),
    ((2, 4, 6, 6, 4), (1, 3, 3, 4, 6), (1, 2, 2), (0, 1, 1)),
    ((2, 4, 5, 5, 6), (3, 1, 1, 6, 4), (1, 1, 1), (1, 0, 0)),
    ((2, 4, 5, 5, 3), (3, 1, 1, 3, 5), (1, 1, 1), (1, 0, 0)),  # more out than in channels
    ((2, 4, 5, 5, 6), (3, 1, 1, 6, 4), (2, 1, 1), (1, 0, 0)),
    ((2, 5, 3, 3, 6), (3, 1, 1, 6, 4), (2, 1, 1), (1, 0, 0)),  # odd length, stride 2
    ((2, 4, 3, 3, 2), (3, 1, 1, 2, 3), (2, 1, 1), (0, 0, 0)),  # a row past the last window
    ((2, 4, 6, 6, 4), (1, 1, 1, 4, 3), (2, 2, 2), (0, 0, 0)),
    ((1, 4, 5, 5, 3), (3, 3, 3, 3, 4), (1, 1, 1), (1, 1, 1)),
]


def _run(lowering, x, kernel, strides, padding, g):
  fn = lambda x, k: layers.conv3d(x, k, strides, padding, lowering=lowering)  # noqa: E731
  y, vjp = jax.vjp(jax.jit(fn), x, kernel)
  return (y, *vjp(g))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[1][:3])) + f"s{s[2]}")
def test_lowerings_match_default(shape):
  xs, ks, strides, padding = shape
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=xs), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=ks), jnp.float32)
  y = layers.conv3d(x, kernel, strides, padding, lowering="native")
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  want = _run("native", x, kernel, strides, padding, g)
  for lowering in layers.CONV_LOWERINGS:
    got = _run(lowering, x, kernel, strides, padding, g)
    for name, a, b in zip(("forward", "d_input", "d_kernel"), got, want):
      assert a.shape == b.shape and a.dtype == b.dtype, (lowering, name)
      scale = float(jnp.max(jnp.abs(b)))
      np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=0, err_msg=f"{lowering} {name}")


def test_auto_on_cpu_is_the_custom_vjp():
  """The CPU "auto" path really uses the per-shape kernel gradient (not silently XLA's)."""
  xs, ks, strides, padding = SHAPES[3]
  x, k = jnp.ones(xs), jnp.ones(ks)
  jaxpr = str(jax.make_jaxpr(jax.grad(
      lambda k: layers.conv3d(x, k, strides, padding, lowering="auto").sum()))(k))
  assert "custom_vjp" in jaxpr or "dot_general" in jaxpr
  assert layers._cpu_kernel_grad_impl(ks, strides, padding) == "taps"


@pytest.mark.parametrize("index", [1, 3])
def test_bfloat16_lowerings_keep_dtype(index):
  xs, ks, strides, padding = SHAPES[index]
  x, k = jnp.ones(xs, jnp.bfloat16), jnp.ones(ks, jnp.bfloat16)
  want = layers.conv3d(x, k, strides, padding, lowering="xla")
  _, vjp = jax.vjp(lambda x, k: layers.conv3d(x, k, strides, padding, lowering="xla"), x, k)
  want_dk = vjp(jnp.ones_like(want))[1]
  for lowering in layers.CONV_LOWERINGS:
    got, vjp = jax.vjp(lambda x, k: layers.conv3d(x, k, strides, padding, lowering=lowering),
                       x, k)
    dx, dk = vjp(jnp.ones_like(got))
    assert got.dtype == dx.dtype == dk.dtype == jnp.bfloat16, lowering
    np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=1e-2)
    np.testing.assert_allclose(np.float32(dk), np.float32(want_dk), rtol=1e-2)


def test_set_conv_lowering_refuses_unknown():
  with pytest.raises(ValueError, match="choose one of"):
    layers.set_conv_lowering("winograd")
  assert layers.conv_lowering() in layers.CONV_LOWERINGS


def test_config_key_selects_and_validates():
  from auxskd_jax import config as config_lib, errors
  from auxskd_jax.train import encoder

  c = config_lib.base_config()
  c.model.width = 8
  c.model.conv_lowering = "im2col"
  try:
    encoder.build_encoder(c, num_classes=3)
    assert layers.conv_lowering() == "im2col"
    c.model.conv_lowering = "bogus"
    with pytest.raises(errors.ConfigError, match="model.conv_lowering"):
      encoder.build_encoder(c, num_classes=3)
  finally:
    layers.set_conv_lowering("auto")
