"""RSPNet clips (Chen et al., AAAI 2021): three clips of one video at two playback speeds.

Per example two different speeds `s_a != s_b` are drawn uniformly from 1..R
(`clip.max_speed`; the RSPNet reference uses 1x and 2x, i.e. R = 2). From the loader's two
windows (independent random starts):

| clip | window | stride | role |
|---|---|---|---|
| 0 | 0 | s_a | query |
| 1 | 1 | s_a | key at the same speed |
| 2 | 1 | s_b | key at the other speed |

As in the reference, which cuts both keys out of one augmented key clip, clips 1 and 2 share
their crop and flip (and their jitter when it is drawn per clip); the query is augmented on its
own. Labels: `speed` int32 `[B, 3]`, each clip's stride minus one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from auxskd_jax.ops import augment as augment_lib
from auxskd_jax.ops import rand

NUM_VIEWS = 2


def rspnet_window_len(clip_len: int, max_speed: int) -> int:
  """Window frames the fastest clip touches: `(L - 1) R + 1` (31 at L = 16, R = 2)."""
  return (clip_len - 1) * max_speed + 1


def draw_rspnet_speeds(key: jax.Array, shape: tuple[int, ...], max_speed: int) -> jax.Array:
  """Two different speeds per example, int32 `shape + (2,)`, 1-based: the first uniform in
  1..R, the second uniform over the other R - 1 (a cyclic shift, no rejection loop)."""
  if max_speed < 2:
    raise ValueError(f"RSPNet needs two different speeds: clip.max_speed >= 2 (got {max_speed}).")
  k_first, k_shift = jax.random.split(key)
  first = rand.randint(k_first, shape, 1, max_speed + 1)
  second = (first - 1 + rand.randint(k_shift, shape, 1, max_speed)) % max_speed + 1
  return jnp.stack([first, second], -1)


def rspnet_offsets(speeds: jax.Array, clip_len: int) -> jax.Array:
  """Window offsets `[B, 3, L]` of (query, same-speed key, other-speed key) from `[B, 2]`."""
  strides = jnp.stack([speeds[:, 0], speeds[:, 0], speeds[:, 1]], -1)
  return strides[..., None] * jnp.arange(clip_len, dtype=jnp.int32)


def augment_query_and_keys(key: jax.Array, frames: jax.Array, *, crop_size: int, augment: Any,
                           train: bool) -> jax.Array:
  """Gathered frames `[B, 3, L, H, W, 3]` (query, key, other-speed key) -> clips
  `[B, 3, L, crop, crop, 3]`: the query augmented on its own, the two keys as one clip of 2L
  frames, so they share one crop and one flip (as the reference cuts both from one clip)."""
  batch_size, _, length = frames.shape[:3]
  k_query, k_keys = jax.random.split(key)
  query = augment_lib.augment_clips(k_query, frames[:, :1], crop_size=crop_size,
                                    augment=augment, train=train)
  keys = frames[:, 1:].reshape(batch_size, 1, 2 * length, *frames.shape[3:])
  keys = augment_lib.augment_clips(k_keys, keys, crop_size=crop_size, augment=augment,
                                   train=train)
  keys = keys.reshape(batch_size, 2, length, *keys.shape[3:])
  return jnp.concatenate([query, keys], axis=1)
