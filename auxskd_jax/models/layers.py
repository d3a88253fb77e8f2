"""Layers shared by the encoders: a 3-D conv stored as the reference stores it, and BN.

Kernels are always 5-D `(kt, kh, kw, in, out)` so that checkpoint conversion is a transpose,
but a conv whose kernel is 1 along time (the (2+1)D spatial convs) runs as a 2-D conv over
`B*T` images, and one that is 1x1 in space (the temporal convs) as a 2-D conv over `(T, H*W)`.
2-D convolutions are the best-tuned path in XLA/cuDNN and give the same numbers.

On CPU, XLA's kernel-gradient convolutions reduce over the batch as their feature dimension
and first transpose the activations to put it innermost. `conv3d` therefore has
interchangeable lowerings (im2col + matmul, a sum of per-tap matmuls, one 3-D conv), selected
process-wide by `set_conv_lowering` (config `model.conv_lowering`), and the default "auto":
XLA's convolutions, except on a CPU the kernel gradient of the stride-1 temporal convs, which
runs as one dot over all taps without transposes (`_kernel_grad_by_taps`).
"""

from __future__ import annotations

import functools
import itertools
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


def _conv_xla(x: jax.Array, kernel: jax.Array, strides: Triple, padding: Triple) -> jax.Array:
  """XLA's convolution, as a 2-D conv where the kernel allows (see the module docstring)."""
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
  return _conv_native(x, kernel, strides, padding)


