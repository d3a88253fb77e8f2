"""The six-minute GPU check behind `device_check.sh`: every figure the GPU section of
BENCHMARKS.md needs, from two processes (one per framework) and a summary.

    python benchmarks/device_check.py jax OUT [--tiny]     # JAX parts -> OUT/jax.json
    python benchmarks/device_check.py torch OUT [--tiny]   # PyTorch parts -> OUT/torch.json
    python benchmarks/device_check.py summary OUT          # -> OUT/summary.md (+ OUT/check.json)

JAX parts, in order, each with a time budget (seconds on one H100/H200; a part past its budget
stops at its next checkpoint and says so), each failure recorded in the JSON without stopping
the others:
  step        the auxSKD step at the paper's shape (R(2+1)D-10, 32 pairs, 16x112x112, queue
              15360) in bf16 then float32: ms, pairs/s, peak memory, XLA FLOPs and MFU
              (`step_throughput.measure_step`), compiled once and reused by the parts below;
  sampling    make_clips alone, as a share of each step (`step_throughput.measure_sampling`);
  loss_check  bf16 vs float32 losses from one init over up to 300 steps (`bf16_vs_f32`);
  end_to_end  the real grain loader on a TF-free synthetic JPEG dataset on the host's cores
              feeding the compiled bf16 step (`end_to_end`);
  smoke       every method's step (methods/*.py, from its shipped config) in bf16 and float32
              through plain `jax.pmap`, as training calls it: finite losses, and the compiles
              of calls 2-3 counted (must be 0), compiled in parallel threads.
PyTorch part: `torch_compare.measure_torch` for fp32 (TF32), bf16 + channels_last_3d and that
plus torch.compile (CUDA only), at the same shape; "skipped" where torch is missing.

`--tiny`: the same code at tiny shapes on the CPU in well under a minute (the CPU suite runs
it, so the script cannot rot); its numbers measure nothing.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import glob
import importlib
import json
import math
import os
import sys
import threading
import time
import traceback
from typing import Any, Iterator, Sequence

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)

# Seconds per part on one H100/H200 (6 minutes in all with the PyTorch process and start-up:
# see device_check.sh). A tiny run gets generous ones: it must finish every part.
BUDGETS = {"step": 75, "sampling": 10, "loss_check": 40, "end_to_end": 45, "smoke": 60,
           "torch": 95}
TINY_BUDGET = 900  # a tiny run must finish every part, however loaded the CPU
JAX_PARTS = ("step", "sampling", "loss_check", "end_to_end", "smoke")
TORCH_VARIANTS = ("fp32", "bf16_cl3d", "bf16_cl3d_compile")
LOSS_CHECK_STEPS = 300
LOSS_CHECK_BATCHES = 2  # distinct paper-shape batches (~3 s each to make)
# Sizes of the smoke steps: each method's own encoder and width (R(2+1)D-10, 64) on small
# clips, so compilation and autotuning, not the paper's shapes, set the part's time.
SMOKE = dict(batch=8, frame_size=(64, 80), width=None, clip_len=8, crop=56, model=None)
TINY_SMOKE = dict(batch=4, frame_size=(20, 24), width=4, clip_len=8, crop=16, model="r3d_10")
# A tiny run compiles and runs one method's step (each costs two fresh compiles, model init and
# step, 10-45 s on a loaded 2-core CPU); the others' configs are built and validated only.
TINY_SMOKE_RUN = (("vspp", "float32"),)
# The paper-shape step flags; `--tiny` replaces them with common.TINY_SIZES and R3D-10.
TINY_FLAGS = ["--tiny", "--model=r3d_10"]
E2E = dict(workers="8,15", steps=15, warmup=2, videos=48, frames=100)
TINY_E2E = dict(workers="0", steps=2, warmup=1, videos=4, frames=24)
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
CACHE_HIT = "/jax/compilation_cache/cache_hits"


# ----------------------------------------------------------------------------- recording

class Recorder:
  """One JSON file of parts, rewritten after every change so a killed process keeps what it
  finished. Each part: status (ok / error / budget / skipped), seconds, budget_s, its figures,
  and on error the exception's last lines."""

  def __init__(self, path: str, payload: dict[str, Any]):
    self.path = path
    self.payload = payload
    self.payload.setdefault("parts", {})
    self.write()

  def write(self) -> None:
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self.payload, f, indent=2, sort_keys=True, default=_jsonable)
    os.replace(tmp, self.path)

  @contextlib.contextmanager
  def part(self, name: str, budget_s: float, deadline: float) -> Iterator[dict[str, Any]]:
    """Records part `name`; `part['deadline']` is when it must stop (perf_counter seconds)."""
    start = time.perf_counter()
    entry: dict[str, Any] = {"status": "running", "budget_s": budget_s}
    self.payload["parts"][name] = entry
    self.write()
    entry["deadline"] = min(deadline, start + budget_s)
    try:
      yield entry
      if entry["status"] == "running":
        entry["status"] = "ok"
    except Exception as e:  # one part's failure must not stop the others
      entry["status"] = "error"
      entry["error"] = f"{type(e).__name__}: {e}"
      entry["traceback"] = traceback.format_exc().splitlines()[-12:]
      print(f"[device_check] part {name} failed: {entry['error']}", flush=True)
    finally:
      entry.pop("deadline", None)
      entry["seconds"] = time.perf_counter() - start
      print(f"[device_check] part {name}: {entry['status']} in {entry['seconds']:.1f}s",
            flush=True)
      self.write()


