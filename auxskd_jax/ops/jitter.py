"""Colour jitter with torchvision's `RandomApply([ColorJitter(b, c, s, h)], p)` semantics.

torchvision (tensor path, float images in [0, 1]) does, per application:
- factors `b ~ U[max(0, 1-brightness), 1+brightness]`, likewise contrast and saturation,
  hue shift `h ~ U[-hue, hue]`; a strength of 0 means that op is skipped;
- the four ops in the order of `torch.randperm(4)` (0 brightness, 1 contrast, 2 saturation,
  3 hue), each followed by a clamp to [0, 1]:
  brightness `clamp(b * x)`; contrast `clamp(c * x + (1-c) * mean(gray(x)))` with the mean
  over the whole frame; saturation `clamp(s * x + (1-s) * gray(x))`; hue: rotate the HSV hue
  by `h` turns.

dm-pix differs on three of these, so only its pieces that match are used:
- `pix.adjust_brightness` adds a delta (TF semantics); torchvision multiplies, so brightness
  is the one-line `x * b` instead.
- `pix.adjust_contrast` blends each channel with its own mean (TF); torchvision blends with
  the mean of the grey image, so the blend is written with `pix.rgb_to_grayscale` (its rec601
  weights 0.2989/0.587/0.114 are torchvision's).
- `pix.adjust_saturation` scales HSV saturation (TF); torchvision blends with the grey image,
  again written as a blend with `pix.rgb_to_grayscale`.
- `pix.adjust_hue` is torchvision's rule exactly (`(h + delta) % 1` in HSV) and is used.

The random order is kept (as torchvision) without evaluating any op more than its draw needs.
Brightness, contrast and saturation are one blend, `clamp(f * x + (1-f) * m)` with target `m`
0, the frame's mean grey or the grey image, so a step is one blend whose factor and target are
selected by the drawn op. Hue is not linear and is the costly op (an HSV round trip), so it is
computed once: three blend slots for the positions before the hue's (0-2, each active only if
before it), the hue shift, three for the positions after it (1-3). Under vmap (where a
`lax.switch` on a batched index evaluates every branch) that is 6 cheap blends and 1 hue per
frame instead of 16 ops, 4 of them hue; `auxskd_jax.testing.jitter_switch` keeps the
switch-based form it is tested against.
"""

from __future__ import annotations

from typing import NamedTuple

import dm_pix as pix
import jax
import jax.numpy as jnp

from auxskd_jax.ops import rand


class JitterParams(NamedTuple):
  """One ColorJitter draw per element of some batch shape."""
  apply: jax.Array       # bool: RandomApply's coin (p = jitter_prob)
  brightness: jax.Array  # float factor
  contrast: jax.Array    # float factor
  saturation: jax.Array  # float factor
  hue: jax.Array         # float shift, in turns
  order: jax.Array       # int32 [..., 4]: a permutation of the four ops


def draw_jitter_params(key: jax.Array, shape: tuple[int, ...], *, prob: float,
                       brightness: float, contrast: float, saturation: float,
                       hue: float) -> JitterParams:
  """Draws what torchvision's RandomApply + ColorJitter.get_params draw, for `shape` images.

  All nine numbers per image come from one uniform draw (each random call costs compile
  time): the coin, three factors and the hue shift scale their uniforms, and the order is
  the argsort of four uniforms (a uniform random permutation, like `torch.randperm(4)`).
  """
  u = rand.uniform(key, shape + (9,))

  def scaled(x: jax.Array, low: float, high: float) -> jax.Array:
    return low + (high - low) * x

  return JitterParams(
      apply=u[..., 0] < prob,
      brightness=scaled(u[..., 1], max(0.0, 1.0 - brightness), 1.0 + brightness),
      contrast=scaled(u[..., 2], max(0.0, 1.0 - contrast), 1.0 + contrast),
      saturation=scaled(u[..., 3], max(0.0, 1.0 - saturation), 1.0 + saturation),
      hue=scaled(u[..., 4], -hue, hue),
      order=jnp.argsort(u[..., 5:], axis=-1).astype(jnp.int32),
  )


