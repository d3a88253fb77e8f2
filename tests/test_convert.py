"""PyTorch <-> Flax conversion: numerical parity with the reference modules, round trips,
checkpoint prefixes, and the errors for checkpoints that do not fit."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from auxskd_jax import models
from auxskd_jax.weights import convert

torch = pytest.importorskip("torch")
from auxskd_jax.testing import reference_torch  # noqa: E402  (needs torch)

HEADS = {"linear": 4, "linear_segment": 3}


def trained_torch_model(name, width=8, heads=HEADS, seed=0):
  """Random reference model whose BN running statistics moved over a few training batches."""
  torch.manual_seed(seed)
  model = reference_torch.build_torch(name, heads=heads, width=width)
  model.train()
  with torch.no_grad():
    for _ in range(3):
      model(torch.rand(4, 3, 8, 16, 16) * 255)
  return model.eval()


@pytest.mark.parametrize("name,clip", [
    ("r21d_10", (8, 32)), ("r3d_10", (8, 32)), ("c3d", (8, 32)),
    # 40 px: S3D-G's ceil-mode pools meet odd sizes (21 -> 10 -> 5 -> 3) and a partial window.
    ("s3d_g", (8, 40))])
def test_eval_outputs_match_pytorch(name, clip):
  torch.set_num_threads(1)
  model = trained_torch_model(name)
  t, size = clip
  x = torch.rand(2, 3, t, size, size) * 255
  with torch.no_grad():
    want = model(x)
    want_features = model(x, features_only=True)
    want_conv5 = model(x, features_only=True, feature_layer="conv5_maxpool")
  variables = convert.from_torch(model.state_dict(), name)
  flax_model = models.build(name, heads=HEADS, width=8)
  clips = jnp.asarray(x.numpy().transpose(0, 2, 3, 4, 1))  # NCDHW -> NDHWC
  got, features, conv5 = jax.jit(lambda v, c: (
      flax_model.apply(v, c), flax_model.apply(v, c, features_only=True),
      flax_model.apply(v, c, features_only=True, feature_layer="conv5_maxpool")))(
          variables, clips)
  assert set(got) == set(HEADS)
  scale = float(np.abs(want_features.numpy()).max())
  for head in HEADS:
    np.testing.assert_allclose(got[head], want[head].numpy(), atol=1e-4 * max(1, scale), rtol=0)
  np.testing.assert_allclose(features, want_features.numpy(), atol=1e-4 * max(1, scale),
                             rtol=1e-5)
  # VCOP's retrieval features, flattened in PyTorch's (C, T, H, W) order.
  assert conv5.shape == tuple(want_conv5.shape) == (2, models.feature_dim(
      name, 8, "conv5_maxpool", t, size))
  np.testing.assert_allclose(conv5, want_conv5.numpy(), atol=1e-4 * max(1, scale), rtol=1e-5)


def test_s3dg_state_dict_is_the_releases():
  """532 entries (conv1.conv1.weight ... fc.*) and 9,277,200 trainable parameters with a
  128-d head; convert maps every one of them both ways."""
  net = reference_torch.build_torch("s3d_g", num_classes=128)
  sd = net.state_dict()
  assert len(sd) == 532
  assert sum(p.numel() for p in net.parameters() if p.requires_grad) == 9_277_200
  for key in ("conv1.conv1.weight", "conv1.bn1.running_var", "conv_2b.conv1.weight",
              "conv_2c.conv2.weight", "gating.fc.weight", "mixed_3b.conv_b1_b.bn2.weight",
              "mixed_5c.gating_b3.fc.bias", "fc.weight", "fc.bias"):
    assert key in sd, key
  assert {k.split(".")[0] for k in sd} == {
      "conv1", "conv_2b", "conv_2c", "gating", "fc", "mixed_3b", "mixed_3c", "mixed_4b",
      "mixed_4c", "mixed_4d", "mixed_4e", "mixed_4f", "mixed_5b", "mixed_5c"}
  variables = convert.from_torch(sd, "s3d_g")
  assert variables["params"]["linear"]["kernel"].shape == (1024, 128)
  assert variables["params"]["conv1"]["conv1"]["kernel"].shape == (2, 4, 4, 24, 64)
  back = convert.to_torch(variables, "s3d_g")
  assert set(back) == set(sd)
  for key, value in sd.items():
    np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


def test_round_trip_is_exact_and_infers_heads_and_width():
  model = trained_torch_model("r21d_18", width=4, heads={"linear": 6})
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  assert any(".blocks.0." in k for k in sd)
  variables = convert.from_torch(model.state_dict(), "r21d_18")
  assert variables["params"]["linear"]["kernel"].shape == (32, 6)
  assert variables["params"]["conv1"]["spatial_conv"]["kernel"].shape == (1, 7, 7, 3, 11)
  back = convert.to_torch(variables, "r21d_18", num_batches_tracked=3)
  assert set(back) == set(sd)
  for key, value in sd.items():
    assert back[key].shape == value.shape and back[key].dtype == value.dtype, key
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  # The converted tree has exactly the structure build() creates.
  shapes = jax.eval_shape(
      lambda k, x: models.build("r21d_18", 6, width=4).init(k, x),
      jax.eval_shape(lambda: jax.random.PRNGKey(0)),
      jax.ShapeDtypeStruct((1, 8, 16, 16, 3), jnp.float32))
  assert jax.tree.structure(shapes) == jax.tree.structure(variables)
  assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, variables)


def test_prefixes_and_auxskd_checkpoints_give_the_same_variables():
  model = trained_torch_model("c3d", width=4, heads={"linear": 5})
  sd = model.state_dict()
  want = convert.from_torch(sd, "c3d")
  teacher = {f"encoder_k.{k}": v + 1 for k, v in sd.items()}
  wrapped = {
      "module": {f"module.{k}": v for k, v in sd.items()},
      "auxskd": {"epoch": 3, "state_dict": {
          **{f"encoder_q.{k}": v for k, v in sd.items()}, **teacher,
          "predict_q_c.0.weight": torch.zeros(8, 5), "queue": torch.zeros(16, 5),
          "queue_ptr": torch.zeros(1)}},
      "both": {"state_dict": {f"module.encoder_q.{k}": v for k, v in sd.items()}},
      "numpy": {k: v.numpy() for k, v in sd.items()},
  }
  for label, checkpoint in wrapped.items():
    got = convert.from_torch(checkpoint, "c3d")
    assert jax.tree.structure(got) == jax.tree.structure(want), label
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(a, b, err_msg=label)


def test_mismatched_keys_name_the_first_missing_and_unexpected():
  sd = {k: v.numpy() for k, v in trained_torch_model("r3d_10", width=4).state_dict().items()}
  missing = dict(sd)
  del missing["conv3.block1.bn2.running_var"]
  with pytest.raises(convert.CheckpointMismatchError,
                     match=r"1 missing keys \(first: 'conv3.block1.bn2.running_var'\)"):
    convert.from_torch(missing, "r3d_10", heads=HEADS)
  extra = {**sd, "conv9.weight": np.zeros((1, 1, 1, 1, 1), np.float32)}
  with pytest.raises(convert.CheckpointMismatchError,
                     match=r"1 unexpected keys \(first: 'conv9.weight'\)"):
    convert.from_torch(extra, "r3d_10", heads=HEADS)
  with pytest.raises(
      convert.CheckpointMismatchError,
      match=r"2 shape mismatches \(first: 'linear.bias' is \(4,\), r3d_10 expects \(7,\)"):
    convert.from_torch(sd, "r3d_10", heads={"linear": 7, "linear_segment": 3})
  with pytest.raises(convert.CheckpointMismatchError, match="look like a 'r3d_10' checkpoint"):
    convert.from_torch(sd, "r21d_10")
  with pytest.raises(convert.CheckpointMismatchError, match="look like a 'r3d_10' checkpoint"):
    convert.from_torch(sd, "s3d_g")
  with pytest.raises(convert.CheckpointMismatchError, match="no student encoder"):
    convert.from_torch({"state_dict": {f"encoder_k.{k}": v for k, v in sd.items()}}, "r3d_10")
  with pytest.raises(ValueError, match="not an encoder"):
    convert.from_torch(sd, "r2plus1d")


def test_load_torch_checkpoint(tmp_path, monkeypatch):
  model = trained_torch_model("c3d", width=4, heads={"linear": 5})
  path = tmp_path / "ckpt.pth"
  torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in
                                         model.state_dict().items()}}, path)
  variables = convert.from_torch(convert.load_torch_checkpoint(str(path)), "c3d")
  np.testing.assert_array_equal(variables["params"]["linear"]["bias"],
                                model.linear.bias.detach().numpy())
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    convert.load_torch_checkpoint(str(tmp_path / "nope.pth"))
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match=r"pip install 'auxskd-jax\[torch\]'"):
    convert.load_torch_checkpoint(str(path))


def test_importing_models_and_convert_needs_neither_torch_nor_tensorflow():
  code = ("import sys; from auxskd_jax import models; from auxskd_jax.weights import convert; "
          "import auxskd_jax.api; "  # the Python API too (models, weights, evaluate, train)
          "bad = [m for m in ('torch', 'tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
