"""S3D-G (Xie et al. 2018) as in the HowTo100M MIL-NCE PyTorch release, the authors' `s3d_g`.

What is matched (module names mirror that release's state_dict keys, so `convert` is a
renaming plus transposes):
- `space_to_depth=True` (its default): the clip `[B, T, H, W, 3]` becomes `[B, T/2, H/2, W/2,
  24]` (channel order dt, dh, dw, rgb), `conv1` is a 2x4x4 conv 24->64 with padding (1, 2, 2)
  whose output loses its first frame, row and column (mimicking TF's 'SAME'); with
  `space_to_depth=False` conv1 is a 3x7x7 conv, stride 2, padding (1, 3, 3).
- `STConv3D`: conv, BN, ReLU; separable (`conv_2c` and the 3x3x3 inception branches): a
  (1, k, k) conv, BN, ReLU, then a (k, 1, 1) conv, BN, ReLU, both with the full output width.
- self-gating (`gating` after conv_2c, `gating_b0..3` on every inception branch): the input
  times sigmoid(fc(its mean over T, H, W)).
- the release's "TF SAME" max pools: zero padding of max(k - s, 0) split low/high (low gets
  the floor half), then a ceil-mode max pool; inside the inception blocks a plain 3x3x3
  stride-1 max pool padded by one (-inf).
- global average pool of mixed_5c (1024-d), then the linear head(s) (the release's `fc`; named
  `linear` here as for every encoder, and renamed by `convert`).

`width` scales every channel count by width / 64 (64 is the release), so it must be a multiple
of 8 for all of them to be whole numbers. T, H and W must be even (space-to-depth).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from auxskd_jax.models import init as init_lib
from auxskd_jax.models.heads import Heads, pool_and_heads
from auxskd_jax.models.layers import Conv3d, Dtype, Triple, batch_norm

# (name, (b0, b1a, b1b, b2a, b2b, b3b)) of the inception blocks at width 64; a max pool named
# in POOLS comes before the block of the same index.
INCEPTION: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("mixed_5c", (384, 192, 384, 48, 128, 128)),
)
POOLS = {"mixed_4b": ((3, 3, 3), (2, 2, 2)), "mixed_5b": ((2, 2, 2), (2, 2, 2))}
FEATURES = 1024  # mixed_5c's channels at width 64
WIDTH_MULTIPLE = 8


def scaled(channels: int, width: int) -> int:
  return channels * width // 64


def space_to_depth(x: jax.Array) -> jax.Array:
  """`[B, T, H, W, C]` -> `[B, T/2, H/2, W/2, 8C]`, channels ordered (dt, dh, dw, c)."""
  b, t, h, w, c = x.shape
  x = x.reshape(b, t // 2, 2, h // 2, 2, w // 2, 2, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, t // 2, h // 2, w // 2, 8 * c)


def _ceil_pool_size(n: int, k: int, s: int) -> int:
  """PyTorch's ceil-mode output size without implicit padding."""
  out = -(-(n - k) // s) + 1
  if (out - 1) * s >= n:
    out -= 1
  return max(out, 1)


def tf_same_max_pool(x: jax.Array, kernel: Triple, strides: Triple) -> jax.Array:
  """The release's `MaxPool3dTFPadding`: explicit zero padding, then ceil-mode max pool.

  Its padding tuple goes to `ConstantPad3d`, which reads it as (W, H, T) pairs while it was
  built as (H, W, T): H gets W's padding and W gets H's. Every pool here is square in H, W,
  so this only matters to exotic kernels; it is reproduced all the same.
  """
  pads = [(max(k - s, 0) // 2, max(k - s, 0) - max(k - s, 0) // 2)
          for k, s in zip(kernel, strides)]
  pads = [pads[0], pads[2], pads[1]]  # the release's H/W swap
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  extra = []
  for n, k, s in zip(x.shape[1:4], kernel, strides):
    out = _ceil_pool_size(n, k, s)
    extra.append((0, max((out - 1) * s + k - n, 0)))
  x = jnp.pad(x, ((0, 0), *extra, (0, 0)), constant_values=-jnp.inf)
  return nn.max_pool(x, kernel, strides=strides, padding="VALID")


class STConv3D(nn.Module):
  """conv1, bn1, ReLU (and, when `separable`, conv2 (temporal), bn2, ReLU)."""
  features: int
  kernel_size: Triple
  strides: Triple = (1, 1, 1)
  padding: Triple = (0, 0, 0)
  separable: bool = False
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  init_scheme: str = init_lib.DEFAULT

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = lambda k, s, p, name: Conv3d(  # noqa: E731
        self.features, k, s, p, dtype=self.dtype, init_scheme=self.init_scheme, name=name)
    bn = lambda name: batch_norm(train, self.dtype, self.bn_axis_name, name,  # noqa: E731
                                 relu=True)
    (kt, kh, kw), (st, sh, sw), (pt, ph, pw) = self.kernel_size, self.strides, self.padding
    if not self.separable:
      return bn("bn1")(conv(self.kernel_size, self.strides, self.padding, "conv1")(x))
    x = bn("bn1")(conv((1, kh, kw), (1, sh, sw), (0, ph, pw), "conv1")(x))
    return bn("bn2")(conv((kt, 1, 1), (st, 1, 1), (pt, 0, 0), "conv2")(x))


class SelfGating(nn.Module):
  """x * sigmoid(fc(mean of x over T, H, W)), per channel."""
  dtype: Dtype = jnp.float32
  init_scheme: str = init_lib.DEFAULT

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    mean = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
    gate = jax.nn.sigmoid(init_lib.Linear(x.shape[-1], init_scheme=self.init_scheme,
                                          name="fc")(mean))
    return x * gate[:, None, None, None, :].astype(x.dtype)


class InceptionBlock(nn.Module):
  """Four branches (1x1; 1x1 then separable 3x3x3, twice; 3x3x3 max pool then 1x1), each
  gated, concatenated along channels in that order."""
  channels: tuple[int, ...]
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  init_scheme: str = init_lib.DEFAULT

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c0, c1a, c1b, c2a, c2b, c3b = self.channels

    def conv(c: int, k: int, name: str):
      return STConv3D(c, (k,) * 3, padding=(k // 2,) * 3, separable=k > 1, dtype=self.dtype,
                      bn_axis_name=self.bn_axis_name, init_scheme=self.init_scheme, name=name)

    b0 = conv(c0, 1, "conv_b0")(x, train)
    b1 = conv(c1b, 3, "conv_b1_b")(conv(c1a, 1, "conv_b1_a")(x, train), train)
    b2 = conv(c2b, 3, "conv_b2_b")(conv(c2a, 1, "conv_b2_a")(x, train), train)
    pooled = nn.max_pool(x, (3, 3, 3), strides=(1, 1, 1), padding=((1, 1),) * 3)
    b3 = conv(c3b, 1, "conv_b3_b")(pooled, train)
    gated = [SelfGating(self.dtype, self.init_scheme, name=f"gating_b{i}")(b)
             for i, b in enumerate((b0, b1, b2, b3))]
    return jnp.concatenate(gated, axis=-1)


class S3DG(nn.Module):
  """S3D-G; input NDHWC with even T, H, W; output as every encoder (see models.build)."""
  width: int = 64
  heads: Heads = ()
  single_head: bool = False
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  init_scheme: str = init_lib.DEFAULT
  space_to_depth: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, features_only: bool = False,
               feature_layer: str = "pool"):
    c = lambda n: scaled(n, self.width)  # noqa: E731
    common = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                  init_scheme=self.init_scheme)
    x = x.astype(self.dtype)
    if self.space_to_depth:
      if any(n % 2 for n in x.shape[1:4]):
        raise ValueError(f"s3d_g (space-to-depth) needs an even number of frames, height and "
                         f"width; got a clip of {tuple(x.shape[1:4])} (clip.clip_len, "
                         "clip.crop_size).")
      x = STConv3D(c(64), (2, 4, 4), padding=(1, 2, 2), name="conv1", **common)(
          space_to_depth(x), train)
      x = x[:, 1:, 1:, 1:]
    else:
      x = STConv3D(c(64), (3, 7, 7), (2, 2, 2), (1, 3, 3), name="conv1", **common)(x, train)
    x = tf_same_max_pool(x, (1, 3, 3), (1, 2, 2))  # maxpool_2a
    x = STConv3D(c(64), (1, 1, 1), name="conv_2b", **common)(x, train)
    x = STConv3D(c(192), (3, 3, 3), padding=(1, 1, 1), separable=True, name="conv_2c",
                 **common)(x, train)
    x = SelfGating(self.dtype, self.init_scheme, name="gating")(x)
    x = tf_same_max_pool(x, (1, 3, 3), (1, 2, 2))  # maxpool_3a
    for name, channels in INCEPTION:
      if name in POOLS:
        x = tf_same_max_pool(x, *POOLS[name])  # maxpool_4a, maxpool_5a
      x = InceptionBlock(tuple(c(n) for n in channels), name=name, **common)(x, train)
    return pool_and_heads(x, self.heads, self.single_head, features_only, feature_layer,
                          self.init_scheme)


def feature_channels(width: int) -> int:
  return scaled(FEATURES, width)


def check_width(width: int) -> None:
  if width % WIDTH_MULTIPLE:
    raise ValueError(f"s3d_g scales its channel counts by width/64, so model.width must be a "
                     f"multiple of {WIDTH_MULTIPLE} (64 is the release's); got {width}.")

