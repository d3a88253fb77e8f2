"""The one loading path: files written exactly as the authors' auxSKD and VSPP scripts write
them initialise VSPP / fine-tuning / retrieval encoders and give back the whole auxSKD state;
arbitrary pickles are refused unless trusted."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from auxskd_jax import models
from auxskd_jax import weights as pretrained
from auxskd_jax.weights import convert
from auxskd_jax.errors import ConfigError

torch = pytest.importorskip("torch")
from auxskd_jax.testing import reference_torch  # noqa: E402  (needs torch)

import tiny  # noqa: E402

WIDTH, EMBED, HIDDEN, QUEUE = 8, 16, 32, 12


class Opaque:
  """A class no weights-only load may rebuild."""

  def __init__(self):
    self.note = "arbitrary object"


def target(name, heads=None, num_classes=None):
  """Zeros shaped like build(name, ...)'s variables (eval_shape: nothing is compiled)."""
  model = models.build(name, num_classes, heads=heads, width=WIDTH)
  shapes = jax.eval_shape(lambda k, x: model.init(k, x),
                          jax.eval_shape(lambda: jax.random.PRNGKey(0)),
                          jax.ShapeDtypeStruct((1, 8, 32, 32, 3), jnp.float32))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def torch_sd(module_sd, prefix):
  return {k[len(prefix):]: v.numpy() for k, v in module_sd.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def auxskd_file(tmp_path_factory):
  """pckpt_epoch_3.pth exactly as the authors' auxSKD script saves it (one real step)."""
  checkpoint = reference_torch.auxskd_checkpoint(
      "r21d_10", width=WIDTH, embed=EMBED, hidden=HIDDEN, queue_size=QUEUE, epoch=3)
  path = str(tmp_path_factory.mktemp("auxskd") / "pckpt_epoch_3.pth")
  torch.save(checkpoint, path)
  return path, checkpoint


@pytest.fixture(scope="module")
def auxskd_r3d_file(tmp_path_factory):
  """The same file with an R3D-10 encoder, for the test that compiles a training step (R3D
  compiles in about half R(2+1)D's time)."""
  checkpoint = reference_torch.auxskd_checkpoint(
      "r3d_10", width=WIDTH, embed=EMBED, hidden=HIDDEN, queue_size=QUEUE, epoch=3)
  path = str(tmp_path_factory.mktemp("auxskd_r3d") / "pckpt_epoch_3.pth")
  torch.save(checkpoint, path)
  return path, checkpoint


def test_authors_auxskd_file_has_their_layout(auxskd_file):
  _, checkpoint = auxskd_file
  assert set(checkpoint) == {"opt", "state_dict", "optimizer", "epoch"}
  assert type(checkpoint["opt"]).__name__ == "Namespace"
  keys = list(checkpoint["state_dict"])
  for key in ("encoder_q.module.conv1.spatial_conv.weight", "encoder_k.module.linear.weight",
              "predict_q_c.module.0.weight", "predict_q_c.module.1.running_var",
              "predict_q_c.module.3.bias", "queue", "queue_ptr"):
    assert key in keys, key


def test_auxskd_student_initialises_vspp_and_finetuning(auxskd_file):
  path, checkpoint = auxskd_file
  student = convert.encoder_from_torch(
      torch_sd(checkpoint["state_dict"], "encoder_q.module."), "r21d_10")
  teacher_w = checkpoint["state_dict"]["encoder_k.module.conv1.spatial_conv.weight"].numpy()
  # VSPP (lenient): encoder from the student, the 16-d head does not fit the speed head.
  vspp, report = pretrained.load_encoder(
      path, target("r21d_10", heads={"linear": 4, "linear_segment": 4}), model_name="r21d_10",
      strict=False, heads="all")
  assert report.format == pretrained.AUXSKD_TORCH and report.epoch == 3
  np.testing.assert_array_equal(vspp["params"]["conv1"]["spatial_conv"]["kernel"],
                                student["params"]["conv1"]["spatial_conv"]["kernel"])
  assert not np.array_equal(vspp["params"]["conv1"]["spatial_conv"]["kernel"],
                            np.transpose(teacher_w, (2, 3, 4, 1, 0)))  # not the teacher
  np.testing.assert_array_equal(vspp["batch_stats"]["conv5"]["block1"]["bn2"]["var"],
                                student["batch_stats"]["conv5"]["block1"]["bn2"]["var"])
  assert any(s.startswith("params/linear/kernel") for s in report.shape_mismatch)
  assert "params/linear_segment/kernel" in report.missing
  assert "epoch 3" in report.summary() and "encoder_q" in report.summary()
  # Fine-tuning / retrieval (strict): every encoder layer loads, the new head stays fresh.
  fresh = target("r21d_10", num_classes=3)
  fresh["params"]["linear"]["bias"] += 7.0
  ft, report = pretrained.load_encoder(path, fresh, model_name="r21d_10", strict=True,
                                       flag="eval.init_from")
  assert not report.missing and not report.shape_mismatch
  assert report.kept_fresh == ["params/linear/bias", "params/linear/kernel"]
  np.testing.assert_array_equal(ft["params"]["linear"]["bias"], np.full(3, 7.0))
  np.testing.assert_array_equal(ft["params"]["conv4"]["block1"]["conv2"]["temporal_conv"]
                                ["kernel"], student["params"]["conv4"]["block1"]["conv2"]
                                ["temporal_conv"]["kernel"])


def test_auxskd_state_continues_their_run(auxskd_file):
  path, checkpoint = auxskd_file
  sd = checkpoint["state_dict"]
  state = pretrained.load_auxskd_torch_state(path, "r21d_10")
  want_student = convert.encoder_from_torch(torch_sd(sd, "encoder_q.module."), "r21d_10")
  want_teacher = convert.encoder_from_torch(torch_sd(sd, "encoder_k.module."), "r21d_10")
  for got, want in ((state["params"]["encoder"], want_student["params"]),
                    (state["batch_stats"]["encoder"], want_student["batch_stats"]),
                    (state["teacher"], want_teacher)):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(a, b)
  assert state["params"]["encoder"]["linear"]["kernel"].shape == (8 * WIDTH, EMBED)
  np.testing.assert_array_equal(state["queue"], sd["queue"].numpy())
  assert state["queue"].dtype == np.float32 and state["queue"].shape == (QUEUE, EMBED)
  assert state["queue_ptr"].dtype == np.int32 and state["queue_ptr"].shape == ()
  assert int(state["queue_ptr"]) == int(sd["queue_ptr"][0]) == 4
  assert state["epoch"] == 3 and state["learning_rate"] == pytest.approx(0.001)
  assert state["opt"]["model"] == "r21d_10"
  # The predictor: theirs Linear/BatchNorm1d/ReLU/Linear, ours linear1/bn/linear2; the same
  # function in eval mode.
  from auxskd_jax.methods.auxskd import Predictor

  theirs = reference_torch.predictor(EMBED, HIDDEN)
  theirs.load_state_dict({k[len("predict_q_c.module."):]: v for k, v in sd.items()
                          if k.startswith("predict_q_c.")})
  z = np.random.default_rng(0).normal(size=(5, EMBED)).astype(np.float32)
  with torch.no_grad():
    want = theirs.eval()(torch.from_numpy(z)).numpy()
  ours = Predictor(hidden=HIDDEN, features=EMBED).apply(
      {"params": state["params"]["predictor"], "batch_stats": state["batch_stats"]["predictor"]},
      z, train=False)
  np.testing.assert_allclose(ours, want, atol=1e-5, rtol=1e-5)
  # SGD momentum buffers, by the optimizer's parameter order (student, then predictor).
  buffers = checkpoint["optimizer"]["state"]
  np.testing.assert_array_equal(
      state["momentum"]["encoder"]["conv1"]["spatial_conv"]["kernel"],
      np.transpose(buffers[0]["momentum_buffer"].numpy(), (2, 3, 4, 1, 0)))
  last = max(buffers)
  np.testing.assert_array_equal(state["momentum"]["predictor"]["linear2"]["bias"],
                                buffers[last]["momentum_buffer"].numpy())
  assert jax.tree.structure(state["momentum"]["encoder"]) == jax.tree.structure(
      state["params"]["encoder"])


def test_authors_vspp_file_loads(tmp_path):
  sd = reference_torch.vspp_checkpoint("r21d_10", width=WIDTH)
  assert "module.linear_segment.weight" in sd and "module.conv1.bn.running_mean" in sd
  path = str(tmp_path / "epoch_segment_self_f-20.pth.tar")
  torch.save(sd, path)
  want = convert.encoder_from_torch(torch_sd(sd, "module."), "r21d_10")
  # Another VSPP run (its heads too) and fine-tuning (encoder only).
  got, report = pretrained.load_encoder(
      path, target("r21d_10", heads={"linear": 4, "linear_segment": 4}), model_name="r21d_10",
      strict=True, heads=("linear", "linear_segment"))
  assert report.format == pretrained.DATA_PARALLEL_TORCH and not report.kept_fresh
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  got, report = pretrained.load_encoder(path, target("r21d_10"), model_name="r21d_10",
                                        strict=True, flag="eval.init_from")
  assert "linear" not in got["params"] and len(report.unused) == 4  # the two heads


def test_s3dg_auxskd_file_loads(tmp_path):
  checkpoint = reference_torch.auxskd_checkpoint(
      "s3d_g", width=WIDTH, embed=EMBED, hidden=HIDDEN, queue_size=QUEUE, clip=(8, 32))
  assert "encoder_q.module.mixed_5c.gating_b3.fc.weight" in checkpoint["state_dict"]
  path = str(tmp_path / "pckpt_epoch_3.pth")
  torch.save(checkpoint, path)
  got, report = pretrained.load_encoder(path, target("s3d_g", num_classes=5),
                                        model_name="s3d_g", strict=True)
  want = checkpoint["state_dict"]["encoder_q.module.mixed_4b.conv_b1_b.conv2.weight"].numpy()
  np.testing.assert_array_equal(got["params"]["mixed_4b"]["conv_b1_b"]["conv2"]["kernel"],
                                np.transpose(want, (2, 3, 4, 1, 0)))
  state = pretrained.load_auxskd_torch_state(path, "s3d_g")
  assert state["params"]["encoder"]["linear"]["kernel"].shape == (16 * WIDTH, EMBED)
  assert state["momentum"] is not None


def test_arbitrary_pickles_are_refused_unless_trusted(tmp_path):
  sd = reference_torch.vspp_checkpoint("c3d", width=WIDTH)
  path = str(tmp_path / "odd.pth")
  torch.save({"state_dict": sd, "extra": Opaque()}, path)
  with pytest.raises(ConfigError, match=r"eval.init_from=.*pickled Python objects.*Opaque.*"
                                        r"--config.eval.trust_pickle=True"):
    pretrained.load_encoder(path, target("c3d"), model_name="c3d", strict=True,
                            flag="eval.init_from")
  got, _ = pretrained.load_encoder(path, target("c3d"), model_name="c3d", strict=True,
                                   flag="eval.init_from", trust_pickle=True)
  np.testing.assert_array_equal(got["params"]["conv1"]["bias"], sd["module.conv1.bias"].numpy())


def test_errors_name_the_flag(tmp_path):
  path = str(tmp_path / "c3d.pth")
  torch.save(reference_torch.vspp_checkpoint("c3d", width=WIDTH), path)
  with pytest.raises(ConfigError, match=r"eval.init_from.*model.name.*look like a 'c3d'"):
    pretrained.load_encoder(path, target("r21d_10"), model_name="r21d_10", strict=True,
                            flag="eval.init_from")
  with pytest.raises(ConfigError, match=r"train.init_from.*model.name"):
    pretrained.load_encoder(path, target("c3d"), model_name=None, strict=False)
  with pytest.raises(ConfigError, match="does not exist"):
    pretrained.load_encoder(str(tmp_path / "nope"), target("c3d"), model_name="c3d",
                            strict=False)
  with pytest.raises(ConfigError, match="not an auxSKD distillation checkpoint"):
    pretrained.load_auxskd_torch_state(path, "c3d")
  # A wider c3d: strict names the layers; lenient refuses when too little matches.
  wide = str(tmp_path / "wide.pth")
  torch.save(reference_torch.vspp_checkpoint("c3d", width=2 * WIDTH), wide)
  with pytest.raises(ConfigError, match=r"train.init_from.*48 encoder.*params/bn1/bias: "
                                        r"checkpoint \(16,\) vs model \(8,\).*model.width"):
    pretrained.load_encoder(wide, target("c3d"), model_name="c3d", strict=True)
  with pytest.raises(ConfigError, match=r"only 0 of the encoder's"):
    pretrained.load_encoder(wide, target("c3d"), model_name="c3d", strict=False)


def test_auxskd_task_continues_the_authors_run(auxskd_r3d_file):
  """`task=auxskd` with their .pth as train.init_from: their student, predictor, teacher,
  queue, pointer and SGD momentum, at step epoch x steps_per_epoch; then a step runs.
  (R3D-10: the file's R(2+1)D layout and loading are the tests above.)"""

  from auxskd_jax import defaults
  from auxskd_jax.config import base_config
  from auxskd_jax.methods import auxskd

  path, _ = auxskd_r3d_file
  config = base_config()
  config.task = "auxskd"
  config.model.name = "r3d_10"
  config.model.width, config.model.embed_dim, config.model.predictor_hidden = WIDTH, EMBED, HIDDEN
  config.clip.clip_len, config.clip.crop_size = 8, 16
  config.train.batch_size = 4
  config.train.init_from = path
  config.auxskd = defaults.auxskd()
  config.auxskd.queue_size = QUEUE + 1
  with pytest.raises(ConfigError, match="auxskd.queue_size=12"):
    tiny.state_and_step(auxskd.AuxSKD(config), config, steps_per_epoch=5, total_steps=100)
  config.auxskd.queue_size = QUEUE
  method = auxskd.AuxSKD(config)
  state, train_step = tiny.state_and_step(method, config, steps_per_epoch=5, total_steps=100)
  want = pretrained.load_auxskd_torch_state(path, "r3d_10")
  assert int(state.step) == 3 * 5
  for got, ref in ((state.params, want["params"]), (state.extras["teacher"], want["teacher"]),
                   (state.extras["queue"], want["queue"])):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(state.extras["queue_ptr"]) == 4
  trace = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "trace"))
           if hasattr(s, "trace")][0].trace
  for a, b in zip(jax.tree.leaves(trace), jax.tree.leaves(want["momentum"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  windows = np.random.default_rng(0).integers(0, 256, (1, 4, 2, 31, 20, 20, 3), np.uint8)
  step = jax.pmap(train_step, axis_name="batch", devices=jax.devices()[:1])
  rep = jax.tree.map(lambda x: jnp.asarray(x)[None], state)
  rep, metrics = step(rep, {"windows": windows}, jax.random.PRNGKey(1)[None])
  assert int(rep.step[0]) == 16 and np.isfinite(float(metrics["loss"][0]))
  # their next step's EMA, exactly: towards their saved student, before our update
  m = config.auxskd.momentum
  for got, t, q in zip(jax.tree.leaves(rep.extras["teacher"]["params"]),
                       jax.tree.leaves(want["teacher"]["params"]),
                       jax.tree.leaves(want["params"]["encoder"])):
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(t) * m + np.asarray(q) * (1 - m),
                               rtol=1e-6, atol=1e-8)
