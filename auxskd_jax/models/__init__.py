"""Video encoders (SPEC section 2) in Flax linen: `build(name, ...)`.

Module names mirror the reference PyTorch state_dict keys, so `auxskd_jax.weights.convert` is a
renaming plus transposes. Input is NDHWC `[B, T, H, W, 3]`.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from auxskd_jax.errors import ConfigError, require
from auxskd_jax.models import init  # noqa: F401  (models.init: the initialiser factories)
from auxskd_jax.models import norm  # noqa: F401  (models.norm: PyTorch-statistics BatchNorm)
from auxskd_jax.models import init as init_lib
from auxskd_jax.models import s3dg as s3dg_lib
from auxskd_jax.models.c3d import C3D
from auxskd_jax.models.heads import FEATURE_LAYERS, check_feature_layer
from auxskd_jax.models.init import SCHEMES as INIT_SCHEMES
from auxskd_jax.models.resnet import VideoResNet, mid_channels
from auxskd_jax.models.s3dg import S3DG

# name -> (family, layer sizes); families: "r21d" (factorised ResNet), "r3d", "c3d", "s3d_g".
ARCHITECTURES: dict[str, tuple[str, tuple[int, ...]]] = {
    "r21d_10": ("r21d", (1, 1, 1, 1)),
    "r21d_18": ("r21d", (2, 2, 2, 2)),
    "r3d_10": ("r3d", (1, 1, 1, 1)),
    "r3d_18": ("r3d", (2, 2, 2, 2)),
    "c3d": ("c3d", ()),
    "s3d_g": ("s3d_g", ()),
}
NAMES: tuple[str, ...] = tuple(ARCHITECTURES)

__all__ = ["ARCHITECTURES", "NAMES", "FEATURE_LAYERS", "INIT_SCHEMES", "build", "feature_dim",
           "check_input", "head_names", "mid_channels", "init", "C3D", "S3DG", "VideoResNet"]


def _check_name(name: str) -> None:
  if name not in ARCHITECTURES:
    raise ValueError(f"model name {name!r} is not an encoder; choose one of {list(NAMES)}.")


def _conv_out(n: int, k: int, s: int, p: int) -> int:
  return (n + 2 * p - k) // s + 1


def _conv5_size(name: str, clip_len: int, crop_size: int) -> tuple[int, int]:
  """(T, H) of the last feature map (W == H) for a clip of clip_len x crop_size^2."""
  family = ARCHITECTURES[name][0]
  if family in ("r21d", "r3d"):
    t, h = clip_len, _conv_out(crop_size, 7, 2, 3)
    for _ in range(3):  # conv3..conv5 downsample by 2 (k 3, pad 1)
      t, h = _conv_out(t, 3, 2, 1), _conv_out(h, 3, 2, 1)
    return t, h
  if family == "c3d":
    return clip_len // 8, crop_size // 16
  t, h = clip_len // 2, crop_size // 2  # space-to-depth; conv1 then the cropped first row
  pool = lambda n, k, s: s3dg_lib._ceil_pool_size(n + max(k - s, 0), k, s)  # noqa: E731
  h = pool(pool(h, 3, 2), 3, 2)  # maxpool_2a, maxpool_3a
  t, h = pool(t, 3, 2), pool(h, 3, 2)  # maxpool_4a
  return pool(t, 2, 2), pool(h, 2, 2)  # maxpool_5a


def _channels(name: str, width: int) -> int:
  return s3dg_lib.feature_channels(width) if name == "s3d_g" else 8 * width


def feature_dim(name: str, width: int = 64, layer: str = "pool", clip_len: int = 16,
                crop_size: int = 112) -> int:
  """Size of `apply(..., features_only=True, feature_layer=layer)`'s features.

  'pool': 512 at width 64 (1024 for s3d_g), whatever the clip size. 'conv5_maxpool': the last
  feature map max-pooled (1, 2, 2) and flattened, which depends on the clip: 9216 for R(2+1)D,
  R3D and C3D at 16x112x112, 8192 for S3D-G.
  """
  _check_name(name)
  check_feature_layer(layer)
  channels = _channels(name, width)
  if layer == "pool":
    return channels
  t, h = _conv5_size(name, clip_len, crop_size)
  return channels * t * (h // 2) ** 2


def check_input(name: str, clip_len: int, crop_size: int) -> None:
  """ValueError naming the config keys when `name` cannot take clips of this size."""
  _check_name(name)
  if name == "s3d_g" and (clip_len % 2 or crop_size % 2):
    raise ValueError(f"s3d_g's space-to-depth stem needs an even clip.clip_len and "
                     f"clip.crop_size; got {clip_len} and {crop_size}.")
  t, h = _conv5_size(name, clip_len, crop_size)
  if t < 1 or h < 1:
    raise ValueError(f"clips of {clip_len}x{crop_size}x{crop_size} are too small for {name}: "
                     "raise clip.clip_len / clip.crop_size.")


def validate(config: Any) -> None:
  """ConfigError for a `config.model` (and the `config.clip` size it takes) that cannot work."""
  m = config.model
  require(m.name in NAMES, "model.name",
          f"{m.name!r} is not an encoder; choose one of {sorted(NAMES)}.")
  require(m.dtype != "float16", "model.dtype",
          "float16 needs loss scaling, which the training steps do not do (its gradients "
          "underflow); use bfloat16 for mixed precision, or float32.")
  require(m.dtype in ("float32", "bfloat16"), "model.dtype",
          "use float32 or bfloat16 (mixed precision; parameters stay float32).")
  require(m.width > 0, "model.width", "must be positive (64 is the paper's).")
  require(m.get("init", "torch") in INIT_SCHEMES, "model.init",
          f"use one of {list(INIT_SCHEMES)} ('torch' = PyTorch's defaults).")
  require(m.name != "s3d_g" or m.width % 8 == 0, "model.width",
          "S3D-G's channel counts need a width that is a multiple of 8 (64 is the release's).")
  if "clip" in config:
    try:
      check_input(m.name, config.clip.clip_len, config.clip.crop_size)
    except ValueError as e:
      raise ConfigError(f"--config.clip.crop_size / clip.clip_len: {e}") from None


def head_names(variables: Mapping[str, Any]) -> list[str]:
  """The linear heads of an encoder's variables (or of its `params`): the top-level modules
  whose parameters are exactly a 2-D `kernel` and a `bias` (no encoder layer is)."""
  params = variables.get("params", variables)
  out = []
  for name, module in params.items():
    if (isinstance(module, Mapping) and set(module) == {"kernel", "bias"}
        and len(getattr(module["kernel"], "shape", ())) == 2):
      out.append(name)
  return out


def build(name: str, num_classes: int | None = None, *,
          heads: Mapping[str, int] | None = None, dtype: Any = jnp.float32,
          bn_axis_name: str | None = None, width: int = 64,
          init: str = init_lib.DEFAULT) -> nn.Module:
  """The encoder `name` with one head (`num_classes`), several (`heads`), or none.

  `dtype` is the compute dtype (e.g. `"bfloat16"`); parameters, BN statistics and outputs stay
  float32. `bn_axis_name` makes training-mode BN average statistics over that pmap axis.
  `init`: 'torch' (PyTorch's defaults, as the authors' models start) or 'kaiming' (Kaiming
  normal fan-out convs, LeCun normal dense layers, zero biases); see `models.init`.
  """
  _check_name(name)
  scheme = init_lib.check_scheme(init)
  if num_classes is not None and heads is not None:
    raise ValueError("give num_classes (one head named 'linear') or heads, not both.")
  if width <= 0:
    raise ValueError(f"width must be positive (64 is the paper's), got {width}.")
  if num_classes is not None:
    head_items, single = (("linear", int(num_classes)),), True
  else:
    head_items, single = tuple((str(k), int(v)) for k, v in (heads or {}).items()), False
  for head, n in head_items:
    if n <= 0:
      raise ValueError(f"head {head!r} needs a positive number of classes, got {n}.")
  family, layers = ARCHITECTURES[name]
  common = dict(width=width, heads=head_items, single_head=single, dtype=jnp.dtype(dtype),
                bn_axis_name=bn_axis_name, init_scheme=scheme)
  if family == "c3d":
    return C3D(**common)
  if family == "s3d_g":
    s3dg_lib.check_width(width)
    return S3DG(**common)
  return VideoResNet(layer_sizes=layers, factorised=family == "r21d", **common)

