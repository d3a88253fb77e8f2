"""The features every encoder ends with (two feature layers) and its linear heads."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from auxskd_jax.models import init as init_lib

Heads = tuple[tuple[str, int], ...]

# 'pool': global average pool of the last feature map (512-d for the ResNets / C3D at width 64).
# 'conv5_maxpool': VCOP's retrieval features (see `conv5_maxpool`).
FEATURE_LAYERS: tuple[str, ...] = ("pool", "conv5_maxpool")


def check_feature_layer(feature_layer: str) -> str:
  if feature_layer not in FEATURE_LAYERS:
    raise ValueError(f"feature_layer={feature_layer!r} is not a feature layer; choose one of "
                     f"{list(FEATURE_LAYERS)}.")
  return feature_layer


def conv5_maxpool(x: jax.Array) -> jax.Array:
  """VCOP's retrieval features from the last feature map `[B, T, H, W, C]`.

  Matches `feature_pool` of the VCOP release (xudejing/video-clip-order-prediction,
  models/r3d.py, r21d.py, c3d.py with `return_conv=True`, used by retrieve_clips.py):
  `nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))` (no padding, floor) on the conv5
  output, then `x.view(B, -1)`, i.e. flattened in PyTorch's (C, T, H, W) order. At 16x112x112
  and width 64 that is 512 x 2 x 3 x 3 = 9216 for R(2+1)D, R3D and C3D (8192 for S3D-G's
  mixed_5c: 1024 x 2 x 2 x 2). The order only matters to someone comparing vectors with
  PyTorch's; cosine retrieval does not depend on it.
  """
  x = nn.max_pool(x.astype(jnp.float32), (1, 2, 2), strides=(1, 2, 2), padding="VALID")
  return jnp.transpose(x, (0, 4, 1, 2, 3)).reshape(x.shape[0], -1)


def pool_and_heads(x: jax.Array, heads: Heads, single_head: bool, features_only: bool,
                   feature_layer: str = "pool", init_scheme: str = init_lib.DEFAULT
                   ) -> jax.Array | dict[str, jax.Array]:
  """Pools `[B, T, H, W, C]` to float32 features, then applies the heads (float32).

  Must be called inside the encoder's compact `__call__`, so the heads become its children
  named as the reference names them (`linear`, `linear_segment`, ...). `feature_layer` picks
  the features returned by `features_only=True` (or by a headless model); the heads always
  read the globally pooled features.
  """
  check_feature_layer(feature_layer)
  if feature_layer != "pool":
    if heads and not features_only:
      raise ValueError(f"feature_layer={feature_layer!r} gives features, not logits: call "
                       "apply(..., features_only=True).")
    return conv5_maxpool(x)
  features = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
  if features_only or not heads:
    return features
  logits = {name: init_lib.Linear(n, init_scheme=init_scheme, name=name)(features)
            for name, n in heads}
  if single_head:
    return logits[heads[0][0]]
  return logits