def _jsonable(v: Any) -> Any:
  try:
    import numpy as np

    if isinstance(v, np.generic):
      return v.item()
  except ImportError:
    pass
  return str(v)


def third_party_modules() -> list[str]:
  """Top-level names of the loaded modules that are neither stdlib nor this repo's (what the
  GPU host must have installed; tests/test_benchmarks_smoke.py checks device_wheels.sh)."""
  names = set()
  for name, module in list(sys.modules.items()):
    top = name.split(".")[0]
    path = getattr(module, "__file__", None) or ""
    if (top in sys.stdlib_module_names or top.startswith("_") or not path
        or os.path.abspath(path).startswith(REPO + os.sep)):
      continue
    names.add(top)
  return sorted(names)


def repo_modules() -> list[str]:
  """This repo's loaded modules, as files relative to the repo root."""
  out = set()
  for module in list(sys.modules.values()):
    path = os.path.abspath(getattr(module, "__file__", None) or "")
    if path.startswith(REPO + os.sep) and path.endswith(".py"):
      out.add(os.path.relpath(path, REPO))
  return sorted(out)


def block_tensorflow() -> None:
  """The GPU host has no TensorFlow: make any import of it fail here too."""
  for name in ("tensorflow", "tensorflow_datasets"):
    sys.modules[name] = None  # type: ignore[assignment]


# ----------------------------------------------------------------------------- JAX parts

class CompileCounter:
  """Counts XLA compilations (backend compiles and persistent-cache loads) per thread."""

  def __init__(self) -> None:
    import jax

    self.counts: collections.Counter = collections.Counter()
    self.totals: collections.Counter = collections.Counter()
    jax.monitoring.register_event_duration_secs_listener(self._on_duration)
    jax.monitoring.register_event_listener(self._on_event)

  def _on_duration(self, event: str, duration: float, **kwargs: Any) -> None:
    if event == BACKEND_COMPILE:
      self.counts[threading.get_ident()] += 1
      self.totals["backend_compiles"] += 1
      self.totals["backend_compile_s"] += duration

  def _on_event(self, event: str, **kwargs: Any) -> None:
    if event == CACHE_HIT:
      self.counts[threading.get_ident()] += 1
      self.totals["persistent_cache_hits"] += 1

  def here(self) -> int:
    return self.counts[threading.get_ident()]


