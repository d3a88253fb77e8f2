"""Initialisation schemes for every layer with weights (encoders, heads, the auxSKD predictor).

`torch` (the default) is what the authors' models start from: they never re-initialise, so
every layer keeps PyTorch's defaults. For a conv or linear layer with `fan_in` inputs per
output (in_channels * kt * kh * kw for a conv, in_features for a linear layer) both the weight
(`kaiming_uniform_(a=sqrt(5))`) and the bias are U(-1/sqrt(fan_in), +1/sqrt(fan_in)); BN scale
is 1 and bias 0. Behind BN the weight scale sets the effective learning rate, so a from-scratch
run depends on this choice.

`kaiming` is this port's earlier scheme: conv kernels Kaiming normal (fan_out, ReLU gain),
dense kernels LeCun normal, biases zero, BN scale 1 and bias 0.

Usage in any Flax module: `kernel_init, bias_init = dense_init(scheme, fan_in)` then
`nn.Dense(n, kernel_init=kernel_init, bias_init=bias_init)`; or the `Linear` module, which
computes `fan_in` from its input.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

SCHEMES: tuple[str, ...] = ("torch", "kaiming")
DEFAULT = "torch"

Initializer = Callable[..., jax.Array]


def check_scheme(scheme: str) -> str:
  """`scheme` if known, else a ValueError naming `model.init` and the choices."""
  if scheme not in SCHEMES:
    raise ValueError(f"model.init={scheme!r} is not an initialisation scheme; choose one of "
                     f"{list(SCHEMES)} ('torch' = PyTorch's defaults, as the authors).")
  return scheme


def uniform_fan_in(fan_in: int) -> Initializer:
  """U(-1/sqrt(fan_in), +1/sqrt(fan_in)) of any shape: PyTorch's default weight and bias."""
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key: jax.Array, shape: Any, dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv_init(scheme: str, fan_in: int) -> tuple[Initializer, Initializer]:
  """(kernel_init, bias_init) of a conv with `fan_in` = in_channels * kernel volume."""
  if check_scheme(scheme) == "torch":
    return uniform_fan_in(fan_in), uniform_fan_in(fan_in)
  return nn.initializers.variance_scaling(2.0, "fan_out", "normal"), nn.initializers.zeros


def dense_init(scheme: str, fan_in: int) -> tuple[Initializer, Initializer]:
  """(kernel_init, bias_init) of a linear layer with `fan_in` input features."""
  if check_scheme(scheme) == "torch":
    return uniform_fan_in(fan_in), uniform_fan_in(fan_in)
  return nn.initializers.lecun_normal(), nn.initializers.zeros


class Linear(nn.Module):
  """`nn.Dense` (parameters `kernel` (in, out), `bias`) initialised by `init_scheme`.

  Parameters are float32; `dtype` is the compute dtype.
  """
  features: int
  init_scheme: str = DEFAULT  # (a field named `init` would hide Module.init)
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel_init, bias_init = dense_init(self.init_scheme, x.shape[-1])
    kernel = self.param("kernel", kernel_init, (x.shape[-1], self.features), jnp.float32)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", bias_init, (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y
