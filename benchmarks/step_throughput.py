"""Training-step throughput of the pmapped JAX steps, with the data already on the device.

    python benchmarks/step_throughput.py --out=results/step_throughput.json
    python benchmarks/step_throughput.py --tiny --task=auxskd --dtype=float32   # CPU smoke

Steps (the library's own, unmodified): auxSKD (on-device sampling + augmentation, student
forward/backward with predictor, shuffled-BN teacher forward, queue similarities + KL, SGD,
EMA, enqueue), VSPP, and fine-tuning, for R(2+1)D-10, 32 clip pairs of 16x112x112 cut from
31x128x171 windows, bf16 compute and f32. Reports the median ms/step, clips (pairs) per second,
peak device memory, XLA's FLOPs per step and the model FLOP utilisation they imply against the
H100's 790 dense bf16 TFLOP/s (the issue estimates ~170 GFLOP per auxSKD pair), and the cost of
`make_clips` alone (sampling + augmentation of 32 pairs) as a share of the auxSKD step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (puts the repo root on sys.path)

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

TASKS = ("auxskd", "vspp", "finetune")
# The ops task whose clips each training step makes (docs/DESIGN.md).
OPS_TASK = {"auxskd": "auxskd", "vspp": "vspp", "finetune": "clip"}
FINETUNE_CLASSES = 101  # UCF101
COLUMNS = ("task", "model", "dtype", "batch", "ms_median", "items_per_s", "gflop_per_item_xla",
           "mfu", "peak_memory_gib", "compile_s")


def build_method(task: str, config: ml_collections.ConfigDict) -> Any:
  if task == "auxskd":
    from auxskd_jax.methods.auxskd import AuxSKD

    return AuxSKD(config)
  if task == "vspp":
    from auxskd_jax.methods.vspp import VSPP

    return VSPP(config)
  if task == "finetune":
    from auxskd_jax.methods.finetune import Finetune

    return Finetune(config, FINETUNE_CLASSES)
  raise SystemExit(f"--task={task!r}: choose from {list(TASKS)}.")


def host_batch(task: str, config: ml_collections.ConfigDict, size: tuple[int, int],
               seed: int = 0) -> dict[str, np.ndarray]:
  """A reader-shaped batch with the windows `task`'s step needs (2 x 31 frames for auxSKD)."""
  from auxskd_jax import ops

  t = OPS_TASK[task]
  return common.reader_batch(np.random.default_rng(seed), config.train.batch_size,
                             ops.num_views(t, config), ops.window_len(t, config), size)


def compile_step(task: str, config: ml_collections.ConfigDict, devices: Sequence[jax.Device],
                 size: tuple[int, int], seed: int = 0) -> dict[str, Any]:
  """Initial state, an on-device batch and the compiled pmapped step (state donated); `init()`
  makes a fresh copy of the same initial state, so one compiled step serves several runs."""
  method = build_method(task, config)
  from auxskd_jax.train import optim

  tx, schedule = optim.make_optimizer(config, 1000, 100_000)
  state = method.init_state(config, jax.random.PRNGKey(seed), tx, 1000)

  def init() -> Any:  # the same pytree (optimizer included) the step was compiled for
    return common.replicate(state, devices)

  r_state = init()
  batch = common.shard(host_batch(task, config, size, seed), devices)
  key = common.replicate(jax.random.PRNGKey(seed + 1), devices)
  p_step = jax.pmap(method.make_step(schedule), axis_name="batch", devices=devices, donate_argnums=(0,))
  start = time.perf_counter()
  lowered = p_step.lower(r_state, batch, key)
  compiled = lowered.compile()
  return {"compiled": compiled, "state": r_state, "batch": batch, "key": key, "init": init,
          "compile_s": time.perf_counter() - start, "hlo_flops": common.compiled_flops(lowered)}


