"""C3D with BatchNorm (SPEC section 2), named as the reference's PyTorch modules."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from auxskd_jax.models import init as init_lib
from auxskd_jax.models.heads import Heads, pool_and_heads
from auxskd_jax.models.layers import Conv3d, Dtype, batch_norm

# (name suffix, channels in units of width/64 * 64, max-pool window after it or None).
_LAYERS = (("1", 1, (1, 2, 2)), ("2", 2, (2, 2, 2)), ("3a", 4, None), ("3b", 4, (2, 2, 2)),
           ("4a", 8, None), ("4b", 8, (2, 2, 2)), ("5a", 8, None), ("5b", 8, None))


class C3D(nn.Module):
  """Eight 3x3x3 conv+BN+ReLU layers with max pools, global average pool, heads."""
  width: int = 64
  heads: Heads = ()
  single_head: bool = False
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  init_scheme: str = init_lib.DEFAULT

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, features_only: bool = False,
               feature_layer: str = "pool"):
    x = x.astype(self.dtype)
    for suffix, mult, pool in _LAYERS:
      x = Conv3d(self.width * mult, (3, 3, 3), padding=(1, 1, 1), use_bias=True,
                 dtype=self.dtype, init_scheme=self.init_scheme, name=f"conv{suffix}")(x)
      x = batch_norm(train, self.dtype, self.bn_axis_name, f"bn{suffix}", relu=True)(x)
      if pool is not None:
        x = nn.max_pool(x, pool, strides=pool, padding="VALID")
    return pool_and_heads(x, self.heads, self.single_head, features_only, feature_layer,
                          self.init_scheme)
