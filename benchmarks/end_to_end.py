"""End-to-end auxSKD training throughput: host loader -> device -> sampling/augmentation + step.

    python benchmarks/end_to_end.py --workers=0,4,8,15 --out=results/end_to_end.json
    python benchmarks/end_to_end.py --tiny --workers=0            # CPU smoke

The data is a prepared-format dataset of textured JPEG videos written without TensorFlow
(`synthetic_dataset.py`, in `--data_dir` or a temp dir), or a real prepared dataset
(`--data_dir=/data/tfds --dataset=kinetics/k100`). For each loader worker count it reports
clip pairs/s over `--steps` steps of the real loop (grain loader, transfers kept two batches
ahead, the compiled auxSKD step), the loader alone, and the step alone with the batch already
on the device; the run is input-bound when the end-to-end rate falls below 90% of the step's.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import sys
import tempfile
import time
from typing import Any, Iterator, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import step_throughput  # noqa: E402
import synthetic_dataset  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

INPUT_BOUND_FRACTION = 0.9
COLUMNS = ("workers", "e2e_pairs_per_s", "loader_pairs_per_s", "step_pairs_per_s",
           "input_bound")


def open_source(args: argparse.Namespace, size: tuple[int, int]) -> Any:
  from auxskd_jax import data

  if args.dataset:
    return data.open_split(args.data_dir, args.dataset, args.split)
  name = synthetic_dataset.write_dataset(args.data_dir, num_videos=args.videos,
                                         num_frames=args.frames, size=size)
  return data.open_split(args.data_dir, name, "train")


def make_loader(source: Any, config: Any, workers: int, threads: int) -> Any:
  from auxskd_jax import data, ops

  return data.make_loader(source, batch_size=config.train.batch_size,
                          views=ops.num_views("auxskd", config),
                          window_len=ops.window_len("auxskd", config), start_mode="random",
                          seed=0, shuffle=True, num_epochs=None, drop_remainder=True,
                          workers=workers, threads=threads)


def device_batches(loader: Any, like: dict[str, jax.Array], devices: Sequence[jax.Device],
                   ahead: int) -> Iterator[dict[str, jax.Array]]:
  """Loader batches as device arrays with the compiled step's keys and dtypes, `ahead` copies
  in flight (device_put is asynchronous, so transfers overlap the running step)."""
  queue: collections.deque = collections.deque()
  while True:
    while len(queue) < max(1, ahead):
      host = next(loader)
      queue.append(common.shard({k: np.asarray(host[k], like[k].dtype) for k in like}, devices))
    yield queue.popleft()


def loader_rate(loader: Any, batches: int, batch_size: int) -> float:
  next(loader)  # start-up (worker processes, file handles) is not throughput
  start = time.perf_counter()
  for _ in range(batches):
    next(loader)
  return batches * batch_size / (time.perf_counter() - start)


def close(loader: Any) -> None:
  """Stops a loader's worker processes before the next measurement starts its own."""
  closer = getattr(loader, "close", None)
  if closer is not None:
    closer()
  gc.collect()


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_common_flags(parser, steps=30, warmup=3)
  parser.set_defaults(dtype="bfloat16")
  parser.add_argument("--workers", default="0,4,8,15",
                      help="comma-separated loader worker-process counts to try")
  parser.add_argument("--threads", type=int, default=1, help="reader threads per process")
  parser.add_argument("--prefetch", type=int, default=2, help="batches transferred ahead")
  parser.add_argument("--data_dir", default="", help="default: a temp dir, removed after")
  parser.add_argument("--dataset", default="",
                      help="a prepared dataset in --data_dir (e.g. kinetics/k100); default: "
                           "generate the TF-free synthetic one")
  parser.add_argument("--split", default="train")
  parser.add_argument("--videos", type=int, default=96, help="synthetic videos")
  parser.add_argument("--frames", type=int, default=150, help="frames per synthetic video")
  return parser


