"""Shared pieces of the GPU benchmarks: flags, paper/tiny configs, device placement, timing,
XLA cost and memory figures, and the JSON / markdown output every script writes.

Every script runs from the repo root (`python benchmarks/X.py`) on a host without TensorFlow;
nothing here imports it. `--tiny` shrinks everything to a CPU smoke run (8 frames, 32x32
crops, width 8), whose numbers say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

# H100 SXM dense bf16 tensor-core peak (the issue's figure); MFU is measured against it.
PEAK_TFLOPS = 790.0
# The issue's analytic count for one auxSKD clip pair of R(2+1)D-10 at 16x112x112: student
# forward + backward (~3 forwards) + teacher forward, multiply-adds counted as 2 FLOPs.
ISSUE_GFLOP_PER_PAIR = 170.0
DTYPES = ("bfloat16", "float32")


def add_common_flags(parser: argparse.ArgumentParser, *, steps: int = 20,
                     warmup: int = 3) -> None:
  """The flags all scripts share; `--tiny` overrides the sizes for a CPU smoke run."""
  parser.add_argument("--model", default="r21d_10", help="encoder (auxskd_jax.models.NAMES)")
  # None = the paper's value (in brackets), or the --tiny value.
  parser.add_argument("--batch", type=int, default=None,
                      help="global batch, clip pairs for auxSKD [32; tiny 4]")
  parser.add_argument("--dtype", default="bfloat16,float32",
                      help="comma-separated compute dtypes (parameters stay float32)")
  parser.add_argument("--steps", type=int, default=steps, help="timed steps (median reported)")
  parser.add_argument("--warmup", type=int, default=warmup,
                      help="untimed steps after compilation")
  parser.add_argument("--width", type=int, default=None, help="channel width [64; tiny 8]")
  parser.add_argument("--clip_len", type=int, default=None, help="frames per clip [16; tiny 8]")
  parser.add_argument("--crop", type=int, default=None, help="crop size [112; tiny 32]")
  parser.add_argument("--frame_size", default=None,
                      help="stored frame height,width [128,171; tiny 36,44]")
  parser.add_argument("--queue_size", type=int, default=None, help="auxSKD queue [15360; tiny 64]")
  parser.add_argument("--devices", type=int, default=1, help="local devices the step spans")
  parser.add_argument("--conv_lowering", default=None,
                      help="model.conv_lowering (xla, auto, ...); default: the config's")
  add_xla_cpu_flag(parser)
  parser.add_argument("--peak_tflops", type=float, default=PEAK_TFLOPS,
                      help="device peak for model FLOP utilisation (790 = H100 dense bf16)")
  parser.add_argument("--tiny", action="store_true",
                      help="CPU smoke sizes: batch 4, 8x32x32 clips, width 8, queue 64")
  parser.add_argument("--out", default="", help="write the results as JSON here")


PAPER_SIZES = dict(batch=32, width=64, clip_len=16, crop=112, frame_size="128,171",
                   queue_size=15360)
TINY_SIZES = dict(batch=4, width=8, clip_len=8, crop=32, frame_size="36,44", queue_size=64)


def apply_tiny(args: argparse.Namespace) -> argparse.Namespace:
  """Fills the sizes not given on the command line: the paper's, or with `--tiny` ones that
  compile and run in seconds on a CPU (their timings are not benchmarks)."""
  for name, value in (TINY_SIZES if args.tiny else PAPER_SIZES).items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  if args.tiny:
    args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
  set_xla_cpu_ops(args)
  return args


def add_xla_cpu_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--xla_cpu_ynnpack_ops", default=None,
                      help="xla_cpu_ynnpack_ops (op kinds XLA:CPU gives YNNPACK; '' = XLA's "
                      "default); default: the config's")
  parser.add_argument("--xla_cpu_scheduler", default=None,
                      help="xla_cpu_scheduler (memory_optimized, default, "
                      "concurrency_optimized); default: the config's")


def set_xla_cpu_ops(args: argparse.Namespace) -> None:
  """The run's XLA:CPU library choice, as a real run makes it (`runtime.apply`); it must be
  set before the first JAX computation, so scripts call it (through `apply_tiny`) first."""
  from auxskd_jax import config as config_lib
  from auxskd_jax import runtime

  try:
    runtime.set_ynnpack_ops(args.xla_cpu_ynnpack_ops)
    runtime.set_cpu_scheduler(getattr(args, "xla_cpu_scheduler", None))
  except config_lib.ConfigError as e:
    raise SystemExit(f"benchmark flags give a bad config: {e}")


def parse_dtypes(text: str) -> list[str]:
  dtypes = [d.strip() for d in text.split(",") if d.strip()]
  bad = [d for d in dtypes if d not in DTYPES]
  if bad or not dtypes:
    raise SystemExit(f"--dtype={text!r}: use a comma-separated subset of {list(DTYPES)}.")
  return dtypes


def frame_size(args: argparse.Namespace) -> tuple[int, int]:
  try:
    h, w = (int(x) for x in args.frame_size.split(","))
  except ValueError:
    raise SystemExit(f"--frame_size={args.frame_size!r}: use height,width, e.g. 128,171.")
  if h < args.crop or w < args.crop:
    raise SystemExit(f"--frame_size={args.frame_size} is smaller than --crop={args.crop}.")
  return h, w


def make_config(task: str, args: argparse.Namespace, dtype: str) -> ml_collections.ConfigDict:
  """The experiment config of `task` (auxskd, vspp, finetune) at the paper's settings, with
  the benchmark's model, batch, dtype and sizes; validated like a real run."""
  from auxskd_jax import config as config_lib
  from auxskd_jax import ops, runtime
  from auxskd_jax import defaults
  from auxskd_jax.tasks import common

  c = config_lib.base_config()
  c.task = task
  c.model.name = args.model
  c.model.width = args.width
  c.model.dtype = dtype
  if getattr(args, "conv_lowering", None):
    c.model.conv_lowering = args.conv_lowering
  if getattr(args, "xla_cpu_ynnpack_ops", None) is not None:  # as set_xla_cpu_ops applied it
    c.xla_cpu_ynnpack_ops = args.xla_cpu_ynnpack_ops
  if getattr(args, "xla_cpu_scheduler", None) is not None:
    c.xla_cpu_scheduler = args.xla_cpu_scheduler
  c.clip.clip_len = args.clip_len
  c.clip.crop_size = args.crop
  c.train.batch_size = args.batch
  c.train.init_from = ""
  c.auxskd = defaults.auxskd()
  c.auxskd.queue_size = args.queue_size
  c.finetune = defaults.finetune()
  try:
    common.check_values(c)
    ops.validate("auxskd" if task == "auxskd" else "vspp" if task == "vspp" else "clip", c)
  except config_lib.ConfigError as e:
    raise SystemExit(f"benchmark flags give a bad config: {e}")
  if args.batch % args.devices:
    raise SystemExit(f"--batch={args.batch} does not split over --devices={args.devices}.")
  runtime.apply(c)  # the PRNG a real run uses (rbg by default), before any key
  return c


