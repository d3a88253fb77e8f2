"""Layers shared by the backbones: a 3-D conv stored as the reference stores it, and BN.

Kernels are always 5-D `(kt, kh, kw, in, out)` so that checkpoint conversion is a transpose,
but a conv whose kernel is 1 along time (the (2+1)D spatial convs) runs as a 2-D conv over
`B*T` images, and one that is 1x1 in space (the temporal convs) as a 2-D conv over `(T, H*W)`.
2-D convolutions are the best-tuned path in XLA/cuDNN and give the same numbers.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from auxskd_jax.models import init as init_lib
from auxskd_jax.models import norm

Triple = tuple[int, int, int]
Dtype = Any


def triple(value: int | Sequence[int]) -> Triple:
  if isinstance(value, int):
    return (value, value, value)
  out = tuple(int(v) for v in value)
  if len(out) != 3:
    raise ValueError(f"expected an int or 3 ints, got {value!r}")
  return out  # type: ignore[return-value]


def conv3d(x: jax.Array, kernel: jax.Array, strides: Triple, padding: Triple) -> jax.Array:
  """NDHWC conv with symmetric zero padding (PyTorch Conv3d semantics), 2-D where possible."""
  kt, kh, kw = kernel.shape[:3]
  st, sh, sw = strides
  pt, ph, pw = padding
  b, t, h, w, c = x.shape
  if kt == 1 and st == 1 and pt == 0:
    y = jax.lax.conv_general_dilated(
        x.reshape(b * t, h, w, c), kernel[0], (sh, sw), ((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(b, t, *y.shape[1:])
  if kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0:
    y = jax.lax.conv_general_dilated(
        x.reshape(b, t, h * w, c), kernel[:, 0], (st, 1), ((pt, pt), (0, 0)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(b, y.shape[1], h, w, y.shape[-1])
  return jax.lax.conv_general_dilated(
      x, kernel, strides, tuple((p, p) for p in padding),
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


class Conv3d(nn.Module):
  """3-D conv with float32 parameters and `dtype` compute; kernel `(kt, kh, kw, in, out)`.

  `init_scheme`: 'torch' (PyTorch's Conv3d defaults) or 'kaiming' (see `models.init`).
  """
  features: int
  kernel_size: Triple
  strides: Triple = (1, 1, 1)
  padding: Triple = (0, 0, 0)
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  init_scheme: str = init_lib.DEFAULT

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (*self.kernel_size, x.shape[-1], self.features)
    kernel_init, bias_init = init_lib.conv_init(self.init_scheme, math.prod(shape[:-1]))
    kernel = self.param("kernel", kernel_init, shape, jnp.float32)
    y = conv3d(x.astype(self.dtype), kernel.astype(self.dtype), self.strides, self.padding)
    if self.use_bias:
      bias = self.param("bias", bias_init, (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


def batch_norm(train: bool, dtype: Dtype, axis_name: str | None, name: str) -> norm.BatchNorm:
  """BatchNorm3d as in the reference (eps 1e-5, momentum 0.1, PyTorch's running statistics);
  statistics kept in float32."""
  return norm.BatchNorm(use_running_average=not train, dtype=dtype,
                        axis_name=axis_name if train else None, name=name)
