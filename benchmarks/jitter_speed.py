"""Colour jitter alone: the branch-free `ops.jitter` against the switch-based form it replaced
(`auxskd_jax.testing.jitter_switch`), same draws, timed interleaved in one process (so load
on a shared machine hits both alike).

    python benchmarks/jitter_speed.py --frames=256 --size=112 --rounds=7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from auxskd_jax.ops import jitter as jitter_lib  # noqa: E402
from auxskd_jax.testing import jitter_switch  # noqa: E402

STRENGTHS = dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)  # the paper's


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--frames", type=int, default=256, help="frames (8 pairs x 2 x 16)")
  parser.add_argument("--size", type=int, default=112)
  parser.add_argument("--rounds", type=int, default=7, help="interleaved timings of each")
  args = parser.parse_args(argv)
  images = jnp.asarray(np.random.default_rng(0).uniform(
      0, 1, (args.frames, args.size, args.size, 3)), jnp.float32)
  params = jitter_lib.draw_jitter_params(jax.random.PRNGKey(0), (args.frames,), prob=0.8,
                                         **STRENGTHS)
  jax.jit(lambda x: x + 1).lower(images).compile()  # the process's first compile costs more
  fns, compile_s, times = {}, {}, {"branch_free": [], "switch": []}
  for name, fn in (("branch_free", jitter_lib.color_jitter),
                   ("switch", jitter_switch.color_jitter)):
    start = time.perf_counter()
    fns[name] = jax.jit(lambda x, p, fn=fn: fn(x, p, **STRENGTHS)).lower(images,
                                                                         params).compile()
    compile_s[name] = time.perf_counter() - start
    jax.block_until_ready(fns[name](images, params))
  for _ in range(args.rounds):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(images, params))
      times[name].append((time.perf_counter() - start) * 1e3)
  diff = float(jnp.max(jnp.abs(fns["branch_free"](images, params) - fns["switch"](images,
                                                                                  params))))
  med = {k: statistics.median(v) for k, v in times.items()}
  print(f"{args.frames} frames of {args.size}x{args.size}: branch-free {med['branch_free']:.1f} "
        f"ms, switch {med['switch']:.1f} ms, ratio {med['switch'] / med['branch_free']:.2f}x; "
        f"compile {compile_s['branch_free']:.1f} s vs {compile_s['switch']:.1f} s; max |diff| "
        f"{diff:.2g}; load average {os.getloadavg()[0]:.1f}")
  return {"ms_median": med, "compile_s": compile_s, "max_abs_diff": diff, "times_ms": times}


if __name__ == "__main__":
  main()
