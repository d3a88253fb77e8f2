"""Where the CPU step's time goes, conv by conv: each distinct 3-D conv of the auxSKD student
(its input, kernel, strides and padding, recorded while tracing the model) timed forward and
forward + backward in JAX (every `model.conv_lowering`) and in PyTorch, interleaved in one
process so that a loaded machine slows both alike.

The whole-step comparison (`torch_compare.py`) says how far behind we are; this says which
convs account for it, i.e. which lever (a lowering, a layout) is worth working.

  python benchmarks/conv_profile.py --batch 8 --width 16 --clip_len 8 --crop 56 \
      --out benchmarks/results/cpu/conv_profile.json
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
from typing import Any, Callable, Sequence

# benchmarks/ is the script's dir
from common import add_xla_cpu_flag, environment, set_xla_cpu_ops, write_json

import jax
import jax.numpy as jnp
import numpy as np

from auxskd_jax import models
from auxskd_jax.models import layers

Shape = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def conv_shapes(model: str, width: int, batch: int, clip_len: int, crop: int
                ) -> collections.Counter[Shape]:
  """(input, kernel, strides, padding) of every conv3d one forward of `model` runs, counted."""
  seen: collections.Counter[Shape] = collections.Counter()
  real = layers.conv3d

  def recording(x, kernel, strides, padding, lowering=None):
    seen[(tuple(x.shape), tuple(kernel.shape), tuple(strides), tuple(padding))] += 1
    return real(x, kernel, strides, padding, lowering)

  net = models.build(model, num_classes=128, width=width)
  x = jnp.zeros((batch, clip_len, crop, crop, 3), jnp.float32)
  layers.conv3d = recording
  try:
    jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), x, train=True))
    seen.clear()  # count the convs of one forward, not of init
    variables = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), x, train=True))
    seen.clear()
    jax.eval_shape(lambda v: net.apply(v, x, train=True, mutable=["batch_stats"]), variables)
  finally:
    layers.conv3d = real
  return seen


def _time(fn: Callable[[], Any], steps: int) -> float:
  """Median ms of `fn()` (which must block until done) over `steps` calls, after one warm-up."""
  fn()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append((time.perf_counter() - t) * 1e3)
  return statistics.median(times)


def jax_timers(shape: Shape, lowering: str) -> tuple[Callable[[], Any], Callable[[], Any]]:
  xs, ks, strides, padding = shape
  rng = np.random.default_rng(0)
  x = jax.device_put(rng.standard_normal(xs, np.float32))  # (jnp.asarray compiles per shape)
  k = jax.device_put((rng.standard_normal(ks, np.float32) * 0.1).astype(np.float32))
  layers.set_conv_lowering(lowering)
  fwd = jax.jit(lambda x, k: layers.conv3d(x, k, strides, padding))
  y = fwd(x, k)
  g = jnp.ones_like(y)
  bwd = jax.jit(lambda x, k: jax.vjp(lambda a, b: layers.conv3d(a, b, strides, padding), x, k)[1](g))
  layers.set_conv_lowering("xla")
  return (lambda: fwd(x, k).block_until_ready(),
          lambda: jax.block_until_ready(bwd(x, k)))


def torch_timers(shape: Shape) -> tuple[Callable[[], Any], Callable[[], Any]]:
  import torch

  (b, t, h, w, c), (kt, kh, kw, ci, co), strides, padding = shape
  gen = torch.Generator().manual_seed(0)
  x = torch.randn(b, c, t, h, w, generator=gen, requires_grad=True)
  k = (torch.randn(co, ci, kt, kh, kw, generator=gen) * 0.1).requires_grad_(True)
  conv = torch.nn.functional.conv3d

  def fwd():
    with torch.no_grad():
      conv(x, k, stride=strides, padding=padding)

  def fwd_bwd():
    y = conv(x, k, stride=strides, padding=padding)
    torch.autograd.grad(y, (x, k), torch.ones_like(y))

  return fwd, fwd_bwd


def run(args: argparse.Namespace) -> dict[str, Any]:
  shapes = conv_shapes(args.model, args.width, args.batch, args.clip_len, args.crop)
  lowerings = [s for s in args.lowerings.split(",") if s]
  rows = []
  for shape, count in shapes.items():
    row: dict[str, Any] = {"input": shape[0], "kernel": shape[1], "strides": shape[2],
                           "padding": shape[3], "count": count}
    tf, tb = torch_timers(shape)
    row["torch_fwd_ms"], row["torch_fwd_bwd_ms"] = _time(tf, args.steps), _time(tb, args.steps)
    for lowering in lowerings:
      jf, jb = jax_timers(shape, lowering)
      row[f"jax_{lowering}_fwd_ms"] = _time(jf, args.steps)
      row[f"jax_{lowering}_fwd_bwd_ms"] = _time(jb, args.steps)
    rows.append(row)
    print(row, flush=True)
  totals = {}
  for key in rows[0]:
    if key.endswith("_ms"):
      totals[key] = round(sum(r[key] * r["count"] for r in rows), 2)
  return {"benchmark": "conv_profile", "args": vars(args), "environment": environment(),
          "rows": rows, "totals_ms_per_forward_x_count": totals,
          "note": "per distinct conv of one student forward at the given batch (the auxSKD "
                  "step runs the student forward + backward on the query clips and the "
                  "teacher forward on the key clips); medians, one process, interleaved."}


def markdown(result: dict[str, Any]) -> str:
  lowerings = [s for s in result["args"]["lowerings"].split(",") if s]
  head = ["input (B,T,H,W,C)", "kernel", "strides", "n", "torch fwd+bwd ms",
          *[f"jax {l} fwd+bwd ms" for l in lowerings]]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in result["rows"]:
    cells = [str(tuple(r["input"])), "x".join(map(str, r["kernel"][:3])) +
             f" {r['kernel'][3]}->{r['kernel'][4]}", str(tuple(r["strides"])), str(r["count"]),
             f"{r['torch_fwd_bwd_ms']:.2f}", *[f"{r[f'jax_{l}_fwd_bwd_ms']:.2f}" for l in lowerings]]
    lines.append("| " + " | ".join(cells) + " |")
  t = result["totals_ms_per_forward_x_count"]
  lines.append("| **total (x n)** | | | | " + f"**{t['torch_fwd_bwd_ms']:.1f}** | " +
               " | ".join(f"**{t[f'jax_{l}_fwd_bwd_ms']:.1f}**" for l in lowerings) + " |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="r21d_10")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--width", type=int, default=16)
  parser.add_argument("--clip_len", type=int, default=8)
  parser.add_argument("--crop", type=int, default=56)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--lowerings", default="xla,im2col,shifted,native")
  add_xla_cpu_flag(parser)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  set_xla_cpu_ops(args)
  result = run(args)
  print(markdown(result))
  if args.out:
    write_json(args.out, result)
  return result


if __name__ == "__main__":
  main()
