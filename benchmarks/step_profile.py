"""Where a training step's time goes, op by op: the compiled step run under `jax.profiler`,
its trace's XLA op events summed by kind (convolution, dot, copy/transpose, fusions by what
they hold), and the largest single ops.

Profile before choosing a lever (issue 21): this is how the CPU figures in BENCHMARKS.md were
found. Run it alone; shares are only meaningful on a quiet machine.

  python benchmarks/step_profile.py --task auxskd --batch 8 --width 16 --clip_len 8 --crop 56 \
      --frame_size 64,80 --queue_size 512 --dtype float32 --steps 5

The kind of a fusion is read from the optimised HLO (`compiled.as_text()`): the opcodes inside
its fused computation, so "fusion[transpose,copy]" is a layout change fused into its producer.
Times are the trace's op durations (on a CPU: XLA's thunks) per step. On XLA:CPU a convolution
thunk only dispatches its work to Eigen's thread pool (its event lasts microseconds; checked
with a jitted conv alone), so the row "(asynchronous: convolutions)" is the step's wall time
less every synchronous op: on a CPU, that is where the convolutions' time is.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402
import step_throughput  # noqa: E402

# The opcodes that name a fusion's kind, most telling first.
_TELLING = ("convolution", "dot", "reduce-window", "reduce", "scatter", "gather", "transpose",
            "sort", "concatenate", "pad", "slice", "dynamic-slice", "dynamic-update-slice",
            "copy", "broadcast")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+\s+([\w\-]+)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_COMP = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def hlo_kinds(hlo_text: str) -> dict[str, str]:
  """Instruction name -> kind: its opcode, or for a fusion `fusion[<the telling opcodes>]`."""
  computations: dict[str, set[str]] = collections.defaultdict(set)
  instrs: dict[str, tuple[str, str | None]] = {}
  current = None
  for line in hlo_text.splitlines():
    comp = _COMP.match(line)
    if comp and "=" not in line.split("{")[0]:
      current = comp.group(1)
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, opcode = m.groups()
    calls = _CALLS.search(line)
    instrs[name] = (opcode, calls.group(1) if calls else None)
    if current is not None:
      computations[current].add(opcode)
  kinds = {}
  for name, (opcode, called) in instrs.items():
    if opcode == "fusion" and called:
      inside = computations.get(called, set())
      telling = [op for op in _TELLING if op in inside][:2]
      kinds[name] = f"fusion[{','.join(telling) or 'elementwise'}]"
    else:
      kinds[name] = opcode
  return kinds


def trace_events(directory: str) -> list[dict[str, Any]]:
  files = glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True)
  if not files:
    raise SystemExit(f"no trace was written under {directory}")
  with gzip.open(max(files, key=os.path.getmtime), "rt") as f:
    return [e for e in json.load(f).get("traceEvents", []) if e.get("ph") == "X"]


def profile_calls(compiled: Any, call: Callable[[], Any], steps: int, top: int = 15
                  ) -> dict[str, Any]:
  """Times `steps` calls of `call()` (which runs `compiled` and returns its outputs) under the
  profiler; returns the step's wall time and the ops' time by kind and by op."""
  kinds = hlo_kinds(compiled.as_text())
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      start = time.perf_counter()
      for _ in range(steps):
        out = call()
      jax.block_until_ready(out)
      wall_ms = (time.perf_counter() - start) * 1e3 / steps
    events = trace_events(tmp)
  by_kind: dict[str, float] = collections.defaultdict(float)
  by_op: dict[str, float] = collections.defaultdict(float)
  matched = 0
  for e in events:
    name = e.get("name", "")
    if name in kinds:
      matched += 1
      by_kind[kinds[name]] += e["dur"] / 1e3 / steps
      by_op[name] += e["dur"] / 1e3 / steps
  total = sum(by_kind.values())
  if jax.default_backend() == "cpu":
    by_kind["(asynchronous: convolutions)"] = max(0.0, wall_ms - total)
  rows = [{"kind": k, "ms_per_step": v, "share": v / wall_ms}
          for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])]
  top_ops = [{"op": k, "kind": kinds[k], "ms_per_step": v}
             for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:top]]
  return {"wall_ms_per_step": wall_ms, "ops_ms_per_step": total, "by_kind": rows,
          "top_ops": top_ops, "ops_per_step": matched / steps}


def profile(task: str, args: argparse.Namespace) -> dict[str, Any]:
  """`task`'s compiled training step (one device), warmed up, then profiled."""
  config = common.make_config(task, args, args.dtype)
  built = step_throughput.compile_step(task, config, common.bench_devices(1),
                                       common.frame_size(args))
  compiled, batch, key = built["compiled"], built["batch"], built["key"]
  holder = {"state": built["state"]}

  def call() -> Any:
    holder["state"], metrics = compiled(holder["state"], batch, key)
    return metrics

  for _ in range(max(1, args.warmup)):
    jax.block_until_ready(call())
  return {"task": task, **profile_calls(compiled, call, args.steps, args.top)}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_common_flags(parser, steps=5, warmup=2)
  parser.set_defaults(dtype="float32")
  parser.add_argument("--task", default="auxskd",
                      help=f"comma-separated steps, of {list(step_throughput.TASKS)}")
  parser.add_argument("--top", type=int, default=15, help="largest single ops to list")
  return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
  common.apply_tiny(args)
  common.parse_dtypes(args.dtype)
  results = []
  for task in [t.strip() for t in args.task.split(",") if t.strip()]:
    if task not in step_throughput.TASKS:
      raise SystemExit(f"--task={task!r}: choose from {list(step_throughput.TASKS)}.")
    result = profile(task, args)
    results.append(result)
    print(f"\n{task}: {result['wall_ms_per_step']:.1f} ms a step (traced), of which "
          f"{result['ops_ms_per_step']:.1f} ms synchronous ops")
    print(common.markdown_table(result["by_kind"], ("kind", "ms_per_step", "share")))
    print(common.markdown_table(result["top_ops"], ("op", "kind", "ms_per_step")))
  payload = {"benchmark": "step_profile", "environment": common.environment(),
             "args": vars(args), "profiles": results}
  common.write_json(args.out, payload)
  return payload


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  return run(build_parser().parse_args(argv))


if __name__ == "__main__":
  main()
