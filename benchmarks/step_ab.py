"""Interleaved A/B of whole training steps between conv lowerings, in one process.

    python benchmarks/step_ab.py --task vspp,finetune,auxskd --lowerings xla,auto --batch 8 \
      --width 16 --clip_len 8 --crop 56 --frame_size 64,80 --queue_size 512 --dtype float32 \
      --rounds 5 --out benchmarks/results/cpu/step_ab_lowering.json

Why: a small CPU machine's speed drifts by up to 30% between runs minutes apart, more than
most levers are worth. Compiling every variant first and then timing them in turns (each
round: every variant for `--steps` steps after `--warmup` untimed ones, the round's figure
its median step) puts the drift on all variants alike, so the ratio of the medians is the
lever's. Process-wide XLA settings (such as
`--xla_cpu_scheduler`) cannot vary inside one process: run this script once per setting, in
alternation, and compare the printed medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (puts the repo root on sys.path)
import step_throughput  # noqa: E402



def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_common_flags(parser, steps=5, warmup=2)
  parser.set_defaults(dtype="float32")
  parser.add_argument("--task", default="vspp", help="comma-separated: auxskd, vspp, finetune")
  parser.add_argument("--lowerings", default="xla,auto",
                      help="comma-separated model.conv_lowering values; the first is the baseline")
  parser.add_argument("--rounds", type=int, default=5, help="timing rounds over all variants")
  return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
  tasks = [t for t in args.task.split(",") if t]
  lowerings = [v for v in args.lowerings.split(",") if v]
  for t in tasks:
    if t not in step_throughput.TASKS:
      raise SystemExit(f"--task={t!r}: choose from {list(step_throughput.TASKS)}.")
  if len(lowerings) < 2 or args.rounds < 1:
    raise SystemExit("--lowerings needs two or more values and --rounds at least 1.")
  if "," in args.dtype:
    raise SystemExit(f"--dtype={args.dtype!r}: one compute dtype per A/B.")
  devices, size = common.bench_devices(1), common.frame_size(args)
  built = {}
  for task in tasks:
    for lowering in lowerings:
      args.conv_lowering = lowering
      config = common.make_config(task, args, args.dtype)
      built[task, lowering] = step_throughput.compile_step(task, config, devices, size)
  times: dict[tuple[str, str], list[float]] = {key: [] for key in built}
  for _ in range(args.rounds):
    for key, b in built.items():
      def call(b: dict[str, Any] = b) -> Any:
        b["state"], metrics = b["compiled"](b["state"], b["batch"], b["key"])
        return metrics
      round_ms = common.time_calls(call, steps=args.steps, warmup=args.warmup)
      times[key].append(statistics.median(round_ms))
  rows = []
  for task in tasks:
    base = statistics.median(times[task, lowerings[0]])
    for lowering in lowerings:
      t = times[task, lowering]
      rows.append({"task": task, "lowering": lowering, "ms_median": statistics.median(t),
                   "ms_min": min(t), "round_medians_ms": t,
                   "speedup_vs_first": base / statistics.median(t)})
      print(f"{task:9s} {lowering:8s} median {rows[-1]['ms_median']:7.1f} ms  min "
            f"{rows[-1]['ms_min']:7.1f}  {rows[-1]['speedup_vs_first']:.3f}x vs {lowerings[0]}")
  return {"benchmark": "step_ab", "args": vars(args), "environment": common.environment(),
          "rows": rows}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = common.apply_tiny(build_parser().parse_args(argv))
  payload = run(args)
  common.write_json(args.out, payload)
  return payload


if __name__ == "__main__":
  main()
