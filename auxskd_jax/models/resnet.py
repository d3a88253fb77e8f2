"""R(2+1)D and R3D video ResNets (SPEC section 2), named as the reference's PyTorch modules.

Both share one topology; `factorised=True` makes every conv a (2+1)D conv (spatial conv, BN,
ReLU, temporal conv), `False` a single full 3-D conv (`temporal_spatial_conv`).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from auxskd_jax.models import init as init_lib
from auxskd_jax.models.heads import Heads, pool_and_heads
from auxskd_jax.models.layers import Conv3d, Dtype, Triple, batch_norm, triple


def mid_channels(kernel: Triple, cin: int, cout: int) -> int:
  """M of a (2+1)D conv: keeps its parameter count close to the full 3-D conv's."""
  kt, kh, kw = kernel
  return (kt * kh * kw * cin * cout) // (kh * kw * cin + kt * cout)


class SpatioTemporalConv(nn.Module):
  """(2+1)D conv when `factorised`, else a full 3-D conv (the reference R3D's module)."""
  features: int
  kernel_size: Triple
  strides: Triple = (1, 1, 1)
  padding: Triple = (0, 0, 0)
  factorised: bool = True
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  init_scheme: str = init_lib.DEFAULT

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    kt, kh, kw = self.kernel_size
    st, sh, sw = self.strides
    pt, ph, pw = self.padding
    if not self.factorised:
      return Conv3d(self.features, self.kernel_size, self.strides, self.padding,
                    dtype=self.dtype, init_scheme=self.init_scheme,
                    name="temporal_spatial_conv")(x)
    m = mid_channels(self.kernel_size, x.shape[-1], self.features)
    x = Conv3d(m, (1, kh, kw), (1, sh, sw), (0, ph, pw), dtype=self.dtype,
               init_scheme=self.init_scheme, name="spatial_conv")(x)
    x = batch_norm(train, self.dtype, self.bn_axis_name, "bn", relu=True)(x)
    return Conv3d(self.features, (kt, 1, 1), (st, 1, 1), (pt, 0, 0), dtype=self.dtype,
                  init_scheme=self.init_scheme, name="temporal_conv")(x)


class ResBlock(nn.Module):
  """relu(shortcut(x) + bn2(conv2(relu(bn1(conv1(x)))))); the shortcut downsamples by 2."""
  features: int
  downsample: bool = False
  factorised: bool = True
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  init_scheme: str = init_lib.DEFAULT

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = lambda k, s, p, name: SpatioTemporalConv(  # noqa: E731
        self.features, triple(k), triple(s), triple(p), self.factorised, self.dtype,
        self.bn_axis_name, self.init_scheme, name=name)
    bn = lambda name, relu=False: batch_norm(  # noqa: E731
        train, self.dtype, self.bn_axis_name, name, relu)
    stride = 2 if self.downsample else 1
    r = bn("bn1", relu=True)(conv(3, stride, 1, "conv1")(x, train))
    r = bn("bn2")(conv(3, 1, 1, "conv2")(r, train))
    if self.downsample:
      x = bn("downsamplebn")(conv(1, 2, 0, "downsampleconv")(x, train))
    return nn.relu(x + r)


class ResLayer(nn.Module):
  """A stage: `block1` (maybe downsampling) then `blocks_0`, `blocks_1`, ... (`blocks.I`)."""
  features: int
  num_blocks: int
  downsample: bool = False
  factorised: bool = True
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  init_scheme: str = init_lib.DEFAULT

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = ResBlock(self.features, self.downsample, self.factorised, self.dtype,
                 self.bn_axis_name, self.init_scheme, name="block1")(x, train)
    for i in range(self.num_blocks - 1):
      x = ResBlock(self.features, False, self.factorised, self.dtype, self.bn_axis_name,
                   self.init_scheme, name=f"blocks_{i}")(x, train)
    return x


class VideoResNet(nn.Module):
  """R(2+1)D (`factorised`) or R3D; input NDHWC, output logits / dict of logits / features."""
  layer_sizes: Sequence[int] = (1, 1, 1, 1)
  factorised: bool = True
  width: int = 64
  heads: Heads = ()
  single_head: bool = False
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  init_scheme: str = init_lib.DEFAULT

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, features_only: bool = False,
               feature_layer: str = "pool"):
    x = SpatioTemporalConv(self.width, (3, 7, 7), (1, 2, 2), (1, 3, 3), self.factorised,
                           self.dtype, self.bn_axis_name, self.init_scheme,
                           name="conv1")(x.astype(self.dtype), train)
    x = batch_norm(train, self.dtype, self.bn_axis_name, "bn1", relu=True)(x)
    for i, size in enumerate(self.layer_sizes):
      x = ResLayer(self.width * 2**i, size, downsample=i > 0, factorised=self.factorised,
                   dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                   init_scheme=self.init_scheme, name=f"conv{i + 2}")(x, train)
    return pool_and_heads(x, self.heads, self.single_head, features_only, feature_layer,
                          self.init_scheme)