def step_args(tiny: bool, extra: Sequence[str] = ()) -> argparse.Namespace:
  """The shared benchmark flags at the paper's shape (or tiny ones), one device."""
  import common

  parser = argparse.ArgumentParser()
  common.add_common_flags(parser)
  args = parser.parse_args((TINY_FLAGS if tiny else []) + list(extra))
  return common.apply_tiny(args)


def part_step(entry: dict[str, Any], tiny: bool, devices: Sequence[Any],
              built: dict[str, dict[str, Any]]) -> None:
  """The paper-shape auxSKD step, bf16 first (a JAX process's peak memory only grows, so the
  float32 peak after it is float32's own when float32 needs more)."""
  import common
  import step_throughput

  args = step_args(tiny)
  size = common.frame_size(args)
  entry.update(shape={k: getattr(args, k) for k in
                      ("model", "batch", "width", "clip_len", "crop", "frame_size",
                       "queue_size")}, rows=[])
  for dtype in ("bfloat16", "float32"):
    if time.perf_counter() > entry["deadline"]:
      entry["status"] = "budget"
      entry.setdefault("not_run", []).append(dtype)
      continue
    config = common.make_config("auxskd", args, dtype)
    built[dtype] = step_throughput.compile_step("auxskd", config, devices, size)
    built[dtype]["config"] = config
    row = step_throughput.measure_step("auxskd", config, devices=devices, size=size,
                                       steps=args.steps, warmup=args.warmup,
                                       peak_tflops=args.peak_tflops, built=built[dtype])
    row["compile_s"] = built[dtype]["compile_s"]
    entry["rows"].append(row)


def part_sampling(entry: dict[str, Any], tiny: bool, devices: Sequence[Any],
                  step_rows: Sequence[dict[str, Any]]) -> None:
  import common
  import step_throughput

  args = step_args(tiny)
  sampling = step_throughput.measure_sampling(
      common.make_config("auxskd", args, "float32"), devices[0], common.frame_size(args),
      args.batch, steps=args.steps, warmup=args.warmup)
  sampling["share_of_auxskd_step"] = {r["dtype"]: sampling["ms_median"] / r["ms_median"]
                                      for r in step_rows}
  entry.update(sampling)


def part_loss_check(entry: dict[str, Any], tiny: bool, devices: Sequence[Any],
                    built: dict[str, dict[str, Any]], step_rows: Sequence[dict[str, Any]]) -> None:
  """bf16 vs float32 from one init; as many steps (up to 300) as the budget's time allows at
  the measured step times."""
  import bf16_vs_f32
  import common

  parser = bf16_vs_f32.build_parser()
  args = parser.parse_args((TINY_FLAGS + ["--steps=3", "--batches=2"]) if tiny else
                           [f"--batches={LOSS_CHECK_BATCHES}"])
  common.apply_tiny(args)
  if set(built) != {"bfloat16", "float32"}:
    raise RuntimeError("the step part compiled no bf16 and float32 steps to reuse")
  size = common.frame_size(args)
  batches = bf16_vs_f32.make_batches(args, size, devices)
  per_step = sum(r["ms_median"] for r in step_rows) / 1e3
  left = entry["deadline"] - time.perf_counter()
  steps = 3 if tiny else max(1, min(LOSS_CHECK_STEPS, int(0.8 * left / per_step)))
  args.steps = steps
  curves = {}
  for dtype in ("float32", "bfloat16"):
    curves[dtype] = bf16_vs_f32.run_curve(dtype, args, size, devices, built=built[dtype],
                                          batches=batches)
  entry.update(bf16_vs_f32.compare(curves["float32"][0], curves["bfloat16"][0],
                                   curves["float32"][1], curves["bfloat16"][1], args.tolerance))
  entry["steps_wanted"] = LOSS_CHECK_STEPS if not tiny else 3
  entry["learning_rate"] = float(built["float32"]["config"].optim.learning_rate)


