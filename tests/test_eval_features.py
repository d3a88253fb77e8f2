"""Feature extraction: padding masked, order kept, subsets, clip means, and the 10 uniformly
spaced eval clips."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from auxskd_jax import config as config_lib
from auxskd_jax.evaluate import features


class FrameMeans(nn.Module):
  """A stand-in encoder whose 'features' are the mean value of each frame of the clip.

  With frames whose every pixel equals the frame's index in the video, the features spell
  out which frames each clip holds. Its `linear` head is the identity map.
  """
  n: int = 8

  @nn.compact
  def __call__(self, x, train=False, features_only=False):
    feats = x.mean(axis=(2, 3, 4))
    self.param("linear", lambda *_: {"kernel": jnp.eye(self.n), "bias": jnp.zeros(self.n)})
    return feats


def _config(clips=3):
  c = config_lib.base_config()
  c.clip.clip_len = 8
  c.clip.crop_size = 8
  c.clip.eval_clips = clips
  c.augment.input_convention = "reference"
  return c


_HEAD = {"params": {"linear": {"kernel": jnp.eye(8), "bias": jnp.zeros(8)}}, "batch_stats": {}}


def test_padding_dropped_order_kept_subset_and_clip_mean(tiny_prepared):
  from auxskd_jax import data

  data_dir, name = tiny_prepared
  source = data.open_split(data_dir, name, "train")  # 12 videos
  config = _config(clips=3)
  ex = features.Extractor(FrameMeans(), config, with_logits=True)
  # Batches of 4 split evenly over the 4 devices; batches of 5 do not (the extractor pads each
  # to 8 rows) and the last holds 2 videos and 3 of the loader's masked padding rows.
  even = ex(_HEAD, source, batch_size=4)
  odd = ex(_HEAD, source, batch_size=5)
  assert even["features"].shape == (12, 3, 8) and even["logits"].shape == (12, 3, 8)
  for out in (even, odd):
    np.testing.assert_array_equal(out["index"], np.arange(12))
    np.testing.assert_array_equal(out["labels"], [source.label(i) for i in range(12)])
  for k in ("features", "logits", "starts"):
    np.testing.assert_array_equal(odd[k], even[k])
  np.testing.assert_allclose(even["logits"], even["features"], atol=1e-4)  # identity head
  # A subset reads the same videos; `clip_mean` averages their clips on the device.
  part = features.subset(source, 5)
  assert len(part) == 5 and features.subset(source, 12) is source
  picked = part.indices
  assert picked[0] == 0 and picked[-1] == 11
  mean = features.Extractor(FrameMeans(), config, clip_mean=True)(_HEAD, part, batch_size=4)
  assert mean["features"].shape == (5, 1, 8)
  np.testing.assert_allclose(mean["features"][:, 0], even["features"][picked].mean(axis=1),
                             atol=1e-4)
  np.testing.assert_array_equal(mean["labels"], even["labels"][picked])


def test_extractor_refuses_logits_from_another_layer():
  import pytest

  with pytest.raises(ValueError, match="feature_layer='pool'"):
    features.Extractor(FrameMeans(), _config(), with_logits=True, feature_layer="conv5_maxpool")
  with pytest.raises(ValueError, match="eval.feature_layer"):
    features.Extractor(FrameMeans(), _config(), feature_layer="conv4")


def test_ten_uniformly_spaced_clips_per_video(tiny_prepared):
  from auxskd_jax import data

  data_dir, name = tiny_prepared
  source = data.open_split(data_dir, name, "test")
  config = _config(clips=10)
  config.eval.batch_size = 4  # 6 test videos: the second batch is padded
  ex = features.Extractor(FrameMeans(), config)
  out = ex(_HEAD, source)
  assert out["features"].shape == (len(source), 10, 8)
  np.testing.assert_array_equal(out["index"], np.arange(len(source)))
  for i, starts in enumerate(out["starts"]):
    n = source.num_frames(i)
    assert len(set(starts.tolist())) == 10, starts  # 10 distinct clips
    gaps = np.diff(starts)
    assert gaps.min() >= 1 and gaps.max() - gaps.min() <= 1, starts  # evenly spaced
    assert starts[0] >= 0 and starts[-1] + 8 <= n  # all inside the video (n >= 20)
    assert starts[-1] - starts[0] >= n - 8 - 2 * gaps.max()  # spread over the whole video
    # Different windows show different frames, so their 'features' differ.
    assert len({tuple(np.round(f, 2)) for f in out["features"][i]}) == 10
