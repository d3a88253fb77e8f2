"""The Python API (auxskd_jax.api): an encoder saved as one of our runs or written as the authors'
auxSKD .pth loads and embeds frames and video files; the authors' file gives the features their
PyTorch model gives; k-NN, retrieval and nearest neighbours on features; the example runs.

Tiny throughout: an 8-wide R3D-10 on 8-frame 16-pixel clips, 2 clips per video."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import auxskd_jax as ax
from auxskd_jax.errors import ConfigError
from auxskd_jax.testing import synthetic

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(width=8, clip_len=8, crop_size=16)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """(encoder, workdir): a random tiny encoder saved as a run's checkpoint."""
  encoder = ax.init_encoder("r3d_10", seed=1, **TINY)
  workdir = str(tmp_path_factory.mktemp("api") / "run")
  ax.save_encoder(encoder, workdir)
  return encoder, workdir


def _videos(n=3, t=12, size=(18, 24), seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, t) + size + (3,), dtype=np.uint8)


def test_run_checkpoint_loads_and_embeds_frames_and_files(saved, tmp_path):
  encoder, workdir = saved
  assert encoder.frame_size == (18, 24) and encoder.feature_dim() == 64
  videos = _videos()
  feats = ax.embed(encoder, videos, num_clips=2, batch_size=2)  # 2 batches, one padded
  assert feats.shape == (3, 64) and np.isfinite(feats).all()
  assert np.abs(feats[0] - feats[1]).max() > 1e-4  # another video, other features
  clips = ax.embed(encoder, videos[1], num_clips=2, per_clip=True)  # one video: [E, D]
  assert clips.shape == (2, 64)
  np.testing.assert_allclose(clips.mean(0), feats[1], rtol=1e-5, atol=1e-6)

  for where in (workdir, os.path.join(workdir, "checkpoints", "0")):  # workdir or step folder
    loaded = ax.load_encoder(where)
    assert (loaded.name, loaded.width, loaded.config.clip.crop_size) == ("r3d_10", 8, 16)
    assert len(loaded.report.loaded) > 0 and not loaded.report.missing
    np.testing.assert_allclose(ax.embed(loaded, videos, num_clips=2), feats, rtol=1e-5,
                               atol=1e-6)

  # A video file of another size is decoded at the frame size (PyAV, as `prepare` stores it).
  path = synthetic.write_video(str(tmp_path / "clip.mp4"), _videos(1, 10, (32, 40))[0])
  assert ax.read_video(path).shape == (10, 32, 40, 3)
  frames = ax.read_video(path, encoder.frame_size)
  from_file = ax.embed(encoder, [path, videos[0]], num_clips=2)
  np.testing.assert_allclose(from_file[0], ax.embed(encoder, frames, num_clips=2), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(from_file[1], feats[0], rtol=1e-5, atol=1e-6)


def test_layers_pooled_and_conv5_maxpool(saved):
  encoder, _ = saved
  video = _videos(1)[0]
  np.testing.assert_array_equal(ax.embed(encoder, video, layer="pooled", num_clips=2),
                                ax.embed(encoder, video, layer="pool", num_clips=2))
  wide = ax.init_encoder("r3d_10", width=8, clip_len=8, crop_size=32)  # conv5 is 1 x 2 x 2
  dim = wide.feature_dim("conv5_maxpool")
  assert dim == 64 == wide.feature_dim("pool")  # 64 channels max-pooled to 1 x 1 x 1
  feats = ax.embed(wide, _videos(2, 8, wide.frame_size), layer="conv5_maxpool", num_clips=1)
  pooled = ax.embed(wide, _videos(2, 8, wide.frame_size), layer="pool", num_clips=1)
  assert feats.shape == (2, dim) and np.all(feats >= pooled - 1e-5)  # max >= mean of one map


def test_bad_inputs_say_what_to_do(saved, tmp_path):
  encoder, _ = saved
  with pytest.raises(ValueError, match="layer 'fc7'"):
    ax.embed(encoder, _videos(1)[0], layer="fc7")
  with pytest.raises(ValueError, match="'conv5_maxpool' is empty.*larger"):
    ax.embed(encoder, _videos(1)[0], layer="conv5_maxpool")  # 16-pixel crops: nothing left
  with pytest.raises(ValueError, match="uint8"):
    ax.embed(encoder, _videos(1)[0].astype(np.float32))
  with pytest.raises(ConfigError, match="does not exist"):
    ax.load_encoder(str(tmp_path / "nothing"))
  (tmp_path / "bare").mkdir()
  with pytest.raises(ConfigError, match="no auxskd-jax checkpoint"):
    ax.load_encoder(str(tmp_path / "bare"), model_name="r3d_10")


def test_authors_auxskd_pth_gives_their_models_features(tmp_path):
  torch = pytest.importorskip("torch")
  from auxskd_jax.testing import reference_torch

  checkpoint = reference_torch.auxskd_checkpoint("r3d_10", width=8, embed=16, hidden=32,
                                                 queue_size=12, clip=(8, 16))
  path = str(tmp_path / "pckpt_epoch_3.pth")
  torch.save(checkpoint, path)
  encoder = ax.load_encoder(path, clip_len=8, crop_size=16)  # name and width from the keys
  assert (encoder.name, encoder.width) == ("r3d_10", 8)
  assert encoder.report.format == "authors' auxSKD checkpoint (student encoder_q)"
  frames = _videos(1, 8, (16, 16), seed=3)[0]  # one clip, already the crop size
  ours = ax.embed(encoder, frames, num_clips=1, resize=False)

  student = reference_torch.build_torch("r3d_10", num_classes=16, width=8)
  prefix = "encoder_q.module."
  student.load_state_dict({k[len(prefix):]: v for k, v in checkpoint["state_dict"].items()
                           if k.startswith(prefix)})
  student.eval()
  bgr = torch.from_numpy(frames[..., ::-1].astype(np.float32).copy())  # 0..255 BGR, as theirs
  with torch.no_grad():
    theirs = student(bgr.permute(3, 0, 1, 2)[None], features_only=True)[0].numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3 * np.abs(theirs).max())

  # Their VSPP file (a DataParallel state dict with two heads): the encoder, heads left out.
  vspp = str(tmp_path / "epoch_segment_self_f-10.pth.tar")
  torch.save(reference_torch.vspp_checkpoint("r3d_10", width=8), vspp)
  loaded = ax.load_encoder(vspp, clip_len=8, crop_size=16)
  assert (loaded.name, loaded.width) == ("r3d_10", 8)
  assert loaded.report.format.startswith("PyTorch DataParallel")
  assert {"params/linear/kernel", "params/linear_segment/bias"} <= set(loaded.report.unused)
  with pytest.raises(ConfigError, match="r21d_10"):  # told another encoder: named layers
    ax.load_encoder(vspp, model_name="r21d_10", width=8)


