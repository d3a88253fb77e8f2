"""Our training steps against the same steps in PyTorch (the references' recipes), timed in one run.

    python benchmarks/torch_compare.py --out=results/torch_compare.json
    python benchmarks/torch_compare.py --task=auxskd,vspp,finetune --dtype=float32
    python benchmarks/torch_compare.py --tiny --dtype=float32        # CPU smoke

PyTorch side, built from `auxskd_jax.testing.reference_torch.build_torch` (the same R(2+1)D as the
Flax model):
- auxskd: student + predictor (Linear-BN-ReLU-Linear), EMA teacher (BN statistics from its own
  training-mode forward), a queue of K normalised keys, KL between the softmaxed queue
  similarities (temperatures 0.1 / 0.02), SGD (lr 0.001, momentum 0.9, wd 0.005), EMA 0.999
  (foreach lerp) and enqueue.
- vspp: the network with its two heads (speed, segment), the sum of their cross-entropies,
  SGD (the authors' VSPP/train.py step).
- finetune: the network with a 101-way head, cross-entropy, SGD.
Variants: fp32 (TF32 on), bf16 autocast + channels_last_3d, and that plus `torch.compile` of
the forward/loss (CUDA only unless `--compile=on`).

The steps differ in one way, on purpose: the PyTorch steps take ready clips (the references
sample and augment in their CPU loaders), while ours also sample and augment (and, for VSPP,
draw the labels) on the device; `jax_ms_without_sampling` subtracts that cost (each task's
make_clips alone, also measured here: `sampling` in the JSON, by task). The reference's
shuffled BN is a single-device no-op and is not modelled on the PyTorch side.
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
COLUMNS = ("task", "framework", "variant", "batch", "ms_median", "items_per_s",
           "peak_memory_gib", "jax_speedup")


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
    return (ready_clips(self, g, batch, clip_len, crop),
            ready_clips(self, g, batch, clip_len, crop))


def ready_clips(bench: Any, g: Any, batch: int, clip_len: int, crop: int) -> Any:
  """A clip batch `[B, 3, T, H, W]` of 0..255 values drawn from `g`, on `bench`'s device and
  in its memory format."""
  torch = bench.torch
  return (torch.rand((batch, 3, clip_len, crop, crop), generator=g) * 255).to(
      bench.device).contiguous(memory_format=bench.memory_format)


class TorchClassifier:
  """The network with classification heads, the sum of their cross-entropies and SGD: the
  VSPP step (heads speed + segment) and the fine-tuning step (one head), as `step(x, labels)`."""

  def __init__(self, model: str, width: int, heads: dict[str, int], *, device: Any = "cpu",
               bf16: bool = False, channels_last: bool = False, compile_loss: bool = False,
               lr: float = 0.001, weight_decay: float = 0.005, seed: int = 0):
    import torch

    from auxskd_jax.testing.reference_torch import build_torch

    torch.manual_seed(seed)
    self.torch, self.device, self.bf16, self.heads = torch, torch.device(device), bf16, heads
    self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    self.net = build_torch(model, heads=heads, width=width).to(
        self.device, memory_format=self.memory_format)
    self.net.train()
    self.optimizer = torch.optim.SGD(self.net.parameters(), lr=lr, momentum=0.9,
                                     weight_decay=weight_decay)
    self.loss_fn: Callable[..., Any] = (torch.compile(self._loss) if compile_loss
                                        else self._loss)

  def _loss(self, x: Any, labels: dict[str, Any]) -> Any:
    torch, F = self.torch, self.torch.nn.functional
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
      out = self.net(x)
    return sum(F.cross_entropy(out[name].float(), labels[name]) for name in self.heads)

  def step(self, x: Any, labels: dict[str, Any]) -> Any:
    loss = self.loss_fn(x, labels)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return loss

  def inputs(self, batch: int, clip_len: int, crop: int, seed: int = 0) -> tuple[Any, Any]:
    """One ready clip batch `[B, 3, T, H, W]` (0..255) and a label per head."""
    g = self.torch.Generator().manual_seed(seed)
    x = ready_clips(self, g, batch, clip_len, crop)
    labels = {name: self.torch.randint(0, n, (batch,), generator=g).to(self.device)
              for name, n in self.heads.items()}
    return x, labels


def torch_heads(task: str) -> dict[str, int]:
  """The heads of a classification step, as our method builds them (its config's sizes)."""
  if task == "finetune":
    return {"linear": step_throughput.FINETUNE_CLASSES}
  from auxskd_jax import config as config_lib

  clip = config_lib.base_config().clip
  return {"linear": clip.max_speed, "linear_segment": clip.num_segments}


def _sync(torch: Any, device: Any) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def measure_torch(variant: str, args: argparse.Namespace, device: str,
                  task: str = "auxskd") -> dict[str, Any]:
  """Times one PyTorch variant of `task`'s step: warm-up (includes torch.compile), then
  `steps` synced steps."""
  import torch

  on_cuda = device.startswith("cuda")
  if on_cuda:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
  options = dict(device=device, bf16=variant != "fp32", channels_last=variant != "fp32",
                 compile_loss=variant.endswith("compile"))
  if task == "auxskd":
    bench = TorchAuxSKD(args.model, args.width, queue_size=args.queue_size, **options)
    inputs = bench.clips(args.batch, args.clip_len, args.crop)
  else:
    bench = TorchClassifier(args.model, args.width, torch_heads(task), **options)
    inputs = bench.inputs(args.batch, args.clip_len, args.crop)
  start = time.perf_counter()
  for _ in range(max(1, args.warmup)):
    loss = bench.step(*inputs)
  _sync(torch, bench.device)
  warmup_s = time.perf_counter() - start
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    loss = bench.step(*inputs)
    _sync(torch, bench.device)
    times.append((time.perf_counter() - start) * 1e3)
  summary = common.summarize_ms(times)
  peak = torch.cuda.max_memory_allocated() if on_cuda else None
  final = float(loss.detach().cpu())
  del bench, inputs
  if on_cuda:
    torch.cuda.empty_cache()
  return {"task": task, "framework": "pytorch", "torch": torch.__version__, "variant": variant,
          "batch": args.batch, **summary, "items_per_s": args.batch / (summary["ms_median"] / 1e3),
          "peak_bytes": peak, "peak_memory_gib": peak / 2**30 if peak is not None else None,
          "warmup_s": warmup_s, "final_loss": final, "loss_finite": bool(np.isfinite(final))}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_common_flags(parser)
  parser.add_argument("--task", default="auxskd",
                      help=f"comma-separated steps to compare, of {list(step_throughput.TASKS)}")
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
  tasks = [t.strip() for t in args.task.split(",") if t.strip()]
  if not tasks or any(t not in step_throughput.TASKS for t in tasks):
    raise SystemExit(f"--task={args.task!r}: choose from {list(step_throughput.TASKS)}.")
  dtypes = common.parse_dtypes(args.dtype)
  size = common.frame_size(args)
  devices = common.bench_devices(1)
  torch_rows, jax_rows, sampling = [], [], {}
  for task in tasks:
    # PyTorch first, its cache emptied after each variant, so the JAX allocator can grow after.
    task_torch = [measure_torch(v, args, device, task) for v in variants]
    task_jax = []
    for dtype in dtypes:
      row = step_throughput.measure_step(task, common.make_config(task, args, dtype),
                                         devices=devices, size=size, steps=args.steps,
                                         warmup=args.warmup, peak_tflops=args.peak_tflops)
      row.update(framework="jax", variant=dtype)
      task_jax.append(row)
    sampling[task] = step_throughput.measure_sampling(
        common.make_config(task, args, "float32"), devices[0], size, args.batch,
        steps=args.steps, warmup=args.warmup, task=task)
    for r in task_jax:
      r["jax_ms_without_sampling"] = r["ms_median"] - sampling[task]["ms_median"]
    jax_by_dtype = {r["dtype"]: r for r in task_jax}
    for r in task_torch:
      match = jax_by_dtype.get("float32" if r["variant"] == "fp32" else "bfloat16")
      if match is not None:
        r["jax_variant"] = match["dtype"]
        r["jax_speedup"] = r["ms_median"] / match["ms_median"]
        if "jax_ms_without_sampling" in match:
          r["jax_speedup_without_sampling"] = (r["ms_median"] /
                                               match["jax_ms_without_sampling"])
    torch_rows += task_torch
    jax_rows += task_jax
  rows = torch_rows + jax_rows
  print(common.markdown_table(rows, COLUMNS))
  payload = {"benchmark": "torch_compare", "environment": common.environment(),
             "torch_device": device, "args": vars(args), "skipped_variants": skipped,
             "rows": rows, "sampling": sampling,
             "note": "jax_speedup = PyTorch ms / JAX ms for the matching precision (fp32 vs "
                     "float32, bf16 variants vs bfloat16) of the same task; the JAX steps "
                     "include on-device sampling + augmentation, the PyTorch steps take "
                     "ready clips."}
  common.write_json(args.out, payload)
  return payload


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  return run(build_parser().parse_args(argv))


if __name__ == "__main__":
  main()
