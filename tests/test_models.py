"""Encoders: shapes, names, exact parameter counts, jit, bf16, cross-device BN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from auxskd_jax import models
from auxskd_jax.models.layers import conv3d

CLIPS = jax.ShapeDtypeStruct((2, 8, 32, 32, 3), jnp.float32)
KEY = jax.eval_shape(lambda: jax.random.PRNGKey(0))  # threefry or rbg, whichever is in force


def shapes_of(model, clips=CLIPS):
  return jax.eval_shape(lambda k, x: model.init(k, x), KEY, clips)


def numpy_variables(model, seed=0, clips=CLIPS):
  """Random variables without jax.random (whose XLA:CPU compile is slow): kernels scaled
  like the reference's init, BN statistics away from their defaults so eval mode is tested."""
  rng = np.random.default_rng(seed)
  flat = {}
  for path, s in traverse_util.flatten_dict(shapes_of(model, clips)).items():
    leaf = path[-1]
    if leaf == "kernel":
      fan_out = s.shape[-1] * int(np.prod(s.shape[:-2]))
      value = rng.normal(0, np.sqrt(2 / fan_out), s.shape)
    elif leaf in ("scale", "var"):
      value = rng.uniform(0.5, 1.5, s.shape)
    else:
      value = rng.normal(0, 0.1, s.shape)
    # cast on the host, then a plain transfer: jnp.asarray of a numpy array compiles a small
    # program per shape (jax 0.10 and 0.12)
    flat[path] = jax.device_put(value.astype(np.float32))
  return traverse_util.unflatten_dict(flat)


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,expected", [
    ("r21d_10", 14_430_967), ("r3d_10", 14_427_456), ("c3d", 27_727_104),
    ("s3d_g", 9_277_200)])
def test_parameter_counts_match_reference(name, expected):
  variables = shapes_of(models.build(name, 128), jax.ShapeDtypeStruct((1, 16, 112, 112, 3),
                                                                     jnp.float32))
  assert count(variables["params"]) == expected


def test_names_and_feature_dim():
  assert set(models.NAMES) == {"r21d_10", "r21d_18", "r3d_10", "r3d_18", "c3d", "s3d_g"}
  assert models.feature_dim("r21d_10") == 512 and models.feature_dim("c3d", 8) == 64
  assert models.feature_dim("s3d_g") == 1024 and models.feature_dim("s3d_g", 8) == 128
  # VCOP's retrieval features at the paper's 16x112x112: 512 x 2 x 3 x 3.
  for name in ("r21d_10", "r21d_18", "r3d_10", "c3d"):
    assert models.feature_dim(name, layer="conv5_maxpool") == 9216
  assert models.feature_dim("s3d_g", layer="conv5_maxpool") == 8192  # 1024 x 2 x 2 x 2
  assert models.feature_dim("r21d_10", 8, "conv5_maxpool", clip_len=8, crop_size=32) == 64
  with pytest.raises(ValueError, match="feature layer"):
    models.feature_dim("c3d", layer="fc6")
  assert models.mid_channels((3, 7, 7), 3, 64) == 83  # floor(28224 / 339)
  assert models.mid_channels((1, 1, 1), 64, 128) == 42


@pytest.mark.parametrize("name", models.NAMES)
def test_output_shapes(name):
  width = 8
  feat = models.feature_dim(name, width)
  multi = models.build(name, heads={"linear": 4, "linear_segment": 3}, width=width)
  variables = shapes_of(multi)  # also fits the one-head and the headless model
  one, bare = models.build(name, 4, width=width), models.build(name, width=width)

  def outputs(v, x):
    return (one.apply(v, x), one.apply(v, x, features_only=True), multi.apply(v, x),
            bare.apply(v, x))

  single, features, several, pooled = jax.eval_shape(outputs, variables, CLIPS)
  assert single.shape == (2, 4) and single.dtype == jnp.float32
  assert features.shape == (2, feat) and pooled.shape == (2, feat)
  assert {k: v.shape for k, v in several.items()} == {"linear": (2, 4), "linear_segment": (2, 3)}
  assert models.head_names(variables) == ["linear", "linear_segment"]
  for clips in (CLIPS, jax.ShapeDtypeStruct((1, 16, 112, 112, 3), jnp.float32)):
    conv5 = jax.eval_shape(
        lambda v, x: multi.apply(v, x, features_only=True, feature_layer="conv5_maxpool"),
        variables, clips)
    assert conv5.shape == (clips.shape[0], models.feature_dim(
        name, width, "conv5_maxpool", clips.shape[1], clips.shape[2])), clips.shape
    assert conv5.dtype == jnp.float32
  with pytest.raises(ValueError, match="features_only=True"):
    jax.eval_shape(lambda v, x: multi.apply(v, x, feature_layer="conv5_maxpool"), variables,
                   CLIPS)