def test_knn_retrieval_and_nearest():
  gallery = np.array([[1, 0], [0, 1], [1, 0.1], [-1, 0]], np.float32)
  labels = np.array([0, 1, 0, 2])
  queries = np.array([[2, 0.05], [0.1, 1]], np.float32)
  index, sims = ax.nearest(queries, gallery, k=2)
  np.testing.assert_array_equal(index, [[0, 2], [1, 2]])
  assert sims.shape == (2, 2) and sims[0, 0] > sims[0, 1] and abs(sims[1, 0] - 0.995) < 1e-3
  assert ax.retrieval(queries, [2, 1], gallery, labels, ks=(1, 4)) == {1: 0.5, 4: 1.0}
  assert ax.knn(queries, [0, 1], gallery, labels, k=1) == 1.0
  # A majority of 3: the second query's two class-0 neighbours outvote its nearest (class 1).
  assert ax.knn(queries, [2, 0], gallery, labels, k=3, temperature=0) == 0.5


def test_example_runs_with_a_saved_encoder(saved, tmp_path, capsys):
  _, workdir = saved
  spec = importlib.util.spec_from_file_location(
      "embed_and_retrieve", os.path.join(_ROOT, "examples", "embed_and_retrieve.py"))
  example = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(example)
  scores = example.main([f"--checkpoint={workdir}", f"--workdir={tmp_path / 'videos'}",
                         "--per_class=2"])
  out = capsys.readouterr().out
  assert set(scores) == {"top1", "top5", "knn"} and all(0 <= v <= 1 for v in scores.values())
  assert "8 train and 4 test videos -> 64-d features" in out and "init_from" in out
  assert scores["top5"] >= scores["top1"]
  # the same --workdir serves an encoder of another clip size (one video set per setting)
  other = example.demo_videos(str(tmp_path / "videos"), size=40, num_frames=8, per_class=1)
  assert len(other["train"][0]) == 4 and len(other["test"][0]) == 4


def test_import_stays_cheap():
  """`import auxskd_jax` loads no JAX; the API comes on first use (test_convert checks that it
  needs neither torch nor TensorFlow)."""
  code = "import sys, auxskd_jax; assert 'jax' not in sys.modules, 'jax imported'"
  subprocess.run([sys.executable, "-c", code], check=True, cwd=_ROOT,
                 env={**os.environ, "PYTHONPATH": _ROOT})
  from auxskd_jax import api

  assert ax.embed is api.embed and ax.load_encoder is api.load_encoder
  assert set(api.__all__) <= set(dir(ax))
