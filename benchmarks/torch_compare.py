"""The auxSKD step in PyTorch (the reference's recipe) against the JAX step, timed in one run.

    python benchmarks/torch_compare.py --out=results/torch_compare.json
    python benchmarks/torch_compare.py --tiny --dtype=float32        # CPU smoke

PyTorch side, built from `auxskd_jax.testing.reference_torch.build_torch` (the same R(2+1)D as the
Flax model): student + predictor (Linear-BN-ReLU-Linear), EMA teacher (BN statistics from its
own training-mode forward), a queue of K normalised keys, KL between the softmaxed queue
similarities (temperatures 0.1 / 0.02), SGD (lr 0.001, momentum 0.9, wd 0.005), EMA 0.999
(foreach lerp) and enqueue. Variants: fp32 (TF32 on), bf16 autocast + channels_last_3d, and
that plus `torch.compile` of the forward/loss (CUDA only unless `--compile=on`).

The two steps differ in one way, on purpose: the PyTorch step takes ready clips (the reference
augments in its CPU loader), while the JAX step also samples and augments its clips on the
device; `jax_ms_without_sampling` subtracts that cost (make_clips alone, also measured here).
The reference's shuffled BN is a single-device no-op and is not modelled on the PyTorch side.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from typing import Any, Callable, Sequence

# Both frameworks share the GPU: JAX must not grab 75% of it before PyTorch runs.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import step_throughput  # noqa: E402

import numpy as np  # noqa: E402

VARIANTS = ("fp32", "bf16_cl3d", "bf16_cl3d_compile")
COLUMNS = ("framework", "variant", "batch", "ms_median", "items_per_s", "peak_memory_gib",
           "jax_speedup")


class TorchAuxSKD:
  """Student, predictor, EMA teacher and queue, with one `step(x_q, x_k) -> loss`."""

  def __init__(self, model: str, width: int, *, embed: int = 128, hidden: int = 1024,
               queue_size: int = 15360, momentum: float = 0.999, student_temp: float = 0.1,
               teacher_temp: float = 0.02, device: Any = "cpu", bf16: bool = False,
               channels_last: bool = False, compile_loss: bool = False, seed: int = 0):
    import torch
    from torch import nn

    from auxskd_jax.testing.reference_torch import build_torch

    torch.manual_seed(seed)
    self.torch = torch
    self.device = torch.device(device)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    self.memory_format = fmt
    self.student = build_torch(model, num_classes=embed, width=width).to(self.device,
                                                                         memory_format=fmt)
    self.predictor = nn.Sequential(nn.Linear(embed, hidden), nn.BatchNorm1d(hidden),
                                   nn.ReLU(inplace=True), nn.Linear(hidden, embed)).to(self.device)
    self.teacher = copy.deepcopy(self.student)
    for p in self.teacher.parameters():
      p.requires_grad_(False)
    self.student.train(), self.predictor.train(), self.teacher.train()
    self.queue = nn.functional.normalize(torch.randn(queue_size, embed, device=self.device), dim=1)
    self.ptr = 0
    self.momentum, self.bf16 = momentum, bf16
    self.student_temp, self.teacher_temp = student_temp, teacher_temp
    self.trainable = list(self.student.parameters()) + list(self.predictor.parameters())
    self.optimizer = torch.optim.SGD(self.trainable, lr=0.001, momentum=0.9, weight_decay=0.005)
    self.student_params = list(self.student.parameters())
    self.teacher_params = list(self.teacher.parameters())
    self.loss_fn: Callable[..., Any] = (torch.compile(self._loss) if compile_loss
                                        else self._loss)

  def _loss(self, x_q: Any, x_k: Any, queue: Any) -> tuple[Any, Any]:
    torch, F = self.torch, self.torch.nn.functional
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
      q = self.predictor(self.student(x_q))
      with torch.no_grad():
        k = self.teacher(x_k)
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1).detach()
    s_q = q @ queue.T / self.student_temp
    s_k = k @ queue.T / self.teacher_temp
    loss = F.kl_div(F.log_softmax(s_q, dim=1), F.log_softmax(s_k, dim=1), reduction="batchmean",
                    log_target=True)
    return loss, k

  def step(self, x_q: Any, x_k: Any) -> Any:
    torch = self.torch
    loss, k = self.loss_fn(x_q, x_k, self.queue)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    with torch.no_grad():
      torch._foreach_lerp_(self.teacher_params, self.student_params, 1.0 - self.momentum)
      size, count = self.queue.shape[0], k.shape[0]
      idx = (self.ptr + torch.arange(count, device=self.device)) % size
      self.queue.index_copy_(0, idx, k)
      self.ptr = (self.ptr + count) % size
    return loss

  def clips(self, batch: int, clip_len: int, crop: int, seed: int = 0) -> tuple[Any, Any]:
    """Two ready clip batches `[B, 3, T, H, W]` in the reference's 0..255 range."""
    g = self.torch.Generator().manual_seed(seed)
    shape = (batch, 3, clip_len, crop, crop)
    x = [(self.torch.rand(shape, generator=g) * 255).to(self.device).contiguous(
        memory_format=self.memory_format) for _ in range(2)]
    return x[0], x[1]


