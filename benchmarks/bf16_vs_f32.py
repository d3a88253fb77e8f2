"""Does bf16 compute cost accuracy? A short auxSKD run in bf16 and in f32 from the same init.

    python benchmarks/bf16_vs_f32.py --steps=100 --out=results/bf16_vs_f32.json
    python benchmarks/bf16_vs_f32.py --tiny                        # CPU smoke

Both runs start from the same parameters, teacher and queue (parameters are float32 whatever
the compute dtype; the init is checked to be identical), see the same batches in the same order
(`--batches` distinct textured batches, cycled) and the same sampling/augmentation keys. Prints
both loss curves and the largest relative gap |bf16 - f32| / |f32| over the run.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import step_throughput  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402


def make_batches(args: argparse.Namespace, size: tuple[int, int],
                 devices: Sequence[jax.Device]) -> list[dict[str, jax.Array]]:
  """`args.batches` distinct textured auxSKD batches on the devices (the same for any dtype)."""
  config = common.make_config("auxskd", args, "float32")
  return [common.shard(step_throughput.host_batch("auxskd", config, size, seed=s), devices)
          for s in range(args.batches)]


def run_curve(dtype: str, args: argparse.Namespace, size: tuple[int, int],
              devices: Sequence[jax.Device], built: dict[str, Any] | None = None,
              batches: list[dict[str, jax.Array]] | None = None) -> tuple[list[float], Any]:
  """Losses of `args.steps` auxSKD steps in `dtype`, and the initial parameters (host).
  `built`: a compiled seed-0 step of that dtype to reuse (a fresh initial state is made)."""
  if built is None:
    config = common.make_config("auxskd", args, dtype)
    if args.learning_rate:
      config.optim.learning_rate = args.learning_rate
    built = step_throughput.compile_step("auxskd", config, devices, size, seed=0)
  state = built.pop("state", None)
  state = built["init"]() if state is None else state
  init = jax.device_get(jax.tree.map(lambda x: x[0], state.params))
  if batches is None:
    batches = make_batches(args, size, devices)
  losses = []
  for i in range(args.steps):
    state, metrics = built["compiled"](state, batches[i % len(batches)], built["key"])
    losses.append(metrics["loss"])
  return [float(np.asarray(l)[0]) for l in jax.device_get(losses)], init


def compare(f32: list[float], bf16: list[float], init_f32: Any, init_bf16: Any,
            tolerance: float, verbose: bool = False) -> dict[str, Any]:
  """The two curves, their relative gaps and whether both runs started from one init."""
  init_gap = max(float(np.max(np.abs(a - b))) for a, b in
                 zip(jax.tree.leaves(init_f32), jax.tree.leaves(init_bf16)))
  gaps = [abs(b - f) / max(abs(f), 1e-12) for b, f in zip(bf16, f32)]
  worst = int(np.argmax(gaps))
  if verbose:
    print("| step | loss f32 | loss bf16 | relative gap |\n|---|---|---|---|")
    for i, (f, b, g) in enumerate(zip(f32, bf16, gaps)):
      print(f"| {i + 1} | {f:.5f} | {b:.5f} | {g:.2%} |")
  print(f"max relative gap {gaps[worst]:.2%} at step {worst + 1}; mean {np.mean(gaps):.2%}; "
        f"same init: {init_gap == 0.0}")
  return {"steps": len(f32), "loss_float32": f32, "loss_bfloat16": bf16,
          "relative_gap": gaps, "max_relative_gap": gaps[worst], "max_gap_step": worst + 1,
          "mean_relative_gap": float(np.mean(gaps)), "same_init": init_gap == 0.0,
          "tolerance": tolerance, "within_tolerance": gaps[worst] <= tolerance,
          "all_finite": bool(np.all(np.isfinite(f32 + bf16)))}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_common_flags(parser, steps=100, warmup=0)
  parser.add_argument("--batches", type=int, default=8, help="distinct batches, cycled")
  parser.add_argument("--learning_rate", type=float, default=0.0,
                      help="override the paper's 0.001 (0 keeps it)")
  parser.add_argument("--tolerance", type=float, default=0.05,
                      help="relative gap reported as acceptable")
  return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
  steps = args.steps
  common.apply_tiny(args)
  args.steps = min(steps, 4) if args.tiny else steps
  if args.steps < 1 or args.batches < 1:
    raise SystemExit("--steps and --batches must be at least 1.")
  size = common.frame_size(args)
  devices = common.bench_devices(args.devices)
  f32, init_f32 = run_curve("float32", args, size, devices)
  bf16, init_bf16 = run_curve("bfloat16", args, size, devices)
  payload = {"benchmark": "bf16_vs_f32", "environment": common.environment(), "args": vars(args),
             **compare(f32, bf16, init_f32, init_bf16, args.tolerance, verbose=True)}
  common.write_json(args.out, payload)
  return payload


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  return run(build_parser().parse_args(argv))


if __name__ == "__main__":
  main()
