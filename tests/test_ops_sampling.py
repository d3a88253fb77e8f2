"""Frame-offset rules, label draws and make_clips' frame selection (auxskd_jax.ops)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from auxskd_jax import config as config_lib
from auxskd_jax import ops

PAIRS = [(16, 4), (8, 4), (12, 3), (8, 2)]


def spec_offsets(r: int, s: int, clip_len: int, num_segments: int) -> list[int]:
  """SPEC section 4 transcribed literally: f_i = f_{i-1} + (r if a <= i <= b else 1)."""
  a = (s - 1) * clip_len / num_segments
  b = s * clip_len / num_segments
  f = [0]
  for i in range(1, clip_len):
    f.append(f[-1] + (r if a <= i <= b else 1))
  return f


def small_config(**clip):
  c = config_lib.base_config()
  c.clip.crop_size = 16
  c.clip.eval_clips = 3
  for k, v in clip.items():
    c.clip[k] = v
  return c


def id_windows(batch_size: int, views: int, window: int, starts: np.ndarray,
               num_frames: np.ndarray, height: int = 20, width: int = 24) -> np.ndarray:
  """Windows as the host makes them: frame j of view v is video frame (start + j) % n.

  Red encodes the video frame (4 * id), green the view (60 * v), blue is 0, so frame identity
  and channel order survive gather and crop.
  """
  w = np.zeros((batch_size, views, window, height, width, 3), np.uint8)
  for b in range(batch_size):
    for v in range(views):
      ids = (starts[b, v] + np.arange(window)) % num_frames[b]
      w[b, v, :, :, :, 0] = (4 * ids)[:, None, None]
      w[b, v, :, :, :, 1] = 60 * v
  return w


def frame_ids(clips: jax.Array) -> np.ndarray:
  """Decodes `id_windows`' frame ids from reference-convention (BGR) clips: [B, N, L]."""
  clips = np.asarray(clips)
  return np.rint(clips[:, :, :, 0, 0, 2] / 4).astype(int)


@pytest.mark.parametrize("clip_len,num_segments", PAIRS)
def test_vspp_offsets_match_spec_for_every_pair(clip_len, num_segments):
  max_speed = 4
  jitted = jax.jit(lambda r, s: ops.vspp_offsets(r, s, clip_len, num_segments))
  rs = [(r, s) for r in range(1, max_speed + 1) for s in range(1, num_segments + 1)]
  batched = jax.vmap(lambda r, s: ops.vspp_offsets(r, s, clip_len, num_segments))(
      jnp.array([p[0] for p in rs]), jnp.array([p[1] for p in rs]))
  assert batched.dtype == jnp.int32 and batched.shape == (len(rs), clip_len)
  for k, (r, s) in enumerate(rs):
    want = spec_offsets(r, s, clip_len, num_segments)
    np.testing.assert_array_equal(jitted(r, s), want)
    np.testing.assert_array_equal(batched[k], want)
  span = max(spec_offsets(r, s, clip_len, num_segments)[-1] + 1 for r, s in rs)
  assert ops.vspp_span(clip_len, num_segments, max_speed) == span
  c = small_config(clip_len=clip_len, num_segments=num_segments, max_speed=max_speed)
  assert ops.window_len("vspp", c) == span == ops.window_len("auxskd", c.clip)


def test_window_len_and_views_at_paper_settings():
  c = config_lib.base_config()
  assert {t: ops.window_len(t, c) for t in ops.RECIPES} == {
      "auxskd": 31, "vspp": 31, "pace": 61, "vcop": 64, "clip": 16, "eval": 16, "rspnet": 61}
  assert {t: ops.num_views(t, c) for t in ops.RECIPES} == {
      "auxskd": 2, "vspp": 1, "pace": 1, "vcop": 1, "clip": 1, "eval": 10, "rspnet": 2}
  with pytest.raises(ValueError, match="unknown"):
    ops.window_len("speednet", c)