def test_module_names_mirror_reference():
  flat = traverse_util.flatten_dict(shapes_of(models.build("r21d_18", 4, width=8)))
  names = {"/".join(p) for p in flat}
  for expected in ["params/conv1/spatial_conv/kernel", "params/conv1/bn/scale",
                   "params/conv1/temporal_conv/kernel", "batch_stats/bn1/mean",
                   "params/conv2/block1/conv1/spatial_conv/kernel", "params/conv2/block1/bn1/bias",
                   "params/conv2/blocks_0/conv2/temporal_conv/kernel",
                   "params/conv3/block1/downsampleconv/spatial_conv/kernel",
                   "batch_stats/conv3/block1/downsamplebn/var", "params/linear/kernel"]:
    assert expected in names
  assert not any("conv2/block1/downsample" in n for n in names)
  assert not any(n.startswith("params/conv") and n.endswith("conv/bias") for n in names)
  r3d = {"/".join(p) for p in traverse_util.flatten_dict(
      shapes_of(models.build("r3d_10", 4, width=8))["params"])}
  assert "conv1/temporal_spatial_conv/kernel" in r3d and not any("spatial_conv/" in n and
                                                                   "temporal" not in n for n in r3d)
  c3d = shapes_of(models.build("c3d", 4, width=8))["params"]
  assert set(c3d) == {f"{p}{s}" for p in ("conv", "bn") for s in
                      ("1", "2", "3a", "3b", "4a", "4b", "5a", "5b")} | {"linear"}
  assert c3d["conv3a"]["bias"].shape == (32,)


@pytest.mark.parametrize("kernel,strides,padding", [
    ((1, 3, 3), (1, 2, 2), (0, 1, 1)), ((3, 1, 1), (2, 1, 1), (1, 0, 0)),
    ((1, 1, 1), (1, 2, 2), (0, 0, 0)), ((3, 3, 3), (2, 2, 2), (1, 1, 1))])
def test_conv3d_fast_paths_equal_full_conv(kernel, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 9, 7, 3)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(*kernel, 3, 4)), jnp.float32)
  want = jax.lax.conv_general_dilated(x, k, strides, [(p, p) for p in padding],
                                      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  np.testing.assert_allclose(conv3d(x, k, strides, padding), want, atol=1e-5)


def test_jit_train_mode_updates_batch_stats_and_eval_differs():
  model = models.build("r21d_10", 4, width=8)
  variables = numpy_variables(model)
  x = jnp.asarray(np.random.default_rng(1).uniform(0, 255, CLIPS.shape), jnp.float32)

  @jax.jit
  def train_and_eval(v, x):
    return model.apply(v, x, train=True, mutable=["batch_stats"]), model.apply(v, x)

  (logits, updates), eval_logits = train_and_eval(variables, x)
  assert logits.shape == (2, 4) and bool(jnp.all(jnp.isfinite(logits)))
  old, new = variables["batch_stats"]["bn1"]["mean"], updates["batch_stats"]["bn1"]["mean"]
  assert not np.allclose(old, new)
  assert not np.allclose(eval_logits, logits)


def test_bfloat16_compute_keeps_float32_outputs_and_statistics():
  x = jnp.asarray(np.random.default_rng(2).uniform(0, 255, CLIPS.shape), jnp.float32)
  f32 = models.build("r21d_10", 4, width=8)
  bf16 = models.build("r21d_10", 4, width=8, dtype="bfloat16")
  variables = numpy_variables(f32)

  @jax.jit
  def run(v, x):
    return (f32.apply(v, x, train=True, mutable=["batch_stats"]),
            bf16.apply(v, x, train=True, mutable=["batch_stats"]))

  (want, want_upd), (got, updates) = run(variables, x)
  assert got.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(got)))
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(updates))
  assert float(jnp.abs(got - want).max()) < 0.05 * float(jnp.abs(want).max()) + 1e-3
  np.testing.assert_allclose(updates["batch_stats"]["bn1"]["mean"],
                             want_upd["batch_stats"]["bn1"]["mean"], rtol=0.05, atol=1e-2)


