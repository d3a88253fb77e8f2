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

In training the normalisation of conv activations (and a ReLU after it, `relu=True`) has its
gradient in closed form (`_normalize_train`). Autodiff of the two-pass statistics kept
`x - mean` as a residual and made about 13 passes over the activations per BN + ReLU; the
closed form makes two (one reduction, one elementwise) and rounds the same to float32 (~1e-7
relative). Measured on a 2-core Intel Xeon: BENCHMARKS.md.
"""

from __future__ import annotations

import functools
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
  relu: bool = False  # relu(BN(x)), fused into the training gradient

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (x.shape[-1],)
    axes = tuple(range(x.ndim - 1))
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
    scale = self.param("scale", nn.initializers.ones, features, self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, features, self.param_dtype)

    out_dtype = jnp.dtype(self.dtype if self.dtype is not None else jnp.result_type(x, scale))
    if self.use_running_average:
      return _apply(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon, self.relu,
                    out_dtype)
    if self.is_initializing():  # this device's statistics (no pmap axis exists yet)
      mean, var = _stats(x, axes, None)
      return _apply(x, mean, var, scale, bias, self.epsilon, self.relu, out_dtype)

    if x.ndim > 2:
      y, mean, var = _normalize_train(x, scale, bias, self.epsilon, self.axis_name, self.relu,
                                      out_dtype)
    else:
      # The heads' BatchNorm1d [B, C] keeps autodiff: it costs nothing there, and a bias before
      # it (whose exact gradient is zero) rounds closer to the authors' under autodiff (RSPNet's
      # step parity: 0.20 of its tolerance against 0.80 with the closed form).
      mean, var = _stats(x, axes, self.axis_name)
      y = _apply(x, mean, var, scale, bias, self.epsilon, self.relu, out_dtype)
    count = _count(x, self.axis_name)
    unbiased = var * (count / (count - 1)) if count > 1 else var
    ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
    ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
    return y


def _apply(x: jax.Array, mean: jax.Array, var: jax.Array, scale: jax.Array, bias: jax.Array,
           epsilon: float, relu: bool, out_dtype: Any) -> jax.Array:
  """[relu]((x - mean) / sqrt(var + eps) * scale + bias) in `out_dtype`."""
  y = ((x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias).astype(out_dtype)
  return jnp.maximum(y, 0) if relu else y


def _count(x: jax.Array, axis_name: str | None) -> int:
  """Values per channel in the batch statistics: this device's, times the devices pooled."""
  count = math.prod(x.shape[:-1])
  return count * jax.lax.axis_size(axis_name) if axis_name is not None else count


def _stats(x: jax.Array, axes: tuple[int, ...], axis_name: str | None
           ) -> tuple[jax.Array, jax.Array]:
  """(mean, biased variance) in float32 (at least), pooled over `axis_name`.

  Two-pass variance: the encoders see raw 0..255 pixels, where E[x^2] - E[x]^2 cancels
  badly in float32."""
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = xf.mean(axes)
  if axis_name is not None:
    mean = jax.lax.pmean(mean, axis_name)
  var = jnp.square(xf - mean).mean(axes)
  if axis_name is not None:
    var = jax.lax.pmean(var, axis_name)
  return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _normalize_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                     axis_name: str | None, relu: bool, out_dtype: Any
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(y, batch mean, batch variance): y = [relu]((x - mean) / sqrt(var + eps) * scale + bias)
  with the batch statistics of `x` (pooled over `axis_name`)."""
  return _normalize_fwd(x, scale, bias, epsilon, axis_name, relu, out_dtype)[0]


def _normalize_fwd(x, scale, bias, epsilon, axis_name, relu, out_dtype):
  axes = tuple(range(x.ndim - 1))
  mean, var = _stats(x, axes, axis_name)
  y = _apply(x, mean, var, scale, bias, epsilon, relu, out_dtype)
  return (y, mean, var), (x, mean, jax.lax.rsqrt(var + epsilon), scale, y if relu else None)


def _normalize_bwd(epsilon, axis_name, relu, out_dtype, residuals, cotangents):
  """Closed form of the gradient autodiff gives (under pmap, that of the devices' summed
  losses for `x`, of this device's loss for `scale` and `bias`). The statistics' own
  cotangents are ignored: they reach only the running averages, never a loss."""
  del epsilon, out_dtype
  x, mean, inv, scale, y = residuals
  dy = cotangents[0].astype(jnp.float32)
  if relu:
    dy = jnp.where(y > 0, dy, 0.0)
  axes = tuple(range(x.ndim - 1))
  xhat = (x.astype(jnp.float32) - mean) * inv
  dbias, dscale = dy.sum(axes), (dy * xhat).sum(axes)
  total_dbias, total_dscale = dbias, dscale
  if axis_name is not None:
    total_dbias = jax.lax.psum(dbias, axis_name)
    total_dscale = jax.lax.psum(dscale, axis_name)
  count = _count(x, axis_name)
  dx = (scale * inv) * (dy - total_dbias / count - xhat * (total_dscale / count))
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


_normalize_train.defvjp(_normalize_fwd, _normalize_bwd)
