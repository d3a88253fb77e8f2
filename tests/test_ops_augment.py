"""Crop, flip, torchvision-style colour jitter and input conventions (auxskd_jax.ops)."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from auxskd_jax import config as config_lib
from auxskd_jax import ops
from auxskd_jax.ops import jitter as jitter_lib


def augment_config(**overrides):
  a = config_lib.base_config().augment
  for k, v in overrides.items():
    a[k] = v
  return a


def run_augment(key, clips, crop_size, augment, train):
  fn = jax.jit(lambda k, x: ops.augment_clips(k, x, crop_size=crop_size, augment=augment,
                                              train=train))
  return np.asarray(fn(key, jnp.asarray(clips)))


def decode_reference(out):
  """Reference-convention output back to RGB uint8 values."""
  return np.rint(np.asarray(ops.from_convention(out, "reference")) * 255).astype(int)


def random_clips(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# torchvision.transforms.functional (tensor path, float in [0, 1]) transcribed in numpy.
def tv_gray(x):
  return 0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def tv_brightness(x, f):
  return np.clip(x * f, 0, 1)


def tv_contrast(x, f):
  return np.clip(f * x + (1 - f) * tv_gray(x).mean(), 0, 1)


def tv_saturation(x, f):
  return np.clip(f * x + (1 - f) * tv_gray(x)[..., None], 0, 1)


def tv_hue(x, h):
  out = np.empty_like(x)
  for idx in np.ndindex(x.shape[:-1]):
    hh, s, v = colorsys.rgb_to_hsv(*x[idx])
    out[idx] = colorsys.hsv_to_rgb((hh + h) % 1.0, s, v)
  return out


def find_crop(clip, out, crop_size):
  """All (top, left, flipped) whose crop of `clip [T, H, W, 3]` equals `out` for every frame."""
  hits = []
  for y in range(clip.shape[1] - crop_size + 1):
    for x in range(clip.shape[2] - crop_size + 1):
      window = clip[:, y:y + crop_size, x:x + crop_size]
      if np.array_equal(window, out):
        hits.append((y, x, False))
      if np.array_equal(window[:, :, ::-1], out):
        hits.append((y, x, True))
  return hits


def test_jitter_matches_torchvision_semantics():
  image = np.random.default_rng(1).uniform(0, 1, size=(5, 6, 3)).astype(np.float32)
  tv = {0: tv_brightness, 1: tv_contrast, 2: tv_saturation, 3: tv_hue}
  strengths = dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)
  fn = jax.jit(lambda x, p: jitter_lib.color_jitter_frame(x, p, **strengths))
  for order, factors in [((0, 1, 2, 3), (1.5, 0.4, 1.7, 0.15)),
                         ((3, 2, 1, 0), (0.3, 1.6, 0.2, -0.18)),
                         ((2, 0, 3, 1), (1.2, 1.8, 0.6, 0.05))]:
    params = jitter_lib.JitterParams(
        apply=jnp.array(True), brightness=jnp.float32(factors[0]),
        contrast=jnp.float32(factors[1]), saturation=jnp.float32(factors[2]),
        hue=jnp.float32(factors[3]), order=jnp.array(order, jnp.int32))
    want = image.astype(np.float64)
    for op in order:
      want = tv[op](want, factors[op])
    np.testing.assert_allclose(fn(image, params), want, atol=2e-5)
    skipped = fn(image, params._replace(apply=jnp.array(False)))
    np.testing.assert_array_equal(skipped, image)
  # Brightness is multiplicative (torchvision), not dm-pix's additive delta.
  dark = jitter_lib.color_jitter_frame(
      image, params._replace(order=jnp.arange(4, dtype=jnp.int32)), brightness=0.8,
      contrast=0.0, saturation=0.0, hue=0.0)
  np.testing.assert_allclose(dark, np.clip(image * 1.2, 0, 1), atol=1e-6)


@pytest.mark.parametrize("strengths", [
    dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2),  # the paper's
    dict(brightness=0.4, contrast=0.0, saturation=0.6, hue=0.0),  # some ops skipped
])
def test_jitter_equals_the_switch_form(strengths):
  """The branch-free jitter gives the switch-based one's output (f32 rounding) for the same
  draws: every order of the 24, applied or not, per-clip params broadcast over frames."""
  from auxskd_jax.testing import jitter_switch

  images = jnp.asarray(np.random.default_rng(2).uniform(0, 1, size=(4, 8, 3, 5, 6, 3)),
                       jnp.float32)
  params = jitter_lib.draw_jitter_params(jax.random.PRNGKey(3), (4, 8, 1), prob=0.8,
                                         **strengths)
  orders = {tuple(o) for o in np.asarray(params.order).reshape(-1, 4)}
  assert len(orders) >= 16 and not np.all(params.apply) and np.any(params.apply)
  new = jax.jit(lambda x, p: jitter_lib.color_jitter(x, p, **strengths))(images, params)
  old = jax.jit(lambda x, p: jitter_switch.color_jitter(x, p, **strengths))(images, params)
  np.testing.assert_allclose(new, old, atol=2e-6, rtol=0)
  assert not np.allclose(new, images, atol=1e-3)


def test_jitter_draws_follow_torchvision_ranges():
  n = 20000
  p = jitter_lib.draw_jitter_params(jax.random.PRNGKey(0), (n,), prob=0.8, brightness=0.8,
                                    contrast=0.5, saturation=1.5, hue=0.2)
  for name, low, high in [("brightness", 0.2, 1.8), ("contrast", 0.5, 1.5),
                          ("saturation", 0.0, 2.5), ("hue", -0.2, 0.2)]:
    x = np.asarray(getattr(p, name))
    assert low <= x.min() < low + 0.01 and high - 0.01 < x.max() <= high, name
  assert abs(np.asarray(p.apply).mean() - 0.8) < 0.02
  order = np.asarray(p.order)
  assert (np.sort(order, axis=1) == np.arange(4)).all()
  codes = order @ np.array([64, 16, 4, 1])
  counts = np.unique(codes, return_counts=True)[1]
  assert len(counts) == 24 and np.abs(counts / n - 1 / 24).max() < 0.01


def test_crop_clips_is_a_manual_slice_shared_by_all_frames():
  clips = random_clips((3, 2, 4, 20, 24, 3))
  top = jnp.array([[0, 4], [2, 3], [1, 0]])
  left = jnp.array([[8, 0], [5, 1], [2, 7]])
  out = np.asarray(ops.crop_clips(jnp.asarray(clips), top, left, 16))
  assert out.shape == (3, 2, 4, 16, 16, 3)
  for b in range(3):
    for n in range(2):
      y, x = int(top[b, n]), int(left[b, n])
      np.testing.assert_array_equal(out[b, n], clips[b, n, :, y:y + 16, x:x + 16])


def test_random_crop_and_flip_are_per_clip():
  clips = random_clips((8, 4, 3, 20, 24, 3), seed=2)
  a = augment_config(jitter_prob=0.0)
  out = decode_reference(run_augment(jax.random.PRNGKey(3), clips, 16, a, True))
  assert out.shape == (8, 4, 3, 16, 16, 3)
  corners, flips = set(), []
  for b in range(8):
    for n in range(4):
      hits = find_crop(clips[b, n], out[b, n], 16)
      assert len(hits) == 1, "each clip is one crop (and one flip) of all of its frames"
      corners.add(hits[0][:2])
      flips.append(hits[0][2])
  assert len(corners) > 8  # corners are drawn per clip
  assert 0.25 < np.mean(flips) < 0.75
  no_flip = decode_reference(run_augment(jax.random.PRNGKey(3), clips, 16,
                                         augment_config(jitter_prob=0.0, flip=False), True))
  assert all(not find_crop(clips[b, 0], no_flip[b, 0], 16)[0][2] for b in range(8))


def test_flip_clips_mirrors_whole_clips():
  clips = random_clips((2, 3, 4, 5, 3), seed=4)
  out = np.asarray(ops.flip_clips(jnp.asarray(clips), jnp.array([True, False])))
  np.testing.assert_array_equal(out[0], clips[0, :, :, ::-1])
  np.testing.assert_array_equal(out[1], clips[1])


@pytest.mark.parametrize("per_frame", [True, False])
def test_jitter_per_frame_or_per_clip(per_frame):
  frame = random_clips((16, 16, 3), seed=5)
  clips = np.broadcast_to(frame, (4, 2, 6, 16, 16, 3)).copy()  # every frame the same
  a = augment_config(jitter_prob=1.0, flip=False, jitter_per_frame=per_frame)
  out = run_augment(jax.random.PRNGKey(6), clips, 16, a, True)
  plain = np.asarray(ops.to_convention(jnp.asarray(frame, jnp.float32) / 255, "reference"))
  for b in range(4):
    for n in range(2):
      assert not np.allclose(out[b, n, 0], plain, atol=1.0)  # jittered
      same = [np.allclose(out[b, n, 0], out[b, n, t], atol=1e-3) for t in range(1, 6)]
      assert (not any(same)) if per_frame else all(same)


def test_jitter_probability_per_frame():
  clips = random_clips((8, 2, 8, 16, 16, 3), seed=7)
  a = augment_config(jitter_prob=0.5, flip=False)
  out = decode_reference(run_augment(jax.random.PRNGKey(8), clips, 16, a, True))
  untouched = np.array([np.array_equal(out[b, n, t], clips[b, n, t])
                        for b in range(8) for n in range(2) for t in range(8)])
  assert 0.35 < untouched.mean() < 0.65


def test_center_crop_follows_torchvision_rounding():
  assert ops.center_crop_offsets(128, 171, 112) == (8, 30)


def test_evaluation_is_a_deterministic_centre_crop():
  clips = random_clips((2, 3, 4, 20, 27, 3), seed=9)
  a = augment_config()
  first = run_augment(jax.random.PRNGKey(0), clips, 16, a, False)
  second = run_augment(jax.random.PRNGKey(1), clips, 16, a, False)
  np.testing.assert_array_equal(first, second)
  top, left = ops.center_crop_offsets(20, 27, 16)
  assert (top, left) == (2, 6)  # round(5.5) = 6, as torchvision's CenterCrop
  np.testing.assert_array_equal(decode_reference(first),
                                clips[:, :, :, top:top + 16, left:left + 16])


def test_conventions_dtype_order_and_range():
  frame = np.zeros((1, 1, 2, 16, 16, 3), np.uint8)
  frame[..., 0], frame[..., 1], frame[..., 2] = 200, 100, 10  # RGB
  ref = run_augment(jax.random.PRNGKey(0), frame, 16, augment_config(), False)
  assert ref.dtype == np.float32 and ref.shape == (1, 1, 2, 16, 16, 3)
  np.testing.assert_allclose(ref[0, 0, 0, 0, 0], [10, 100, 200], rtol=1e-6)  # BGR, 0..255
  rgb = run_augment(jax.random.PRNGKey(0), frame, 16, augment_config(input_convention="rgb"),
                    False)
  want = (np.array([200, 100, 10]) / 255 - np.array(ops.IMAGENET_MEAN)) / np.array(
      ops.IMAGENET_STD)
  np.testing.assert_allclose(rgb[0, 0, 0, 0, 0], want, rtol=1e-5)
  with pytest.raises(ValueError, match="input_convention"):
    ops.to_convention(jnp.zeros((2, 2, 3)), "bgr")

  clips = random_clips((4, 2, 4, 20, 24, 3), seed=10)
  ref = run_augment(jax.random.PRNGKey(1), clips, 16, augment_config(), True)
  assert ref.dtype == np.float32 and 0 <= ref.min() and ref.max() <= 255
  assert ref.max() > 200 and ref.min() < 50
  rgb = np.asarray(ops.to_convention(ops.from_convention(ref, "reference"), "rgb"))
  low = -np.array(ops.IMAGENET_MEAN) / np.array(ops.IMAGENET_STD)
  high = (1 - np.array(ops.IMAGENET_MEAN)) / np.array(ops.IMAGENET_STD)
  assert (rgb >= low - 1e-5).all() and (rgb <= high + 1e-5).all()
