"""The colour jitter as first written (`lax.switch` on the drawn order inside a `lax.scan`),
kept as the reference the branch-free `auxskd_jax.ops.jitter` is tested against
(tests/test_ops_augment.py) and timed beside (benchmarks/jitter_speed.py).

Under vmap the switch's index is batched, so every step evaluates all four ops and selects:
16 ops per frame, four of them the HSV round trip of the hue shift.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from auxskd_jax.ops import jitter as jitter_lib
from auxskd_jax.ops.jitter import JitterParams


def _op_table(params: JitterParams, *, brightness: float, contrast: float, saturation: float,
              hue: float) -> tuple:
  same = lambda x: x
  return (
      (lambda x: jitter_lib._brightness(x, params.brightness)) if brightness > 0 else same,
      (lambda x: jitter_lib._contrast(x, params.contrast)) if contrast > 0 else same,
      (lambda x: jitter_lib._saturation(x, params.saturation)) if saturation > 0 else same,
      (lambda x: jitter_lib._hue(x, params.hue)) if hue > 0 else same,
  )


def color_jitter_frame(image: jax.Array, params: JitterParams, *, brightness: float,
                       contrast: float, saturation: float, hue: float) -> jax.Array:
  ops = _op_table(params, brightness=brightness, contrast=contrast, saturation=saturation,
                  hue=hue)
  step = lambda x, op: (jax.lax.switch(op, ops, x), None)
  out, _ = jax.lax.scan(step, image, params.order)
  return jnp.where(params.apply, out, image)


def color_jitter(images: jax.Array, params: JitterParams, *, brightness: float,
                 contrast: float, saturation: float, hue: float) -> jax.Array:
  return jitter_lib.vmap_frames(color_jitter_frame, images, params, brightness=brightness,
                                contrast=contrast, saturation=saturation, hue=hue)