def measure_step(task: str, config: ml_collections.ConfigDict, *,
                 devices: Sequence[jax.Device], size: tuple[int, int], steps: int, warmup: int,
                 peak_tflops: float = common.PEAK_TFLOPS,
                 built: dict[str, Any] | None = None) -> dict[str, Any]:
  """Times `task`'s step; returns the figures of one table row (see module docstring).
  `built`: a `compile_step` result to time (its state is consumed; `built['init']` stays)."""
  if built is None:
    built = compile_step(task, config, devices, size)
  compiled, batch, key = built["compiled"], built["batch"], built["key"]
  state = built.pop("state", None)
  holder = {"state": built["init"]() if state is None else state}
  del state
  losses: list[Any] = []

  def call() -> Any:
    holder["state"], metrics = compiled(holder["state"], batch, key)
    losses.append(metrics["loss"])
    return holder["state"], metrics

  times = common.time_calls(call, steps=steps, warmup=warmup)
  summary = common.summarize_ms(times)
  n, items = len(devices), int(config.train.batch_size)
  # The optimised executable's count; the unoptimised HLO's is the fallback and a cross-check
  # (a backend may hide convolutions in library calls it does not count).
  flops = common.compiled_flops(compiled)
  hlo_flops = built["hlo_flops"]
  if flops is None:
    flops = hlo_flops
  total = flops * n if flops is not None else None
  seconds = summary["ms_median"] / 1e3
  peak = common.peak_device_memory(devices[0])
  final_loss = float(np.asarray(jax.device_get(losses[-1]))[0])
  row = {
      "task": task, "model": config.model.name, "dtype": config.model.dtype, "batch": items,
      "devices": n, "width": config.model.width, "clip_len": config.clip.clip_len,
      "crop": config.clip.crop_size, **summary, "items_per_s": items / seconds,
      "items": "clip pairs" if task == "auxskd" else "clips",
      "flops_per_step_xla": total,
      "flops_per_step_unoptimized_hlo": hlo_flops * n if hlo_flops is not None else None,
      "gflop_per_item_xla": total / items / 1e9 if total is not None else None,
      "mfu": total / seconds / (peak_tflops * 1e12 * n) if total is not None else None,
      "peak_tflops": peak_tflops,
      "peak_bytes_in_use": peak, "peak_memory_gib": peak / 2**30 if peak is not None else None,
      "xla_planned_bytes": common.compiled_memory(compiled),
      "compile_s": built["compile_s"], "final_loss": final_loss,
      "loss_finite": bool(np.isfinite(final_loss)),
  }
  del holder, built
  return row


def measure_sampling(config: ml_collections.ConfigDict, device: jax.Device,
                     size: tuple[int, int], batch: int, *, steps: int, warmup: int,
                     task: str = "auxskd") -> dict[str, Any]:
  """`task`'s `ops.make_clips` alone on one device: `batch` examples of uint8 windows as the
  reader ships them (auxSKD: 2 per example) -> augmented float clips and, for VSPP, its
  labels: what the step spends before the networks, and what the PyTorch steps of
  torch_compare.py, fed ready clips, do not."""
  from auxskd_jax import ops

  recipe = OPS_TASK[task]
  host = common.reader_batch(np.random.default_rng(0), batch, ops.num_views(recipe, config),
                             ops.window_len(recipe, config), size)
  on_device = jax.device_put(host, device)
  key = jax.device_put(jax.random.PRNGKey(0), device)
  fn = jax.jit(lambda k, b: ops.make_clips(recipe, k, b, config, train=True))
  start = time.perf_counter()
  compiled = fn.lower(key, on_device).compile()
  compile_s = time.perf_counter() - start
  times = common.time_calls(lambda: compiled(key, on_device), steps=steps, warmup=warmup)
  return {"task": task, "pairs" if task == "auxskd" else "clips": batch,
          "window": [ops.window_len(recipe, config), *size], "compile_s": compile_s,
          **common.summarize_ms(times)}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_common_flags(parser)
  parser.add_argument("--task", default=",".join(TASKS),
                      help=f"comma-separated steps to time, of {list(TASKS)}")
  parser.add_argument("--no_sampling", action="store_true",
                      help="skip timing make_clips alone")
  return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Runs the benchmark for parsed `args`; returns the JSON payload (also written to --out)."""
  common.apply_tiny(args)
  tasks = [t.strip() for t in args.task.split(",") if t.strip()]
  bad = [t for t in tasks if t not in TASKS]
  if bad or not tasks:
    raise SystemExit(f"--task={args.task!r}: choose from {list(TASKS)}.")
  dtypes = common.parse_dtypes(args.dtype)
  size = common.frame_size(args)
  devices = common.bench_devices(args.devices)
  rows = []
  for dtype in dtypes:
    for task in tasks:
      config = common.make_config(task, args, dtype)
      rows.append(measure_step(task, config, devices=devices, size=size, steps=args.steps,
                               warmup=args.warmup, peak_tflops=args.peak_tflops))
      print(common.markdown_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
  payload: dict[str, Any] = {
      "benchmark": "step_throughput", "environment": common.environment(), "args": vars(args),
      "issue_gflop_per_pair": common.ISSUE_GFLOP_PER_PAIR, "steps": rows,
      "note": "peak_bytes_in_use is the process's peak so far (run one task and dtype per "
              "process for per-step peaks); flops are XLA's cost analysis of the compiled step.",
  }
  if not args.no_sampling:
    sampling = measure_sampling(common.make_config("auxskd", args, "float32"), devices[0], size,
                                args.batch // len(devices), steps=args.steps, warmup=args.warmup)
    sampling["share_of_auxskd_step"] = {
        r["dtype"]: sampling["ms_median"] / r["ms_median"] for r in rows if r["task"] == "auxskd"}
    sampling["target_share"] = 0.05
    payload["sampling"] = sampling
    print(f"make_clips('auxskd') for {sampling['pairs']} pairs of {sampling['window']} windows: "
          f"{sampling['ms_median']:.3g} ms; share of the auxSKD step: "
          + ", ".join(f"{d} {s:.1%}" for d, s in sampling["share_of_auxskd_step"].items()))
  print(common.markdown_table(rows, COLUMNS))
  common.write_json(args.out, payload)
  return payload


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  return run(build_parser().parse_args(argv))


if __name__ == "__main__":
  main()