def part_end_to_end(entry: dict[str, Any], tiny: bool,
                    built: dict[str, dict[str, Any]]) -> None:
  """The real loader (grain, array_record, JPEG decode) on the host's cores, feeding the
  compiled bf16 step; the dataset is written without TensorFlow (`synthetic_dataset`)."""
  import end_to_end

  if "bfloat16" not in built:
    raise RuntimeError("the step part compiled no bf16 step to reuse")
  e2e = TINY_E2E if tiny else E2E
  cores = os.cpu_count() or 1
  workers = ",".join(str(min(int(w), max(1, cores - 1))) if int(w) else "0"
                     for w in e2e["workers"].split(","))
  flags = (TINY_FLAGS if tiny else []) + [
      "--dtype=bfloat16", f"--workers={workers}", f"--steps={e2e['steps']}",
      f"--warmup={e2e['warmup']}", f"--videos={e2e['videos']}", f"--frames={e2e['frames']}"]
  # No --data_dir: a temporary one, removed after (~40 MB of JPEGs stay out of OUT).
  args = end_to_end.build_parser().parse_args(flags)
  payload = end_to_end.run(args, built=built["bfloat16"])
  entry.update({k: payload[k] for k in ("rows", "dataset", "batch", "cpu_count",
                                        "input_bound_rule")})
  from auxskd_jax.data import jpeg

  entry["jpeg_decoder"] = "simplejpeg" if jpeg.simplejpeg else "Pillow"


def method_names() -> list[str]:
  """Every method file (methods/*.py defining one Method), as the pretrain task finds them."""
  from auxskd_jax.tasks import pretrain

  names = []
  for path in sorted(glob.glob(os.path.join(REPO, "auxskd_jax", "methods", "*.py"))):
    name = os.path.splitext(os.path.basename(path))[0]
    if not name.startswith("_") and pretrain.method_class(name) is not None:
      names.append(name)
  return names


def smoke_config(name: str, dtype: str, tiny: bool) -> Any:
  """The method's shipped config (configs/<name>_*.py) at the smoke sizes."""
  (path,) = sorted(glob.glob(os.path.join(REPO, "configs", f"{name}_*.py")))[:1]
  module = importlib.import_module(f"configs.{os.path.splitext(os.path.basename(path))[0]}")
  config = module.get_config()
  config.model.dtype = dtype
  config.train.init_from = ""
  sizes = TINY_SMOKE if tiny else SMOKE
  config.train.batch_size = min(int(config.train.batch_size), sizes["batch"])
  config.model.name = sizes["model"] or config.model.name
  config.model.width = sizes["width"] or config.model.width
  config.clip.clip_len, config.clip.crop_size = sizes["clip_len"], sizes["crop"]
  for section in ("auxskd", "rspnet"):
    if section in config and "queue_size" in config[section]:
      config[section].queue_size = min(int(config[section].queue_size), 64 if tiny else 1024)
  return config


def smoke_one(name: str, dtype: str, tiny: bool, devices: Sequence[Any],
              counter: CompileCounter) -> dict[str, Any]:
  """Three calls of the method's pmapped step as `train.loop` makes them; the compiles of
  calls 2-3 are recompiles."""
  import common
  import jax
  import numpy as np

  from auxskd_jax import ops
  from auxskd_jax.tasks import pretrain
  from auxskd_jax.train import optim
  from auxskd_jax.train import step as step_lib

  config = smoke_config(name, dtype, tiny)
  cls = pretrain.method_class(name)
  cls.validate(config)
  method = cls(config, 101) if name == "finetune" else cls(config)
  tx, schedule = optim.make_optimizer(config, 1000, 100_000)
  state = method.init_state(config, jax.random.PRNGKey(0), tx, 1000)
  state = common.replicate(state, devices)
  size = (TINY_SMOKE if tiny else SMOKE)["frame_size"]
  recipe = method.recipe
  batch = common.shard(common.reader_batch(
      np.random.default_rng(0), int(config.train.batch_size), ops.num_views(recipe, config),
      ops.window_len(recipe, config), size, textured=False), devices)
  key = common.replicate(jax.random.PRNGKey(1), devices)
  p_step = jax.pmap(method.make_step(schedule), axis_name=step_lib.AXIS, devices=devices,
                    donate_argnums=(0,))
  before = counter.here()
  start = time.perf_counter()
  state, metrics = p_step(state, batch, key)
  losses = [metrics["loss"]]
  jax.block_until_ready(state)
  first_s = time.perf_counter() - start
  first = counter.here() - before
  start = time.perf_counter()
  for _ in range(2):
    state, metrics = p_step(state, batch, key)
    losses.append(metrics["loss"])
  jax.block_until_ready(state)
  later_ms = (time.perf_counter() - start) / 2 * 1e3
  losses = [float(np.asarray(l)[0]) for l in jax.device_get(losses)]
  return {"method": name, "dtype": dtype, "status": "ok", "batch": int(config.train.batch_size),
          "model": config.model.name, "clip_len": int(config.clip.clip_len),
          "crop": int(config.clip.crop_size), "losses": losses,
          "loss_finite": bool(np.all(np.isfinite(losses))), "compiles_first_call": first,
          "recompiles": counter.here() - before - first, "first_call_s": first_s,
          "ms_per_later_call": later_ms}