def bench_devices(count: int) -> list[jax.Device]:
  devices = jax.local_devices()
  if not 1 <= count <= len(devices):
    raise SystemExit(f"--devices={count}: this host has {len(devices)} local device(s).")
  return devices[:count]


def _sharding(devices: Sequence[jax.Device]) -> jax.sharding.Sharding:
  """What pmap's outputs carry, so donated state goes in and comes out with one layout (a
  different input layout would make the second call recompile). The mesh axis must carry the
  step's pmap axis name: pmap's outputs do, and a mesh named otherwise is another layout."""
  from auxskd_jax.train.devices import AXIS

  mesh = jax.sharding.Mesh(np.asarray(devices), (AXIS,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def replicate(tree: Any, devices: Sequence[jax.Device]) -> Any:
  """One copy per device, stacked on a leading axis."""
  sharding = _sharding(devices)
  n = len(devices)
  return jax.tree.map(lambda x: jax.device_put(np.stack([np.asarray(x)] * n), sharding), tree)


def shard(batch: dict[str, np.ndarray], devices: Sequence[jax.Device]) -> dict[str, jax.Array]:
  """Host batch `[B, ...]` -> `[n_dev, B // n_dev, ...]` on the devices."""
  sharding = _sharding(devices)
  n = len(devices)
  return {k: jax.device_put(np.asarray(v).reshape((n, v.shape[0] // n) + v.shape[1:]), sharding)
          for k, v in batch.items()}


def textured_frames(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
  """uint8 frames `[..., T, H, W, 3]` that look like footage to a JPEG codec and a network:
  smooth colour blobs plus fine grain, drifting a few pixels per frame (not uniform noise,
  which compresses and normalises unlike video)."""
  *lead, t, h, w, c = shape
  n = int(np.prod(lead)) if lead else 1
  coarse = rng.uniform(0, 255, (n, 1, h // 8 + 2, w // 8 + 2, c)).astype(np.float32)
  base = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)[:, :, :h + 8, :w + 8]
  frames = np.empty((n, t, h, w, c), np.uint8)
  for i in range(t):
    dy, dx = (i * 2) % 8, (i * 3) % 8
    grain = rng.normal(0, 12, (n, h, w, c)).astype(np.float32)
    frames[:, i] = np.clip(base[:, 0, dy:dy + h, dx:dx + w] + grain, 0, 255).astype(np.uint8)
  return frames.reshape(*lead, t, h, w, c)


def reader_batch(rng: np.random.Generator, batch: int, views: int, window: int,
                 size: tuple[int, int], num_classes: int = 101,
                 textured: bool = True) -> dict[str, np.ndarray]:
  """A batch as the reader ships it (docs/DESIGN.md): windows, num_frames, label, index,
  starts, mask. `textured=False`: uniform noise frames, quicker to make (smoke tests)."""
  shape = (batch, views, window, size[0], size[1], 3)
  return {
      "windows": (textured_frames(rng, shape) if textured
                  else rng.integers(0, 256, shape, dtype=np.uint8)),
      "num_frames": np.full((batch,), 300, np.int32),
      "label": rng.integers(0, num_classes, (batch,)).astype(np.int32),
      "index": np.arange(batch, dtype=np.int32),
      "starts": np.zeros((batch, views), np.int32),
      "mask": np.ones((batch,), bool),
  }


def time_calls(call: Callable[[], Any], *, steps: int, warmup: int) -> list[float]:
  """Milliseconds of each of `steps` calls after `warmup` untimed ones; each call's outputs
  are waited for (block_until_ready) before the clock stops."""
  for _ in range(warmup):
    jax.block_until_ready(call())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append((time.perf_counter() - start) * 1e3)
  return times


def summarize_ms(times: Sequence[float]) -> dict[str, float]:
  ordered = sorted(times)
  return {"ms_median": statistics.median(ordered), "ms_min": ordered[0], "ms_max": ordered[-1],
          "timed_steps": len(ordered)}


def compiled_flops(compiled: Any) -> float | None:
  """FLOPs of one call of a compiled (or lowered) step, from XLA's cost analysis (per device;
  a list of dicts on older jax, a dict on newer). None where the backend gives none."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # some backends do not implement it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def compiled_memory(compiled: Any) -> int | None:
  """Bytes XLA plans for one call (arguments + outputs + temporaries - donated aliases)."""
  try:
    m = compiled.memory_analysis()
  except Exception:
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def peak_device_memory(device: jax.Device) -> int | None:
  """The device's peak bytes in use since the process started (None on CPU)."""
  try:
    stats = device.memory_stats()
  except Exception:
    return None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def environment() -> dict[str, Any]:
  device = jax.local_devices()[0]
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "host": platform.node(), "platform": device.platform,
      "device_kind": getattr(device, "device_kind", str(device)),
      "local_devices": jax.local_device_count(), "jax": jax.__version__,
      "python": platform.python_version(),
      "prng_impl": str(jax.config.jax_default_prng_impl),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "cpu": _cpu_model(),
  }


def _cpu_model() -> str:
  """The host CPU's model name (lscpu's), since CPU timings differ by machine."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
  def fmt(v: Any) -> str:
    if v is None:
      return "n/a"
    if isinstance(v, float):
      return f"{v:.4g}"
    return str(v)

  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def write_json(path: str, payload: dict[str, Any]) -> None:
  if not path:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=str)
  print(f"wrote {path}")
