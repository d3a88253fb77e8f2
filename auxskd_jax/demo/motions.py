"""Motion classes of the demo dataset: each class is a speed law, never an appearance.

Glyphs translate over the frame (a torus) in a direction drawn per video; what tells the
classes apart is only *how fast they move and how their speed changes in time*: constantly
slow, constantly fast, speeding up, or slowing down. These are the cues VSPP's pretext task
(which segment of a clip plays faster, and how much) has to perceive, so pretraining on
unlabelled videos has something to offer the downstream task. Every law keeps the pace
locally smooth, as VSPP assumes of natural video: an earlier design with stop-and-go and
back-and-forth classes (abrupt speed changes every two or three frames, which look like VSPP's
own pace changes) kept VSPP at chance on its pool. Every random quantity (start, direction,
speeds, growth rate, glyph angle and scale) is drawn per video.

A trajectory gives, per frame, the glyph's centre (x, y in pixels, wrapping mod the frame side),
rotation angle (degrees, constant here) and scale (constant).
"""

from __future__ import annotations

import numpy as np

# Order fixes the label ids.
CLASSES: tuple[str, ...] = ("slow", "fast", "speeding_up", "slowing_down")

# Speeds in pixels per frame for a 32-pixel frame (scaled with the frame side). Slow stays
# above 0.8 px so the glyph, pasted at integer positions, moves every frame.
SLOW = (0.8, 1.1)
FAST = (2.4, 3.2)
# Speeding up: from RAMP_START px/frame, x RAMP_GROWTH per frame (about x2 over an 8-frame
# clip, x9 over 24 frames); slowing down is the same law played backwards.
RAMP_START = (0.5, 0.7)
RAMP_GROWTH = (1.08, 1.12)

Trajectory = dict[str, np.ndarray]  # keys x, y, angle, scale; each float64 [T]


def step_speeds(name: str, rng: np.random.Generator, num_frames: int, size: int) -> np.ndarray:
  """Speed along the video's direction for each of the T - 1 frame steps (px/frame)."""
  unit = size / 32.0
  steps = num_frames - 1
  if name == "slow":
    return np.full(steps, rng.uniform(*SLOW) * unit)
  if name == "fast":
    return np.full(steps, rng.uniform(*FAST) * unit)
  if name in ("speeding_up", "slowing_down"):
    ramp = rng.uniform(*RAMP_START) * rng.uniform(*RAMP_GROWTH) ** np.arange(steps) * unit
    return ramp if name == "speeding_up" else ramp[::-1].copy()
  raise ValueError(f"unknown demo motion class {name!r}; choose one of {CLASSES}.")


def trajectory(name: str, rng: np.random.Generator, num_frames: int, size: int
               ) -> Trajectory:
  """The per-frame pose of one video of class `name` (see CLASSES); x, y wrap mod `size`."""
  speeds = step_speeds(name, rng, num_frames, size)
  theta = rng.uniform(0.0, 2 * np.pi)
  x0, y0 = rng.uniform(0.0, size, 2)
  travelled = np.concatenate([[0.0], np.cumsum(speeds)])
  return {
      "x": np.mod(x0 + np.cos(theta) * travelled, size),
      "y": np.mod(y0 + np.sin(theta) * travelled, size),
      "angle": np.full(num_frames, rng.uniform(0.0, 360.0)),
      "scale": np.full(num_frames, rng.uniform(0.7, 1.2)),
  }