def _brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
  return jnp.clip(image * factor, 0.0, 1.0)


def _contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  mean = jnp.mean(pix.rgb_to_grayscale(image))
  return jnp.clip(factor * image + (1.0 - factor) * mean, 0.0, 1.0)


def _saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
  gray = pix.rgb_to_grayscale(image, keep_dims=True)
  return jnp.clip(factor * image + (1.0 - factor) * gray, 0.0, 1.0)


def _hue(image: jax.Array, shift: jax.Array) -> jax.Array:
  return jnp.clip(pix.adjust_hue(image, shift), 0.0, 1.0)


def _blend_step(x: jax.Array, op: jax.Array, active: jax.Array, params: JitterParams,
                enabled: tuple[bool, bool, bool]) -> jax.Array:
  """Brightness (op 0), contrast (1) or saturation (2) as one blend, where `active` and the op
  is enabled (strength > 0); anything else (hue, 3) leaves `x` as it is."""
  gray = pix.rgb_to_grayscale(x, keep_dims=True)
  factor = jnp.where(op == 0, params.brightness,
                     jnp.where(op == 1, params.contrast, params.saturation))
  target = jnp.where(op == 1, jnp.mean(gray), jnp.where(op == 2, gray, 0.0))
  on = active & jnp.asarray(enabled + (False,))[op]
  return jnp.where(on, jnp.clip(factor * x + (1.0 - factor) * target, 0.0, 1.0), x)


def color_jitter_frame(image: jax.Array, params: JitterParams, *, brightness: float,
                       contrast: float, saturation: float, hue: float) -> jax.Array:
  """Applies one draw to one RGB frame `[H, W, 3]` float in [0, 1] (unbatched `params`): the
  drawn permutation of the four ops, each followed by a clamp; a strength of 0 skips its op
  (as torchvision; hue 0 would otherwise round-trip through HSV)."""
  enabled = (brightness > 0, contrast > 0, saturation > 0)
  hue_at = jnp.argmax(params.order == 3)  # the hue's position in the order
  # Each group of three slots is a `lax.scan` (one compiled body, not three unrolled copies:
  # compile time matters on the CPU).
  step = lambda x, k_active: (_blend_step(x, params.order[k_active[0]], k_active[1], params,
                                          enabled), None)
  before = jnp.arange(3)  # the positions that can come before the hue's
  out, _ = jax.lax.scan(step, image, (before, before < hue_at))
  if hue > 0:
    out = _hue(out, params.hue)
  after = jnp.arange(1, 4)  # and after it
  out, _ = jax.lax.scan(step, out, (after, after > hue_at))
  return jnp.where(params.apply, out, image)


def vmap_frames(frame_fn, images: jax.Array, params: JitterParams, **strengths: float) -> jax.Array:
  """`frame_fn(frame, params, **strengths)` over `images [..., H, W, 3]`, `params` broadcast
  to the batch shape `...`."""
  batch_shape = images.shape[:-3]
  flat = images.reshape(-1, *images.shape[-3:])
  flat_params = jax.tree_util.tree_map(
      lambda p: jnp.broadcast_to(p, batch_shape + p.shape[len(params.apply.shape):]).reshape(
          -1, *p.shape[len(params.apply.shape):]), params)
  fn = lambda x, p: frame_fn(x, p, **strengths)
  return jax.vmap(fn)(flat, flat_params).reshape(images.shape)


def color_jitter(images: jax.Array, params: JitterParams, *, brightness: float,
                 contrast: float, saturation: float, hue: float) -> jax.Array:
  """Applies draws to `images [..., H, W, 3]`; `params` broadcasts to the batch shape `...`
  (e.g. drawn `[B, N, 1]` to share one draw by all frames of a clip)."""
  return vmap_frames(color_jitter_frame, images, params, brightness=brightness,
                     contrast=contrast, saturation=saturation, hue=hue)
