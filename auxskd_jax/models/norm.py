"""BatchNorm whose running statistics are PyTorch's, with flax `nn.BatchNorm`'s names.

flax's `nn.BatchNorm` folds the biased batch variance into `var`; `torch.nn.BatchNorm{1,3}d`
folds the unbiased one (times n / (n - 1), n the number of values per channel: the whole
batch for synchronised statistics, this device's slice otherwise) while normalising with the
biased one. At auxSKD's predictor (n = 30, or the per-GPU share of it) that is a 3.4% (or
more) larger running variance, which every eval-mode use reads (retrieval, probes, k-NN, the
BN buffers VSPP inherits). This module does what PyTorch does, and stores `params['scale']`,
`params['bias']`, `batch_stats['mean']`, `batch_stats['var']` as flax does, so checkpoints and
`convert` are unchanged. Normalisation itself is computed as flax computes it (two-pass
variance, float32 statistics).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

EPSILON = 1e-5
MOMENTUM = 0.9  # flax convention (weight of the old value); PyTorch's momentum 0.1


class BatchNorm(nn.Module):
  """BatchNorm over every axis but the last (`BatchNorm1d` on `[B, C]`, `BatchNorm3d` on
  `[B, T, H, W, C]`); `axis_name` pools the batch statistics over devices (SyncBatchNorm)."""
  use_running_average: bool
  momentum: float = MOMENTUM
  epsilon: float = EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (x.shape[-1],)
    axes = tuple(range(x.ndim - 1))
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
    scale = self.param("scale", nn.initializers.ones, features, self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, features, self.param_dtype)

    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      mean, var, count = self._batch_stats(x, axes)
      if not self.is_initializing():
        unbiased = var * (count / (count - 1)) if count > 1 else var
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased

    y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype if self.dtype is not None else jnp.result_type(x, scale))

  def _batch_stats(self, x: jax.Array, axes: tuple[int, ...]
                   ) -> tuple[jax.Array, jax.Array, int]:
    """(mean, biased variance, values per channel) in float32, pooled over `axis_name`.

    Two-pass variance: the encoders see raw 0..255 pixels, where E[x^2] - E[x]^2 cancels
    badly in float32."""
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    count = math.prod(x.shape[:-1])
    pooled = self.axis_name is not None and not self.is_initializing()
    mean = xf.mean(axes)
    if pooled:
      mean = jax.lax.pmean(mean, self.axis_name)
    var = jnp.square(xf - mean).mean(axes)
    if pooled:
      var = jax.lax.pmean(var, self.axis_name)
      count *= jax.lax.axis_size(self.axis_name)
    return mean, var, count
