"""Renders one demo video: random glyphs moving by their class's law over a dark background."""

from __future__ import annotations

import numpy as np
from PIL import Image

from auxskd_jax.demo import backgrounds, glyphs, motions

GLYPH_FRACTION = 0.5  # glyph side relative to the frame side, at scale 1
NUM_GLYPHS = 2  # moving together (one rigid group): twice the moving edges of one glyph


def render_video(rng: np.random.Generator, class_name: str, num_frames: int, size: int
                 ) -> tuple[np.ndarray, np.ndarray, motions.Trajectory]:
  """Returns (frames uint8 [T, size, size, 3], glyph alpha float32 [T, size, size], pose).

  The alpha masks and the pose let tests check that the motion is what the class claims.
  Glyph k sits at the pose's centre plus a fixed random offset (glyph 0 at offset 0).
  """
  glyph_side = max(4, int(round(GLYPH_FRACTION * size)))
  sprites = [glyphs.random_glyph(rng, glyph_side * 2) for _ in range(NUM_GLYPHS)]  # 2x, shrunk
  offsets = [np.zeros(2)] + [rng.uniform(0.0, size, 2) for _ in range(NUM_GLYPHS - 1)]
  background = Image.fromarray(backgrounds.dark_background(rng, size)).convert("RGBA")
  pose = motions.trajectory(class_name, rng, num_frames, size)
  frames = np.empty((num_frames, size, size, 3), np.uint8)
  masks = np.empty((num_frames, size, size), np.float32)
  for t in range(num_frames):
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    for sprite, (dx, dy) in zip(sprites, offsets):
      g = sprite.rotate(float(pose["angle"][t]), resample=Image.BILINEAR, expand=True)
      side = max(1, int(round(g.width * 0.5 * float(pose["scale"][t]))))
      g = g.resize((side, side), Image.BILINEAR)
      x0 = int(round((float(pose["x"][t]) + dx) % size - side / 2.0))
      y0 = int(round((float(pose["y"][t]) + dy) % size - side / 2.0))
      for oy in (-size, 0, size):  # the frame is a torus: wrapped parts show at once
        for ox in (-size, 0, size):
          layer.paste(g, (x0 + ox, y0 + oy), g)
    frames[t] = np.asarray(Image.alpha_composite(background, layer).convert("RGB"))
    masks[t] = np.asarray(layer.getchannel("A"), np.float32) / 255.0
  return frames, masks, pose


def real_clip(rng: np.random.Generator, video: np.ndarray, num_frames: int, size: int
              ) -> np.ndarray:
  """uint8 [num_frames, size, size, 3]: a random square crop of consecutive real frames."""
  n, h, w = video.shape[:3]
  start = int(rng.integers(0, max(1, n - num_frames + 1)))
  idx = (start + np.arange(num_frames)) % n
  side = int(rng.integers(max(8, min(h, w) // 2), min(h, w) + 1))
  y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
  return np.stack([np.asarray(Image.fromarray(video[i, y:y + side, x:x + side]).resize(
      (size, size), Image.BILINEAR)) for i in idx])
