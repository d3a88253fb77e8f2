"""The evaluation tasks end to end on tiny prepared data: fine-tuning learns, retrieval and the
linear probe run from its checkpoint, checkpoints of each kind load, bad inputs fail clearly."""

import json
import os
import sys

import numpy as np
import pytest

from auxskd_jax import config as config_lib
from auxskd_jax import tasks
from auxskd_jax.config import ConfigError

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("red", "green", "blue")


def _write_colour_tree(root, videos_per_class, seed):
  """`<root>/<class>/*.mp4`: noisy frames whose dominant channel is the class."""
  from auxskd_jax.testing import synthetic

  rng = np.random.default_rng(seed)
  for ci, name in enumerate(CLASSES):
    for k in range(videos_per_class):
      frames = rng.integers(40, 110, (16, 24, 32, 3))
      frames[..., ci] += 110
      synthetic.write_video(os.path.join(root, name, f"{name}_{k}.mp4"),
                            frames.astype(np.uint8))


def _prepare(source, data_dir, labelled):
  sys.path.insert(0, _ROOT)
  from configs import prepare as prepare_config
  from auxskd_jax.data import prepare

  c = prepare_config.get_config()
  c.builder = "video_folder"
  c.source_dir = source
  c.data_dir = data_dir
  c.labelled = labelled
  c.resize = (24, 32)
  c.workers = 1
  prepare.run(c, os.path.join(data_dir, "_work_" + str(labelled)))


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
  """(data_dir) holding video_folder/labelled (train 6 / test 3 per class) and /unlabelled."""
  root = tmp_path_factory.mktemp("colour")
  _write_colour_tree(str(root / "src" / "train"), 6, seed=0)
  _write_colour_tree(str(root / "src" / "test"), 3, seed=1)
  data_dir = str(root / "data")
  _prepare(str(root / "src"), data_dir, labelled=True)
  _prepare(str(root / "src"), data_dir, labelled=False)
  return data_dir


def _load_config(name):
  sys.path.insert(0, os.path.join(_ROOT, "configs"))
  module = __import__(name)
  return module.get_config()


def _tiny(config, data_dir, name="video_folder/labelled"):
  with config.unlocked():
    config.data.name = name
  config.data.data_dir = data_dir
  config.model.name = "r3d_10"  # the tasks are tested, not the encoder: R3D compiles fastest
  config.model.width = 8
  config.clip.clip_len = 8
  config.clip.crop_size = 16
  config.clip.eval_clips = 3
  config.eval.batch_size = 8
  config.eval.feature_layer = "pool"  # 16-pixel crops: conv5 is too small for conv5_maxpool
  config.seed = 0
  return config


def _finetune_config(data_dir, **overrides):
  c = _tiny(_load_config("finetune_r21d_ucf101"), data_dir)
  c.method_chain = "scratch"
  c.augment.input_convention = "rgb"
  c.optim.learning_rate = 0.02
  # Cosine to zero: the weights settle over the last steps, so BN running statistics catch
  # up with them (with a constant rate a few dozen steps leave them lagging, and eval-mode BN is off).
  c.optim.schedule = "cosine"
  c.train.batch_size = 8
  c.train.num_steps = 40  # R3D-10 reaches 100% video, clip and retrieval top-1 here (measured)
  c.train.steps_per_epoch = 10
  c.train.log_every = 10
  c.train.checkpoint_every = 100
  c.eval.every_epochs = 2
  c.update_from_flattened_dict(overrides)
  return c


@pytest.fixture(scope="module")
def finetuned(colour_data, tmp_path_factory):
  from auxskd_jax.tasks import finetune

  workdir = str(tmp_path_factory.mktemp("ft"))
  config = _finetune_config(colour_data)
  tasks.get(config.task).validate(config)
  record = finetune.run(config, workdir)
  return workdir, record