def _sync(torch: Any, device: Any) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def measure_torch(variant: str, args: argparse.Namespace, device: str) -> dict[str, Any]:
  """Times one PyTorch variant: warm-up (includes torch.compile), then `steps` synced steps."""
  import torch

  on_cuda = device.startswith("cuda")
  if on_cuda:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
  bench = TorchAuxSKD(args.model, args.width, queue_size=args.queue_size, device=device,
                      bf16=variant != "fp32", channels_last=variant != "fp32",
                      compile_loss=variant.endswith("compile"))
  x_q, x_k = bench.clips(args.batch, args.clip_len, args.crop)
  start = time.perf_counter()
  for _ in range(max(1, args.warmup)):
    loss = bench.step(x_q, x_k)
  _sync(torch, bench.device)
  warmup_s = time.perf_counter() - start
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    loss = bench.step(x_q, x_k)
    _sync(torch, bench.device)
    times.append((time.perf_counter() - start) * 1e3)
  summary = common.summarize_ms(times)
  peak = torch.cuda.max_memory_allocated() if on_cuda else None
  final = float(loss.detach().cpu())
  del bench, x_q, x_k
  if on_cuda:
    torch.cuda.empty_cache()
  return {"framework": "pytorch", "torch": torch.__version__, "variant": variant,
          "batch": args.batch, **summary, "items_per_s": args.batch / (summary["ms_median"] / 1e3),
          "peak_bytes": peak, "peak_memory_gib": peak / 2**30 if peak is not None else None,
          "warmup_s": warmup_s, "final_loss": final, "loss_finite": bool(np.isfinite(final))}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_common_flags(parser)
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help=f"PyTorch variants, of {list(VARIANTS)}")
  parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                      help="torch.compile variant: auto = only on CUDA (inductor on CPU is slow)")
  parser.add_argument("--torch_device", default="",
                      help="'cuda' or 'cpu'; default cuda when available")
  return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
  common.apply_tiny(args)
  import torch

  device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
  variants = [v.strip() for v in args.variants.split(",") if v.strip()]
  bad = [v for v in variants if v not in VARIANTS]
  if bad or not variants:
    raise SystemExit(f"--variants={args.variants!r}: choose from {list(VARIANTS)}.")
  skipped = []
  if args.compile == "off" or (args.compile == "auto" and not device.startswith("cuda")):
    skipped = [v for v in variants if v.endswith("compile")]
    variants = [v for v in variants if v not in skipped]
  dtypes = common.parse_dtypes(args.dtype)
  size = common.frame_size(args)
  devices = common.bench_devices(1)
  # PyTorch first, its cache emptied after each variant, so the JAX allocator can grow after.
  torch_rows = [measure_torch(v, args, device) for v in variants]
  jax_rows = []
  for dtype in dtypes:
    row = step_throughput.measure_step("auxskd", common.make_config("auxskd", args, dtype),
                                       devices=devices, size=size, steps=args.steps,
                                       warmup=args.warmup, peak_tflops=args.peak_tflops)
    row.update(framework="jax", variant=dtype)
    jax_rows.append(row)
  sampling = step_throughput.measure_sampling(common.make_config("auxskd", args, "float32"),
                                              devices[0], size, args.batch, steps=args.steps,
                                              warmup=args.warmup)
  jax_by_dtype = {r["dtype"]: r for r in jax_rows}
  for r in jax_rows:
    r["jax_ms_without_sampling"] = r["ms_median"] - sampling["ms_median"]
  for r in torch_rows:
    match = jax_by_dtype.get("float32" if r["variant"] == "fp32" else "bfloat16")
    if match is not None:
      r["jax_variant"] = match["dtype"]
      r["jax_speedup"] = r["ms_median"] / match["ms_median"]
      r["jax_speedup_without_sampling"] = r["ms_median"] / match["jax_ms_without_sampling"]
  rows = torch_rows + jax_rows
  print(common.markdown_table(rows, COLUMNS))
  payload = {"benchmark": "torch_compare", "environment": common.environment(),
             "torch_device": device, "args": vars(args), "skipped_variants": skipped,
             "rows": rows, "sampling": sampling,
             "note": "jax_speedup = PyTorch ms / JAX ms for the matching precision (fp32 vs "
                     "float32, bf16 variants vs bfloat16); the JAX step includes on-device "
                     "sampling + augmentation, the PyTorch step takes ready clips."}
  common.write_json(args.out, payload)
  return payload


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  return run(build_parser().parse_args(argv))


if __name__ == "__main__":
  main()