def _conv_native(x: jax.Array, kernel: jax.Array, strides: Triple,
                 padding: Triple) -> jax.Array:
  """One 3-D `conv_general_dilated`, whatever the kernel."""
  return jax.lax.conv_general_dilated(
      x, kernel, strides, tuple((p, p) for p in padding),
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


def _taps(x: jax.Array, window: Triple, strides: Triple, padding: Triple) -> list[jax.Array]:
  """The input under each kernel tap, `[B, To, Ho, Wo, C]` each, in the kernel's tap order."""
  b, t, h, w, c = x.shape
  out = [(n + 2 * p - k) // s + 1 for n, k, s, p in zip((t, h, w), window, strides, padding)]
  xp = jnp.pad(x, ((0, 0), *((p, p) for p in padding), (0, 0)))
  taps = []
  for offset in itertools.product(*(range(k) for k in window)):
    limit = [o + s * (n - 1) + 1 for o, s, n in zip(offset, strides, out)]
    taps.append(jax.lax.slice(xp, (0, *offset, 0), (b, *limit, c), (1, *strides, 1)))
  return taps


def _matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`x [..., K] @ kernel [K, N]` as one 2-D dot, accumulated in float32."""
  y = jax.lax.dot_general(x.reshape(-1, x.shape[-1]), kernel, (((1,), (0,)), ((), ())),
                          preferred_element_type=jnp.float32)
  return y.reshape(*x.shape[:-1], kernel.shape[-1])


def _conv_im2col(x: jax.Array, kernel: jax.Array, strides: Triple,
                 padding: Triple) -> jax.Array:
  """All taps concatenated along channels, then one matmul: the kernel gradient becomes one
  large matmul too, which XLA's CPU conv emitter handles poorly for few input channels."""
  cols = jnp.concatenate(_taps(x, kernel.shape[:3], strides, padding), axis=-1)
  return _matmul(cols, kernel.reshape(-1, kernel.shape[-1])).astype(x.dtype)


def _conv_shifted(x: jax.Array, kernel: jax.Array, strides: Triple,
                  padding: Triple) -> jax.Array:
  """A sum of one matmul per tap over the shifted input: no im2col buffer, good for the
  3-tap temporal convs with many channels."""
  flat = kernel.reshape(-1, *kernel.shape[3:])
  y = None
  for tap, k in zip(_taps(x, kernel.shape[:3], strides, padding), flat):
    z = _matmul(tap, k)
    y = z if y is None else y + z
  return y.astype(x.dtype)


_IMPLS = {"xla": _conv_xla, "native": _conv_native, "im2col": _conv_im2col,
          "shifted": _conv_shifted}
# "auto": a per-shape choice on CPU (below), XLA's conv elsewhere (cuDNN on GPU).
CONV_LOWERINGS = ("auto", *_IMPLS)
_lowering = {"name": "auto"}


def set_conv_lowering(name: str) -> None:
  """Sets how `conv3d` is lowered from the next trace on (process-wide, like an XLA flag):
  `model.conv_lowering`. All of them compute the same convolution; results differ only by
  float32 rounding (the summation order)."""
  if name not in CONV_LOWERINGS:
    raise ValueError(f"conv lowering {name!r}: choose one of {list(CONV_LOWERINGS)}.")
  _lowering["name"] = name


def conv_lowering() -> str:
  return _lowering["name"]


def _is_same_stride1(kernel_shape: tuple[int, ...], strides: Triple, padding: Triple) -> bool:
  """Stride 1 and padding (k - 1) / 2 in every dimension: the output grid is the input's."""
  return all(s == 1 and 2 * p == k - 1
             for k, s, p in zip(kernel_shape[:3], strides, padding))


def _shifted(a: jax.Array, offset: Sequence[int]) -> jax.Array:
  """`out[n, i] = a[n, i - offset]` over (t, h, w), zero where that falls outside `a`: one pad
  with a negative edge, no index arithmetic per element."""
  cfg = [(0, 0, 0), *((d, -d, 0) for d in offset), (0, 0, 0)]
  return jax.lax.pad(a, jnp.zeros((), a.dtype), cfg)


def _kernel_grad_by_taps(x: jax.Array, g: jax.Array, window: Triple,
                         padding: Triple) -> jax.Array:
  """The kernel gradient of a stride-1 'same' conv as one `[rows, .]^T @ [rows, .]` dot, rows
  being (n, t, h, w): the operand with fewer channels enters once per tap, shifted by the tap
  (zero-filled) and concatenated along channels; the other is read as stored.

  Why: XLA:CPU's own kernel-gradient conv reduces over the batch as its feature dimension, so
  it first transposes the activations (and the gradient) to put the batch innermost; for the
  (2+1)D temporal convs at 28x28 those transposes alone took ~20% of a VSPP step (2-core Intel
  Xeon, benchmarks/step_profile.py). A dot contracting the leading dimension of two row-major
  matrices needs no transpose; one dot for all taps reads the larger operand once (a 3-tap
  temporal conv at 28x28x36: 2.8 ms as three dots, 2.2 ms as one)."""
  ci, co = x.shape[-1], g.shape[-1]
  offsets = [tuple(t - p for t, p in zip(tap, padding))  # x's index = y's index + offset
             for tap in itertools.product(*(range(k) for k in window))]
  contract = (((0,), (0,)), ((), ()))
  taps = len(offsets)
  if co <= ci:
    shifted = jnp.concatenate([_shifted(g, o) for o in offsets], axis=-1)
    dk = jax.lax.dot_general(x.reshape(-1, ci), shifted.reshape(-1, taps * co), contract,
                             preferred_element_type=jnp.float32)  # [ci, taps * co]
    dk = dk.reshape(ci, taps, co).transpose(1, 0, 2)
  else:
    shifted = jnp.concatenate([_shifted(x, tuple(-v for v in o)) for o in offsets], axis=-1)
    dk = jax.lax.dot_general(shifted.reshape(-1, taps * ci), g.reshape(-1, co), contract,
                             preferred_element_type=jnp.float32)  # [taps * ci, co]
  return dk.reshape(*window, ci, co)


def _cpu_kernel_grad_impl(kernel_shape: tuple[int, ...], strides: Triple,
                          padding: Triple) -> str:
  """The kernel-gradient form "auto" uses on a CPU: "taps" for the stride-1 temporal convs
  of the (2+1)D blocks, XLA's own for the rest. Measured per conv on a 2-core Intel Xeon
  (BENCHMARKS.md; the kernel gradient alone, with its BN-ReLU producer): temporal 3x1x1 at
  28x28x36 channels 5.8 -> 2.2 ms, at 14x14x72 1.02 -> 0.78 ms, at 7x7x144 equal; the spatial
  1x3x3 convs were slower by taps (nine dots: 6.8 -> 8.4 ms at 28x28), so they stay with XLA."""
  kt, kh, kw = kernel_shape[:3]
  if kt > 1 and kh == kw == 1 and _is_same_stride1(kernel_shape, strides, padding):
    return "taps"
  return "xla"


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_auto_cpu(x: jax.Array, kernel: jax.Array, strides: Triple,
                   padding: Triple) -> jax.Array:
  return _conv_xla(x, kernel, strides, padding)


def _auto_fwd(x, kernel, strides, padding):
  return _conv_xla(x, kernel, strides, padding), (x, kernel)


def _auto_bwd(strides, padding, residuals, g):
  """Input gradient by XLA's transposed conv; kernel gradient by the form picked above.
  Both compute the same sums as XLA's autodiff, so only the rounding differs."""
  x, kernel = residuals
  dx, = jax.linear_transpose(lambda v: _conv_xla(v, kernel, strides, padding), x)(g)
  if _cpu_kernel_grad_impl(kernel.shape, strides, padding) == "taps":
    dk = _kernel_grad_by_taps(x, g, kernel.shape[:3], padding).astype(kernel.dtype)
  else:
    dk, = jax.linear_transpose(lambda k: _conv_xla(x, k, strides, padding), kernel)(g)
  return dx, dk


_conv_auto_cpu.defvjp(_auto_fwd, _auto_bwd)


def conv3d(x: jax.Array, kernel: jax.Array, strides: Triple, padding: Triple,
           lowering: str | None = None) -> jax.Array:
  """NDHWC conv with symmetric zero padding (PyTorch Conv3d semantics), lowered as
  `lowering` (default: `set_conv_lowering`'s choice)."""
  name = lowering or _lowering["name"]
  strides, padding = tuple(strides), tuple(padding)
  if name == "auto":
    if jax.default_backend() == "cpu":
      return _conv_auto_cpu(x, kernel, strides, padding)
    name = "xla"
  return _IMPLS[name](x, kernel, strides, padding)


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


def batch_norm(train: bool, dtype: Dtype, axis_name: str | None, name: str,
               relu: bool = False) -> norm.BatchNorm:
  """BatchNorm3d as in the reference (eps 1e-5, momentum 0.1, PyTorch's running statistics),
  followed by a ReLU if `relu`; statistics kept in float32."""
  return norm.BatchNorm(use_running_average=not train, dtype=dtype,
                        axis_name=axis_name if train else None, relu=relu, name=name)