def test_vspp_labels_are_uniform():
  n = 64000
  speed, segment = jax.jit(lambda k: ops.draw_vspp(k, (n,), 4, 4))(jax.random.PRNGKey(1))
  joint = np.bincount((np.asarray(speed) - 1) * 4 + np.asarray(segment) - 1, minlength=16) / n
  assert np.abs(joint - 1 / 16).max() < 0.006  # about 6 standard deviations
  pace = ops.draw_pace(jax.random.PRNGKey(2), (n,), 4)
  assert np.abs(np.bincount(np.asarray(pace) - 1, minlength=4) / n - 0.25).max() < 0.012
  order = ops.draw_vcop_order(jax.random.PRNGKey(3), (n,), 3)
  assert np.abs(np.bincount(np.asarray(order), minlength=6) / n - 1 / 6).max() < 0.012
  assert np.asarray(speed).min() == 1 and np.asarray(speed).max() == 4


@pytest.mark.parametrize("max_speed,num_segments", [(4, 4), (2, 3)])
def test_auxskd_pairs_differ_in_both_and_are_uniform(max_speed, num_segments):
  n = 150000
  speed, segment = jax.jit(lambda k: ops.draw_vspp_pair(k, (n,), max_speed, num_segments))(
      jax.random.PRNGKey(4))
  speed, segment = np.asarray(speed) - 1, np.asarray(segment) - 1
  assert speed.shape == (n, 2)
  assert (speed[:, 0] != speed[:, 1]).all() and (segment[:, 0] != segment[:, 1]).all()
  assert speed.min() == 0 and speed.max() == max_speed - 1
  cells = max_speed * num_segments
  first = speed[:, 0] * num_segments + segment[:, 0]
  second = speed[:, 1] * num_segments + segment[:, 1]
  counts = np.bincount(first * cells + second, minlength=cells * cells).reshape(cells, cells)
  allowed = np.array([[i // num_segments != j // num_segments and
                       i % num_segments != j % num_segments for j in range(cells)]
                      for i in range(cells)])
  assert counts[~allowed].sum() == 0
  expected = n / allowed.sum()
  assert np.abs(counts[allowed] - expected).max() < 6 * np.sqrt(expected)


def test_auxskd_needs_two_speeds_and_segments():
  with pytest.raises(ValueError, match="max_speed"):
    ops.draw_vspp_pair(jax.random.PRNGKey(0), (3,), 1, 4)
  c = small_config(max_speed=1)
  with pytest.raises(config_lib.ConfigError, match="clip.max_speed"):
    ops.validate("auxskd", c)
  ops.validate("vspp", c)
  with pytest.raises(config_lib.ConfigError, match="augment.hue"):
    c.augment.hue = 0.7
    ops.validate("vspp", c)


@pytest.mark.parametrize("task", ["vspp", "auxskd"])
def test_vspp_clips_wrap_around_short_videos(task):
  c = small_config()
  b, window = 8, ops.window_len(task, c)
  views = ops.num_views(task, c)
  rng = np.random.default_rng(0)
  num_frames = rng.integers(5, 20, size=b)  # all shorter than the 31-frame window
  starts = rng.integers(0, num_frames[:, None], size=(b, views))
  batch = {"windows": id_windows(b, views, window, starts, num_frames),
           "label": np.full(b, -1, np.int32)}
  clips, labels = jax.jit(lambda k, x: ops.make_clips(task, k, x, c, train=False))(
      jax.random.PRNGKey(5), batch)
  assert clips.shape == (b, views, 16, 16, 16, 3)
  speed = np.asarray(labels["speed"]).reshape(b, views) + 1
  segment = np.asarray(labels["segment"]).reshape(b, views) + 1
  got = frame_ids(clips)
  for i in range(b):
    for v in range(views):
      want = (starts[i, v] + np.array(spec_offsets(speed[i, v], segment[i, v], 16, 4))) \
          % num_frames[i]
      np.testing.assert_array_equal(got[i, v], want)
      # Clip v reads window v (green is resampled in float: 60.000004 on jax 0.12).
      np.testing.assert_allclose(np.asarray(clips)[i, v, ..., 1], 60 * v, atol=1e-3)