def part_smoke(entry: dict[str, Any], tiny: bool, devices: Sequence[Any],
               counter: CompileCounter) -> None:
  """All methods x both dtypes, compiled in parallel threads (XLA compiles without the GIL),
  collected until the part's deadline."""
  from auxskd_jax.tasks import pretrain

  jobs = [(m, d) for m in method_names() for d in ("bfloat16", "float32")]
  results: dict[tuple[str, str], dict[str, Any]] = {}
  run = [j for j in jobs if not tiny or j in TINY_SMOKE_RUN]
  for m, d in jobs:
    if (m, d) not in run:  # tiny: the config is still built and validated
      pretrain.method_class(m).validate(smoke_config(m, d, tiny))
      results[(m, d)] = {"method": m, "dtype": d, "status": "validated only (tiny)"}
  threads = 1 if tiny else max(1, min(len(run), (os.cpu_count() or 2) // 2, 6))
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads)
  futures = {pool.submit(smoke_one, m, d, tiny, devices, counter): (m, d) for m, d in run}
  try:
    for f in concurrent.futures.as_completed(
        futures, timeout=max(1.0, entry["deadline"] - time.perf_counter())):
      m, d = futures[f]
      try:
        results[(m, d)] = f.result()
      except Exception as e:
        results[(m, d)] = {"method": m, "dtype": d, "status": "error",
                           "error": f"{type(e).__name__}: {e}"}
  except concurrent.futures.TimeoutError:
    entry["status"] = "budget"
  pool.shutdown(wait=False, cancel_futures=True)
  rows = [results.get(j, {"method": j[0], "dtype": j[1], "status": "budget"}) for j in jobs]
  entry.update(rows=rows, threads=threads, methods=sorted({m for m, _ in jobs}))
  entry["all_ok"] = all(r["status"] == "ok" and r["loss_finite"] and r["recompiles"] == 0
                        for r in rows if (r["method"], r["dtype"]) in run)
  if entry["status"] == "running" and not entry["all_ok"]:
    entry["status"] = "error"
    entry["error"] = "a method's step failed, gave a non-finite loss or recompiled (see rows)"


def run_jax(args: argparse.Namespace) -> None:
  """All JAX parts in this one process, in order; see the module docstring."""
  if args.block_tensorflow:
    block_tensorflow()
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  sys.path[:0] = [BENCH, REPO]
  start = time.perf_counter()
  deadline = start + args.budget
  import common  # noqa: F401  (jax, ml_collections; the repo on sys.path)
  import jax

  rec = Recorder(os.path.join(args.out, "jax.json"),
                 {"framework": "jax", "tiny": args.tiny, "environment": common.environment(),
                  "budget_s": args.budget, "budgets": _budgets(args.tiny)})
  counter = CompileCounter()
  devices = common.bench_devices(1)
  budgets = _budgets(args.tiny)
  built: dict[str, dict[str, Any]] = {}
  rows: list[dict[str, Any]] = []
  with rec.part("step", budgets["step"], deadline) as entry:
    part_step(entry, args.tiny, devices, built)
    rows = entry["rows"]
  with rec.part("sampling", budgets["sampling"], deadline) as entry:
    part_sampling(entry, args.tiny, devices, rows)
  with rec.part("loss_check", budgets["loss_check"], deadline) as entry:
    part_loss_check(entry, args.tiny, devices, built, rows)
  with rec.part("end_to_end", budgets["end_to_end"], deadline) as entry:
    part_end_to_end(entry, args.tiny, built)
  built.clear()
  with rec.part("smoke", budgets["smoke"], deadline) as entry:
    part_smoke(entry, args.tiny, devices, counter)
  rec.payload["compile_totals"] = dict(counter.totals)
  rec.payload["compilation_cache_dir"] = jax.config.jax_compilation_cache_dir
  rec.payload["peak_bytes_in_use"] = common.peak_device_memory(devices[0])
  rec.payload["third_party_modules"] = third_party_modules()
  rec.payload["repo_modules"] = repo_modules()
  rec.payload["seconds"] = time.perf_counter() - start
  rec.payload["jax_version"] = jax.__version__
  rec.write()


def _budgets(tiny: bool) -> dict[str, float]:
  return {k: (TINY_BUDGET if tiny else v) for k, v in BUDGETS.items()}


# ----------------------------------------------------------------------------- PyTorch part

def run_torch(args: argparse.Namespace) -> None:
  """The PyTorch variants in this one process (no JAX device is touched here)."""
  if args.block_tensorflow:
    block_tensorflow()
  sys.path[:0] = [BENCH, REPO]
  start = time.perf_counter()
  deadline = start + args.budget
  rec = Recorder(os.path.join(args.out, "torch.json"), {"framework": "pytorch",
                                                        "tiny": args.tiny})
  budget = _budgets(args.tiny)["torch"]
  with rec.part("torch", budget, deadline) as entry:
    try:
      import torch
    except ImportError as e:
      entry.update(status="skipped", reason=f"torch is not installed ({e})")
      return
    import torch_compare

    targs = torch_compare.build_parser().parse_args(TINY_FLAGS if args.tiny else [])
    import common

    common.apply_tiny(targs)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    entry.update(torch=torch.__version__, device=device, rows=[],
                 device_name=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                 shape={k: getattr(targs, k) for k in ("model", "batch", "width", "clip_len",
                                                        "crop", "queue_size")})
    for variant in TORCH_VARIANTS:
      if variant.endswith("compile") and device != "cuda":
        entry["rows"].append({"variant": variant, "status": "skipped",
                              "reason": "torch.compile is timed on CUDA only"})
        continue
      if time.perf_counter() > entry["deadline"]:
        entry["rows"].append({"variant": variant, "status": "budget"})
        entry["status"] = "budget"
        continue
      try:
        row = torch_compare.measure_torch(variant, targs, device)
        row["status"] = "ok"
      except Exception as e:  # e.g. torch.compile failing on this host: keep the others
        row = {"variant": variant, "status": "error", "error": f"{type(e).__name__}: {e}"}
      entry["rows"].append(row)
      rec.write()
  rec.payload["third_party_modules"] = third_party_modules()
  rec.payload["repo_modules"] = repo_modules()
  rec.payload["seconds"] = time.perf_counter() - start
  rec.write()


# ----------------------------------------------------------------------------- summary

def _load(path: str) -> dict[str, Any] | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _f(v: Any, spec: str = ".4g") -> str:
  if v is None or (isinstance(v, float) and not math.isfinite(v)):
    return "n/a" if v is None else str(v)
  return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def summarize(out: str) -> tuple[str, dict[str, Any]]:
  """summary.md's text and check.json's content: every part's status (parts of a process that
  was killed or never ran are marked so), and the figures."""
  jx = _load(os.path.join(out, "jax.json")) or {"parts": {}}
  th = _load(os.path.join(out, "torch.json")) or {"parts": {}}
  status = {}
  for name in JAX_PARTS:
    status[name] = jx["parts"].get(name, {}).get("status", "missing")
  status["torch"] = th["parts"].get("torch", {}).get("status", "missing")
  rcs = {}
  for proc in ("jax", "torch"):
    try:
      with open(os.path.join(out, f"rc_{proc}.txt")) as f:
        rcs[proc] = int(f.read().strip() or -1)
    except (OSError, ValueError):
      rcs[proc] = None
  env = jx.get("environment", {})
  lines = [f"# Device check ({'tiny, CPU: measures nothing' if jx.get('tiny') else 'full'})", "",
           f"Device: {env.get('device_kind')} ({env.get('platform')}), jax {env.get('jax')}, "
           f"python {env.get('python')}, date {env.get('date')}; torch "
           f"{th['parts'].get('torch', {}).get('torch', 'n/a')}. Process exit codes: {rcs} "
           "(124 = killed at its time limit).", "",
           "| part | status | seconds | budget s |", "|---|---|---|---|"]
  for name in JAX_PARTS + ("torch",):
    p = (th if name == "torch" else jx)["parts"].get(name, {})
    lines.append(f"| {name} | {status[name]} | {_f(p.get('seconds'), '.1f')} | "
                 f"{_f(p.get('budget_s'))} |")
    if p.get("error"):
      lines.append(f"|  | {p['error'][:300]} | | |")

  step = jx["parts"].get("step", {})
  jrows = step.get("rows", [])
  flops_by = {r["dtype"]: r.get("flops_per_step_xla") for r in jrows}
  peak_tflops = jrows[0].get("peak_tflops") if jrows else None
  trows = [r for r in th["parts"].get("torch", {}).get("rows", []) if r.get("status") == "ok"]
  table = []
  for r in jrows:
    table.append({"framework": "jax", "variant": r["dtype"], "ms": r["ms_median"],
                  "pairs_s": r["items_per_s"], "peak_gib": r.get("peak_memory_gib"),
                  "mfu": r.get("mfu"), "loss_finite": r.get("loss_finite")})
  for r in trows:
    flops = flops_by.get("float32" if r["variant"] == "fp32" else "bfloat16") or next(
        (v for v in flops_by.values() if v), None)
    mfu = (flops / (r["ms_median"] / 1e3) / (peak_tflops * 1e12)
           if flops and peak_tflops else None)
    table.append({"framework": "pytorch", "variant": r["variant"], "ms": r["ms_median"],
                  "pairs_s": r["items_per_s"], "peak_gib": r.get("peak_memory_gib"),
                  "mfu": mfu, "loss_finite": r.get("loss_finite")})
  fastest_torch = max((r["pairs_s"] for r in table if r["framework"] == "pytorch"), default=None)
  for r in table:
    r["vs_fastest_pytorch"] = r["pairs_s"] / fastest_torch if fastest_torch else None
  shape = step.get("shape", {})
  lines += ["", f"## auxSKD step, {shape}", "",
            "MFU: XLA's FLOP count of the JAX step of the same precision, per second, against "
            f"{_f(peak_tflops)} TFLOP/s (PyTorch rows use the JAX count).", "",
            "| framework | variant | ms/step | pairs/s | peak GiB | MFU | x fastest PyTorch | "
            "loss finite |", "|---|---|---|---|---|---|---|---|"]
  for r in table:
    lines.append(f"| {r['framework']} | {r['variant']} | {_f(r['ms'])} | {_f(r['pairs_s'])} | "
                 f"{_f(r['peak_gib'])} | {_f(r['mfu'], '.1%') if r['mfu'] else 'n/a'} | "
                 f"{_f(r['vs_fastest_pytorch'], '.2f')} | {r['loss_finite']} |")
  for r in th["parts"].get("torch", {}).get("rows", []):
    if r.get("status") != "ok":
      lines.append(f"| pytorch | {r['variant']} | {r['status']}: "
                   f"{r.get('error') or r.get('reason', '')} | | | | | |")

  s = jx["parts"].get("sampling", {})
  if s.get("ms_median") is not None:
    shares = ", ".join(f"{d} {v:.1%}" for d, v in s.get("share_of_auxskd_step", {}).items())
    lines += ["", f"On-device sampling (make_clips, {s['pairs']} pairs): {_f(s['ms_median'])} "
              f"ms; share of the step: {shares} (target < 5%)."]
  lc = jx["parts"].get("loss_check", {})
  if lc.get("max_relative_gap") is not None:
    lines += ["", f"bf16 vs float32 over {lc['steps']} steps (lr {lc.get('learning_rate')}): max "
              f"relative loss gap {lc['max_relative_gap']:.2%} at step {lc['max_gap_step']}, mean "
              f"{lc['mean_relative_gap']:.2%}; same init {lc['same_init']}; within "
              f"{lc['tolerance']:.0%}: {lc['within_tolerance']}; final losses "
              f"{_f(lc['loss_float32'][-1])} / {_f(lc['loss_bfloat16'][-1])}."]
  e2e = jx["parts"].get("end_to_end", {})
  if e2e.get("rows"):
    lines += ["", f"## End to end ({e2e.get('cpu_count')} host cores, "
              f"{e2e.get('jpeg_decoder')} JPEG decoder, bf16 step, "
              f"{e2e.get('dataset', {}).get('videos')} synthetic videos)", "",
              "| workers | end-to-end pairs/s | loader alone | step alone | input-bound |",
              "|---|---|---|---|---|"]
    for r in e2e["rows"]:
      lines.append(f"| {r['workers']} | {_f(r['e2e_pairs_per_s'])} | "
                   f"{_f(r['loader_pairs_per_s'])} | {_f(r['step_pairs_per_s'])} | "
                   f"{r['input_bound']} |")
  sm = jx["parts"].get("smoke", {})
  if sm.get("rows"):
    lines += ["", f"## Smoke: every method's step ({sm.get('threads')} compile threads)", "",
              "| method | dtype | status | losses | compiles (call 1) | recompiles (2-3) | "
              "first call s |", "|---|---|---|---|---|---|---|"]
    for r in sm["rows"]:
      losses = ", ".join(_f(x) for x in r.get("losses", []))
      lines.append(f"| {r['method']} | {r['dtype']} | {r['status']} "
                   f"{r.get('error', '')[:200]} | {losses} | {_f(r.get('compiles_first_call'))} | "
                   f"{_f(r.get('recompiles'))} | {_f(r.get('first_call_s'), '.1f')} |")
  check = {"status": status, "exit_codes": rcs, "table": table,
           "all_ok": all(v in ("ok", "skipped") for v in status.values())}
  return "\n".join(lines) + "\n", check


def run_summary(args: argparse.Namespace) -> None:
  text, check = summarize(args.out)
  with open(os.path.join(args.out, "summary.md"), "w") as f:
    f.write(text)
  with open(os.path.join(args.out, "check.json"), "w") as f:
    json.dump(check, f, indent=2, sort_keys=True, default=_jsonable)
  print(text)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("what", choices=("jax", "torch", "summary"))
  parser.add_argument("out", help="the results folder")
  parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU")
  parser.add_argument("--budget", type=float, default=None,
                      help="seconds this process may take in all (default: the parts' sum)")
  parser.add_argument("--block_tensorflow", action="store_true",
                      help="fail any TensorFlow import, as on the GPU host")
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  if args.budget is None:
    budgets = _budgets(args.tiny)
    args.budget = (budgets["torch"] if args.what == "torch" else
                   sum(budgets[p] for p in JAX_PARTS))
  if args.what == "jax":
    run_jax(args)
  elif args.what == "torch":
    run_torch(args)
  else:
    run_summary(args)
    return
  sys.stdout.flush()
  sys.stderr.flush()
  # Loader workers or a smoke compile past its budget must not hold the process open.
  os._exit(0)


if __name__ == "__main__":
  main()