def test_finetune_learns_colour_classes(finetuned):
  workdir, record = finetuned
  m = record["metrics"]
  assert m["video_top1"] >= 0.8, m  # 3 classes: chance is 1/3
  assert m["clip_top1"] >= 0.7, m
  assert m["video_top5"] == 1.0  # k above the 3 classes: clipped
  assert record["num_test_videos"] == 9 and record["clips_per_video"] == 3
  for f in ("results.json", "results.md", "training_curves.png", "config.json"):
    assert os.path.exists(os.path.join(workdir, f)), f
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  val = [r for r in rows if r.get("split") == "val"]
  assert [r["step"] for r in val] == [20, 40]  # every 2 epochs of 10 steps (the last is the end)
  assert all(0.0 <= r["clip_top1"] <= 1.0 and r["loss"] > 0 for r in val), val
  assert max(r["step"] for r in rows) == 40


def test_retrieval_and_probe_from_our_checkpoint(finetuned, colour_data, tmp_path):
  from auxskd_jax.tasks import linear_probe, retrieval

  workdir, _ = finetuned
  c = _tiny(_load_config("retrieval_r21d_ucf101"), colour_data)
  c.augment.input_convention = "rgb"
  c.eval.init_from = workdir
  c.eval.topk = (1, 5, 50)
  tasks.get(c.task).validate(c)
  record = retrieval.run(c, str(tmp_path / "ret"))
  acc = record["metrics"]
  assert acc["top50"] == 1.0 and acc["top1"] >= 0.6, acc  # a fine-tuned colour net
  assert os.path.exists(tmp_path / "ret" / "retrieval_topk.png")
  assert "| top1 (%) |" in open(tmp_path / "ret" / "results.md").read()

  p = _tiny(_load_config("linear_probe_r21d_ucf101"), colour_data)
  p.augment.input_convention = "rgb"
  p.eval.init_from = workdir
  p.probe.steps = 200
  p.probe.learning_rate = 0.01
  p.probe.per_clip = True
  tasks.get(p.task).validate(p)
  probe = linear_probe.run(p, str(tmp_path / "probe"))
  assert probe["metrics"]["video_top1"] >= 0.8, probe["metrics"]


def test_unlabelled_dataset_is_refused(colour_data, tmp_path):
  from auxskd_jax.tasks import finetune

  c = _finetune_config(colour_data)
  with c.unlocked():
    c.data.name = "video_folder/unlabelled"
  with pytest.raises(ConfigError, match="no class labels"):
    finetune.run(c, str(tmp_path))


def _small(name):
  c = config_lib.base_config()
  c.model.name, c.model.width = name, 8
  c.clip.clip_len, c.clip.crop_size = 8, 16
  return c


def _save_checkpoint(workdir, name, num_classes=128):
  """One of our training checkpoints holding a `name` encoder under params['encoder'].

  Values are random numbers of the right shapes (no network is compiled: fast on CPU).
  """
  import jax
  import optax

  from auxskd_jax import weights
  from auxskd_jax.tasks import common
  from auxskd_jax.train import encoder as encoder_lib
  from auxskd_jax.train import checkpoint as ckpt_lib
  from auxskd_jax.train.state import TrainState

  _, zeros = encoder_lib.build_and_init(_small(name), num_classes=num_classes, random=False)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda z: rng.normal(size=z.shape).astype(z.dtype), zeros)
  state = TrainState.create(params={"encoder": variables["params"]},
                            batch_stats={"encoder": variables["batch_stats"]}, tx=optax.sgd(0.1))
  manager = ckpt_lib.make_manager(workdir, keep=1)
  ckpt_lib.save(manager, 1, state, None, force=True)
  manager.wait_until_finished()
  manager.close()
  return variables


def _target(name, num_classes=None):
  from auxskd_jax import weights
  from auxskd_jax.tasks import common
  from auxskd_jax.train import encoder as encoder_lib

  return encoder_lib.build_and_init(_small(name), num_classes=num_classes, random=False)[1]