def test_pace_clip_and_eval_frames():
  c = small_config()
  b = 6
  rng = np.random.default_rng(1)
  for task in ("pace", "clip", "eval"):
    window, views = ops.window_len(task, c), ops.num_views(task, c)
    num_frames = np.full(b, 64)  # ids stay below 64 so 4 * id fits in uint8
    starts = rng.integers(0, 64, size=(b, views))
    batch = {"windows": id_windows(b, views, window, starts, num_frames),
             "label": np.arange(b, dtype=np.int32)}
    clips, labels = ops.make_clips(task, jax.random.PRNGKey(6), batch, c, train=False)
    got = frame_ids(clips)
    assert got.shape == (b, views, 16)
    if task == "pace":
      stride = np.asarray(labels["pace"]) + 1
      want = starts[:, :1, None] + np.arange(16)[None, None] * stride[:, None, None]
    else:
      np.testing.assert_array_equal(labels["label"], np.arange(b))
      want = starts[:, :, None] + np.arange(16)[None, None]
    np.testing.assert_array_equal(got, want % 64)


def test_vcop_labels_decode_to_orders_and_clips_are_right_frames():
  table = ops.vcop_permutations(3)
  assert table.tolist() == [list(p) for p in itertools.permutations(range(3))]
  assert table[0].tolist() == [0, 1, 2] and table[5].tolist() == [2, 1, 0]
  c = small_config()
  b, window = 48, ops.window_len("vcop", c)
  assert window == 3 * 16 + 2 * 8
  starts = np.zeros((b, 1), int)
  batch = {"windows": id_windows(b, 1, window, starts, np.full(b, 64)),
           "label": np.zeros(b, np.int32)}
  clips, labels = ops.make_clips("vcop", jax.random.PRNGKey(7), batch, c, train=False)
  assert clips.shape == (b, 3, 16, 16, 16, 3)
  order = np.asarray(labels["order"])
  assert set(order.tolist()) == set(range(6))
  got = frame_ids(clips)
  for i in range(b):
    for pos in range(3):
      original = table[order[i], pos]
      np.testing.assert_array_equal(got[i, pos], original * 24 + np.arange(16))
    assert tuple(got[i, :, 0] // 24) == tuple(table[order[i]])


def test_make_clips_rejects_short_windows_and_missing_views():
  c = small_config()
  batch = {"windows": np.zeros((2, 1, 30, 20, 24, 3), np.uint8)}
  with pytest.raises(ValueError, match=r"window_len=ops.window_len\('vspp'"):
    ops.make_clips("vspp", jax.random.PRNGKey(0), batch, c, train=True)
  batch = {"windows": np.zeros((2, 1, 31, 20, 24, 3), np.uint8)}
  with pytest.raises(ValueError, match=r"views=ops.num_views\('auxskd'"):
    ops.make_clips("auxskd", jax.random.PRNGKey(0), batch, c, train=True)
  with pytest.raises(ValueError, match="crop_size"):
    c.clip.crop_size = 21
    ops.make_clips("vspp", jax.random.PRNGKey(0), batch, c, train=True)


def test_make_clips_under_pmap_draws_differently_per_device():
  n_dev = jax.local_device_count()
  assert n_dev == 4, "tests/conftest.py sets up 4 CPU devices"
  c = small_config()
  b = 8
  window = ops.window_len("auxskd", c)
  rng = np.random.default_rng(2)
  windows = rng.integers(0, 256, size=(n_dev, b, 2, window, 20, 24, 3), dtype=np.uint8)
  windows[1] = windows[0]  # same data on two devices: only the keys differ
  keys = jax.random.split(jax.random.PRNGKey(8), n_dev)
  step = jax.pmap(lambda k, x: ops.make_clips("auxskd", k, x, c, train=True),
                  axis_name="batch")
  clips, labels = step(keys, {"windows": windows})
  assert clips.shape == (n_dev, b, 2, 16, 16, 16, 3) and clips.dtype == jnp.float32
  assert labels["speed"].shape == (n_dev, b, 2)
  assert not np.array_equal(labels["speed"][0], labels["speed"][1]) or \
      not np.array_equal(labels["segment"][0], labels["segment"][1])
  assert not np.allclose(clips[0], clips[1])
  again, _ = step(keys, {"windows": windows})
  np.testing.assert_array_equal(clips, again)  # same keys, same clips