def run(args: argparse.Namespace, built: dict[str, Any] | None = None) -> dict[str, Any]:
  """Runs the benchmark for parsed `args` (`built`: see `_run`); returns the JSON payload."""
  common.apply_tiny(args)
  if args.tiny:
    args.videos, args.frames = min(args.videos, 8), min(args.frames, 40)
  dtype = common.parse_dtypes(args.dtype)[0]
  try:
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
  except ValueError:
    raise SystemExit(f"--workers={args.workers!r}: use comma-separated integers, e.g. 0,4,8.")
  if args.dataset and not args.data_dir:
    raise SystemExit("--dataset needs --data_dir (where the prepared dataset lives).")
  tmp = None
  if not args.data_dir:
    tmp = tempfile.TemporaryDirectory(prefix="auxskd_e2e_")
    args.data_dir = tmp.name
  try:
    return _run(args, dtype, workers, built)
  finally:
    if tmp is not None:
      tmp.cleanup()


def _run(args: argparse.Namespace, dtype: str, workers: list[int],
         built: dict[str, Any] | None = None) -> dict[str, Any]:
  """`built`: a compiled auxSKD step (`step_throughput.compile_step`) for the frame size the
  dataset is written at, reused instead of compiling one."""
  size = common.frame_size(args)
  start = time.perf_counter()
  source = open_source(args, size)
  data_s = time.perf_counter() - start
  size = source.frame_shape
  args.frame_size = f"{size[0]},{size[1]}"
  config = common.make_config("auxskd", args, dtype)
  devices = common.bench_devices(args.devices)
  if built is None:
    built = step_throughput.compile_step("auxskd", config, devices, size)
  compiled, key, like = built["compiled"], built["key"], built["batch"]
  state = built.pop("state", None)
  holder = {"state": built["init"]() if state is None else state}
  del state

  def step(batch: dict[str, jax.Array]) -> Any:
    holder["state"], metrics = compiled(holder["state"], batch, key)
    return holder["state"], metrics

  step_ms = common.summarize_ms(common.time_calls(lambda: step(like), steps=args.steps,
                                                  warmup=args.warmup))["ms_median"]
  step_rate = args.batch / (step_ms / 1e3)
  rows = []
  for w in workers:
    loader = make_loader(source, config, w, args.threads)
    loader_alone = loader_rate(loader, args.steps, args.batch)
    close(loader)
    loader = make_loader(source, config, w, args.threads)
    batches = device_batches(loader, like, devices, args.prefetch)
    for _ in range(max(1, args.warmup)):
      jax.block_until_ready(step(next(batches)))
    t0 = time.perf_counter()
    out = None
    for _ in range(args.steps):
      out = step(next(batches))  # dispatch is asynchronous: the next batch loads meanwhile
    jax.block_until_ready(out)
    rate = args.steps * args.batch / (time.perf_counter() - t0)
    batches.close()
    close(loader)
    rows.append({"workers": w, "threads": args.threads, "e2e_pairs_per_s": rate,
                 "loader_pairs_per_s": loader_alone, "step_pairs_per_s": step_rate,
                 "step_ms_median": step_ms,
                 "input_bound": bool(rate < INPUT_BOUND_FRACTION * step_rate)})
    print(common.markdown_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
  print(common.markdown_table(rows, COLUMNS))
  payload = {"benchmark": "end_to_end", "environment": common.environment(), "args": vars(args),
             "dataset": {"name": args.dataset or synthetic_dataset.NAME, "videos": len(source),
                         "frame_size": list(size), "seconds_to_open_or_write": data_s},
             "dtype": dtype, "batch": args.batch, "compile_s": built["compile_s"], "rows": rows,
             "input_bound_rule": f"e2e < {INPUT_BOUND_FRACTION} x step alone",
             "cpu_count": os.cpu_count()}
  common.write_json(args.out, payload)
  return payload


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  return run(build_parser().parse_args(argv))


if __name__ == "__main__":
  main()