def test_our_checkpoint_loads_with_new_head(tmp_path):
  from auxskd_jax import weights
  from auxskd_jax.tasks import common
  from auxskd_jax.train import encoder as encoder_lib

  saved = _save_checkpoint(str(tmp_path / "pre"), "r21d_10")
  target = _target("r21d_10", num_classes=3)
  v, report = weights.load_encoder(str(tmp_path / "pre"), target, strict=True, flag="train.init_from",
                                        model_name="r21d_10")
  np.testing.assert_array_equal(v["params"]["conv2"]["block1"]["bn1"]["scale"],
                                saved["params"]["conv2"]["block1"]["bn1"]["scale"])
  np.testing.assert_array_equal(v["batch_stats"]["conv5"]["block1"]["bn2"]["var"],
                                saved["batch_stats"]["conv5"]["block1"]["bn2"]["var"])
  # The new 3-way head keeps its fresh values (not the checkpoint's 128-d head).
  np.testing.assert_array_equal(v["params"]["linear"]["kernel"], target["params"]["linear"]["kernel"])
  assert not report.missing
  # A frozen encoder for retrieval: no head at all, every layer from the checkpoint.
  config = _small("r21d_10")
  config.eval.init_from = str(tmp_path / "pre")
  model, frozen = common.frozen_encoder(config, "eval.init_from")
  assert "linear" not in frozen["params"]
  np.testing.assert_array_equal(frozen["params"]["conv1"]["spatial_conv"]["kernel"],
                                saved["params"]["conv1"]["spatial_conv"]["kernel"])


def test_torch_checkpoint_loads(tmp_path):
  torch = pytest.importorskip("torch")
  from auxskd_jax.testing import reference_torch
  from auxskd_jax import weights
  from auxskd_jax.tasks import common
  from auxskd_jax.train import encoder as encoder_lib

  net = reference_torch.build_torch("r21d_10", num_classes=128, width=8)
  # A DataParallel-style checkpoint, as the reference saves them.
  sd = {"module." + k: v for k, v in net.state_dict().items()}
  path = str(tmp_path / "ref.pth")
  torch.save(sd, path)
  v, report = weights.load_encoder(path, _target("r21d_10", num_classes=3), strict=True,
                                     flag="train.init_from",
                                        model_name="r21d_10")
  w = sd["module.conv1.spatial_conv.weight"].numpy()  # (out, in, kt, kh, kw)
  np.testing.assert_allclose(v["params"]["conv1"]["spatial_conv"]["kernel"],
                             np.transpose(w, (2, 3, 4, 1, 0)), atol=1e-7)
  assert v["params"]["linear"]["kernel"].shape == (64, 3)


def test_checkpoint_of_another_encoder_names_layers(tmp_path):
  from auxskd_jax import weights
  from auxskd_jax.tasks import common
  from auxskd_jax.train import encoder as encoder_lib

  # r21d_10's checkpoint lacks the second block of every stage of r21d_18.
  _save_checkpoint(str(tmp_path / "r21d10"), "r21d_10")
  with pytest.raises(ConfigError, match=r"train.init_from.*conv\d/blocks"):
    weights.load_encoder(str(tmp_path / "r21d10"), _target("r21d_18", 3), strict=True,
                         flag="train.init_from", model_name="r21d_18")
  # A C3D checkpoint shares almost nothing with R(2+1)D.
  _save_checkpoint(str(tmp_path / "c3d"), "c3d")
  with pytest.raises(ConfigError, match="eval.init_from.*conv1"):
    config = _small("r21d_10")
    config.eval.init_from = str(tmp_path / "c3d")
    common.frozen_encoder(config, "eval.init_from")


def test_missing_checkpoint_path_fails_validation(tmp_path):
  c = _finetune_config(str(tmp_path), **{"train.init_from": "/nonexistent/run"})
  with pytest.raises(ConfigError, match="train.init_from.*does not exist"):
    tasks.get(c.task).validate(c)