def test_s3dg_trains_in_bfloat16():
  """A training-mode forward and backward of S3D-G (gating, TF-SAME pools) in bf16 compute:
  finite gradients for every parameter, float32 statistics."""
  model = models.build("s3d_g", 4, width=8, dtype="bfloat16")
  clips = jax.ShapeDtypeStruct((2, 4, 16, 16, 3), jnp.float32)
  variables = numpy_variables(model, clips=clips)
  x = jnp.asarray(np.random.default_rng(4).uniform(0, 255, clips.shape), jnp.float32)

  def loss(params, stats, x):
    out, updates = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                               mutable=["batch_stats"])
    return jnp.mean(out.astype(jnp.float32) ** 2), updates

  (value, updates), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      variables["params"], variables["batch_stats"], x)
  assert np.isfinite(float(value))
  # Checked on the host: jnp.isfinite per leaf compiled ~90 small programs (one per shape).
  grads = jax.device_get(grads)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert np.abs(grads["gating"]["fc"]["kernel"]).max() > 0
  assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(updates))


def test_bn_axis_name_under_pmap_equals_whole_batch():
  n_dev = 4
  assert jax.local_device_count() >= n_dev
  x = jnp.asarray(np.random.default_rng(3).normal(size=(8, 8, 16, 16, 3)), jnp.float32)
  local = models.build("c3d", 3, width=4)
  synced = models.build("c3d", 3, width=4, bn_axis_name="batch")
  variables = numpy_variables(local, clips=jax.ShapeDtypeStruct(x.shape, jnp.float32))
  want, want_upd = jax.jit(lambda v, x: local.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, x)
  replicated = jax.tree.map(lambda a: np.stack([np.asarray(a)] * n_dev), variables)
  got, got_upd = jax.device_get(jax.pmap(  # on the host: indexing device arrays compiles
      lambda v, x: synced.apply(v, x, train=True, mutable=["batch_stats"]),
      axis_name="batch", devices=jax.local_devices()[:n_dev])(
          replicated, x.reshape(n_dev, 2, *x.shape[1:])))
  np.testing.assert_allclose(got.reshape(8, 3), want, atol=1e-4, rtol=1e-4)
  for g, w in zip(jax.tree.leaves(got_upd), jax.tree.leaves(jax.device_get(want_upd))):
    np.testing.assert_allclose(g[0], w, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(g[3], w, atol=1e-4, rtol=1e-4)


def test_s3dg_module_names_mirror_the_release():
  variables = shapes_of(models.build("s3d_g", 4, width=8))  # one trace of S3D-G (~2 s) for both
  flat = traverse_util.flatten_dict(variables)
  names = {"/".join(p) for p in flat}
  for expected in ["params/conv1/conv1/kernel", "batch_stats/conv1/bn1/var",
                   "params/conv_2b/conv1/kernel", "params/conv_2c/conv2/kernel",
                   "params/conv_2c/bn2/scale", "params/gating/fc/kernel",
                   "params/mixed_3b/conv_b1_b/conv2/kernel", "params/mixed_5c/gating_b3/fc/bias",
                   "params/linear/kernel"]:
    assert expected in names, expected
  params = variables["params"]
  assert params["conv1"]["conv1"]["kernel"].shape == (2, 4, 4, 24, 8)  # space-to-depth stem
  assert params["linear"]["kernel"].shape == (128, 4)
  assert models.head_names(params) == ["linear"]  # the gating fcs are not heads


def test_build_rejects_bad_arguments():
  with pytest.raises(ValueError, match="r21d_10"):
    models.build("resnet50")
  with pytest.raises(ValueError, match="not both"):
    models.build("c3d", 4, heads={"linear": 4})
  with pytest.raises(ValueError, match="width"):
    models.build("c3d", 4, width=0)
  with pytest.raises(ValueError, match="multiple of 8"):
    models.build("s3d_g", 4, width=12)
  with pytest.raises(ValueError, match="model.init"):
    models.build("c3d", 4, init="xavier")
  with pytest.raises(ValueError, match="even"):
    models.check_input("s3d_g", 15, 112)
  with pytest.raises(ValueError, match="too small"):
    models.check_input("c3d", 4, 112)
  models.check_input("s3d_g", 16, 112)
