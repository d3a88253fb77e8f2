"""Smoke tests of the GPU benchmark scripts in `--tiny` mode on the CPU: each runs in-process,
writes its JSON with the keys the GPU session will read, and rejects bad flags clearly.

The scripts share compiled steps through a persistent compilation cache (the same tiny auxSKD
step is compiled once for all of them), and use R3D-10, the quickest encoder to compile.
"""

from __future__ import annotations

import json
import math
import os
import sys

import jax
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

TINY = ["--tiny", "--model=r3d_10", "--dtype=float32"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """A folder for the scripts' JSON, with a persistent compilation cache for the module."""
  root = tmp_path_factory.mktemp("bench")
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  jax.config.update("jax_compilation_cache_dir", str(root / "xla_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  yield root
  for n, v in old.items():
    jax.config.update(n, v)


def _load(path) -> dict:
  with open(path) as f:
    return json.load(f)


def test_step_throughput_tiny(results):
  import step_throughput

  out = results / "step_auxskd.json"
  step_throughput.main(TINY + ["--task=auxskd", f"--out={out}"])
  payload = _load(out)
  assert payload["benchmark"] == "step_throughput"
  assert payload["issue_gflop_per_pair"] == 170.0
  assert payload["environment"]["prng_impl"] == "rbg"  # what a real run uses (config default)
  (row,) = payload["steps"]
  for key in ("ms_median", "items_per_s", "flops_per_step_xla", "flops_per_step_unoptimized_hlo",
              "gflop_per_item_xla", "mfu",
              "peak_memory_gib", "xla_planned_bytes", "compile_s", "final_loss"):
    assert key in row, key
  assert row["task"] == "auxskd" and row["dtype"] == "float32" and row["batch"] == 4
  assert row["ms_median"] > 0 and row["loss_finite"]
  assert row["flops_per_step_xla"] > 0 and 0 < row["mfu"] < 1
  sampling = payload["sampling"]
  assert sampling["pairs"] == 4 and sampling["window"][1:] == [36, 44]
  assert sampling["share_of_auxskd_step"]["float32"] > 0


def test_torch_compare_tiny(results):
  """VSPP's step side by side (auxSKD's PyTorch variants run in test_device_check_tiny's torch
  part, its JAX step in test_step_throughput_tiny: the same functions)."""
  import torch_compare

  out = results / "torch_compare.json"
  torch_compare.main(TINY + ["--variants=fp32,bf16_cl3d", "--torch_device=cpu", "--task=vspp",
                             f"--out={out}"])
  payload = _load(out)
  assert {r["task"] for r in payload["rows"]} == {"vspp"}
  rows = {(r["framework"], r["variant"]): r for r in payload["rows"]}
  assert set(rows) == {("pytorch", "fp32"), ("pytorch", "bf16_cl3d"), ("jax", "float32")}
  assert rows[("pytorch", "fp32")]["jax_speedup"] > 0
  assert rows[("pytorch", "fp32")]["loss_finite"] and rows[("jax", "float32")]["loss_finite"]
  assert "jax_speedup" not in rows[("pytorch", "bf16_cl3d")]  # no bf16 JAX run to compare
  # VSPP's own clip making (its windows, its labels) alone, subtracted for the like-for-like ratio
  sampling = payload["sampling"]["vspp"]
  assert sampling["task"] == "vspp" and sampling["clips"] == 4 and sampling["ms_median"] > 0
  jax_row = rows[("jax", "float32")]
  assert jax_row["jax_ms_without_sampling"] == jax_row["ms_median"] - sampling["ms_median"]
  assert rows[("pytorch", "fp32")]["jax_speedup_without_sampling"] > \
      rows[("pytorch", "fp32")]["jax_speedup"]


def test_torch_step_moves_teacher_and_queue():
  import torch
  import torch_compare

  bench = torch_compare.TorchAuxSKD("r3d_10", 4, queue_size=6, embed=8, hidden=16)
  teacher = [p.clone() for p in bench.teacher.parameters()]
  queue = bench.queue.clone()
  x_q, x_k = bench.clips(4, 4, 16)
  bench.step(x_q, x_k)
  moved = [(p - t).abs().max().item() for p, t in zip(bench.teacher.parameters(), teacher)]
  assert max(moved) > 0  # EMA towards the updated student
  changed = (bench.queue - queue).abs().sum(dim=1) > 0
  assert changed.tolist() == [True] * 4 + [False] * 2 and bench.ptr == 4
  bench.step(x_q, x_k)  # wraps: rows 4, 5, 0, 1
  assert bench.ptr == 2
  assert torch.allclose(bench.queue.norm(dim=1), torch.ones(6), atol=1e-5)


def test_torch_classifier_step_learns_its_heads():
  """The PyTorch VSPP / fine-tuning step: both heads' cross-entropies, and SGD moves the net."""
  import torch
  import torch_compare

  heads = torch_compare.torch_heads("vspp")
  assert set(heads) == {"linear", "linear_segment"}
  bench = torch_compare.TorchClassifier("r3d_10", 4, heads, lr=0.05)
  x, labels = bench.inputs(4, 4, 16)
  before = [p.clone() for p in bench.net.parameters()]
  first = float(bench.step(x, labels))
  assert 0.5 * sum(map(math.log, heads.values())) < first < 5 * sum(map(math.log, heads.values()))
  assert max((p - b).abs().max().item() for p, b in zip(bench.net.parameters(), before)) > 0
  for _ in range(4):
    last = float(bench.step(x, labels))
  assert last < first  # the same batch: the loss falls
  assert set(labels) == set(heads) and all(int(labels[n].max()) < heads[n] for n in heads)
  assert torch.isfinite(torch.tensor(last))


def test_end_to_end_tiny(results, tmp_path):
  import end_to_end

  out = results / "end_to_end.json"
  end_to_end.main(TINY + ["--workers=0", f"--data_dir={tmp_path}", f"--out={out}"])
  payload = _load(out)
  (row,) = payload["rows"]
  for key in ("e2e_pairs_per_s", "loader_pairs_per_s", "step_pairs_per_s", "input_bound"):
    assert key in row, key
  assert row["e2e_pairs_per_s"] > 0 and isinstance(row["input_bound"], bool)
  assert payload["dataset"]["videos"] == 8 and payload["dataset"]["frame_size"] == [36, 44]


def test_synthetic_dataset_reads_back(tmp_path):
  import synthetic_dataset

  from auxskd_jax import data

  name = synthetic_dataset.write_dataset(str(tmp_path), num_videos=3, num_frames=5,
                                         size=(20, 24), num_classes=2)
  source = data.open_split(str(tmp_path), name, "train")
  assert len(source) == 3 and source.num_classes == 2 and source.frame_shape == (20, 24)
  assert [source.label(i) for i in range(3)] == [0, 1, 0]
  assert source.num_frames(2) == 5
  assert source.read_frames(1, [0, 4, 7]).shape == (3, 20, 24, 3)


def test_summarize_reads_all(results):
  import summarize

  text = summarize.summarize(str(results))
  assert "| auxskd | float32 | 4 |" in text
  assert "make_clips for 4 pairs" in text


@pytest.mark.parametrize("flags, message", [
    (["--dtype=float64"], "--dtype"),
    (["--task=nope"], "--task"),
    (["--frame_size=20,20"], "--frame_size"),
    (["--devices=99"], "--devices"),
])
def test_bad_flags_fail_clearly(flags, message):
  import step_throughput

  with pytest.raises(SystemExit, match=message):
    step_throughput.main(["--tiny"] + flags)


def test_bf16_vs_f32_bad_flags_fail_before_any_work():
  """bf16_vs_f32.py's own checks (its curves run in test_device_check_tiny's loss check)."""
  import bf16_vs_f32

  with pytest.raises(SystemExit, match="--steps and --batches"):
    bf16_vs_f32.main(["--tiny", "--model=r3d_10", "--batches=0"])


def test_device_check_tiny(results, tmp_path):
  """`device_check.sh --tiny` end to end: every part ran and measured. Its one-device
  processes compile their own steps: a persistent-cache key includes the client's device
  count, so the 4-device entries of the tests above are not theirs (jax 0.10)."""
  import math
  import subprocess

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = tmp_path / "check"
  env = dict(os.environ, PYTHON=sys.executable,
             JAX_COMPILATION_CACHE_DIR=str(results / "xla_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  # One CPU device, as on the GPU host, and conftest's unoptimised codegen (half the compile
  # time of XLA's default; the check's figures measure nothing in --tiny anyway).
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
  proc = subprocess.run(["bash", os.path.join(root, "benchmarks", "device_check.sh"), "--tiny",
                         str(out)], env=env, capture_output=True, text=True, timeout=1500)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  jx, th, check = (_load(out / f) for f in ("jax.json", "torch.json", "check.json"))
  summary = (out / "summary.md").read_text()

  def real(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0

  assert check["exit_codes"] == {"jax": 0, "torch": 0}
  parts = jx["parts"]
  assert {n: p["status"] for n, p in parts.items()} == dict.fromkeys(
      ("step", "sampling", "loss_check", "end_to_end", "smoke"), "ok"), parts
  rows = {r["dtype"]: r for r in parts["step"]["rows"]}
  assert set(rows) == {"bfloat16", "float32"}
  for r in rows.values():
    assert all(real(r[k]) for k in ("ms_median", "items_per_s", "flops_per_step_xla", "mfu"))
    assert r["loss_finite"] and r["batch"] == 4
  assert real(parts["sampling"]["ms_median"])
  assert set(parts["sampling"]["share_of_auxskd_step"]) == {"bfloat16", "float32"}
  loss = parts["loss_check"]
  # bf16_vs_f32's curves and comparison, as its own command writes them (its main() is
  # these functions and write_json; the check runs them on the steps it compiled)
  assert loss["same_init"] and loss["all_finite"] and loss["steps"] == 3
  assert len(loss["loss_float32"]) == len(loss["loss_bfloat16"]) == 3
  assert loss["loss_float32"] != loss["loss_bfloat16"]  # the precisions really differ
  assert loss["max_relative_gap"] == max(loss["relative_gap"])
  (e2e,) = parts["end_to_end"]["rows"]
  assert real(e2e["e2e_pairs_per_s"]) and real(e2e["loader_pairs_per_s"])
  smoke = {(r["method"], r["dtype"]): r for r in parts["smoke"]["rows"]}
  assert {m for m, _ in smoke} >= {"auxskd", "vspp", "pace", "vcop", "rspnet", "finetune"}
  ran = smoke[("vspp", "float32")]
  assert ran["status"] == "ok" and ran["loss_finite"] and len(ran["losses"]) == 3
  assert ran["compiles_first_call"] >= 1 and ran["recompiles"] == 0
  assert not any(m.startswith("tensorflow") for m in jx["third_party_modules"])
  torch_part = th["parts"]["torch"]
  try:
    import torch  # noqa: F401
  except ImportError:
    assert torch_part["status"] == "skipped"
  else:
    assert torch_part["status"] == "ok"
    variants = {r["variant"]: r for r in torch_part["rows"]}
    assert variants["fp32"]["status"] == "ok" and real(variants["fp32"]["ms_median"])
    assert variants["bf16_cl3d"]["status"] == "ok"  # its CPU loss may be NaN (see above)
    assert variants["bf16_cl3d_compile"]["status"] == "skipped"  # CUDA only
    assert "| pytorch | fp32 |" in summary
  for text in ("| jax | bfloat16 |", "| jax | float32 |", "## End to end", "## Smoke",
               "bf16 vs float32 over 3 steps", "| vspp | float32 | ok"):
    assert text in summary, text


# What the GPU host has (the list), by distribution name.
GPU_HOST_HAS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "einops", "chex", "absl-py",
                "tensorboard", "numpy", "pillow", "opencv-python", "torch")
# The benchmark scripts device_check.py runs: every import in them counts, lazy ones too.
DEVICE_CHECK_SCRIPTS = ("device_check", "common", "step_throughput", "torch_compare",
                        "bf16_vs_f32", "end_to_end", "synthetic_dataset")


def _imports(path: str, module_level_only: bool) -> set[str]:
  """Absolute module names `path` imports (module level only: not inside functions)."""
  import ast

  with open(path) as f:
    tree = ast.parse(f.read())
  nodes = list(ast.iter_child_nodes(tree)) if module_level_only else list(ast.walk(tree))
  if module_level_only:  # also the bodies of module-level try/if blocks
    stack, nodes = nodes, []
    while stack:
      n = stack.pop()
      nodes.append(n)
      if isinstance(n, (ast.Try, ast.If)):
        stack.extend(n.body + n.orelse + getattr(n, "handlers", []) + getattr(n, "finalbody", []))
      if isinstance(n, ast.ExceptHandler):
        stack.extend(n.body)
  names = set()
  for n in nodes:
    if isinstance(n, ast.Import):
      names.update(a.name for a in n.names)
    elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
      names.add(n.module)
      names.update(f"{n.module}.{a.name}" for a in n.names)
  return names


def _device_check_third_party() -> set[str]:
  """Top-level third-party modules the device check imports: every import of its scripts,
  then the module-level imports of the repo modules they reach (library code's lazy imports
  belong to paths the check does not take, e.g. `prepare`'s TensorFlow)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  found, third = set(), set()
  todo = [(os.path.join(root, "benchmarks", f"{s}.py"), False) for s in DEVICE_CHECK_SCRIPTS]
  while todo:
    path, module_level = todo.pop()
    if path in found:
      continue
    found.add(path)
    for name in _imports(path, module_level):
      top = name.split(".")[0]
      if top in DEVICE_CHECK_SCRIPTS or top in sys.stdlib_module_names:
        continue
      if top in ("auxskd_jax", "configs"):
        base = os.path.join(root, *name.split("."))
        for candidate in (base + ".py", os.path.join(base, "__init__.py")):
          if os.path.isfile(candidate):
            todo.append((candidate, True))
        parent = os.path.join(os.path.dirname(base), "__init__.py")
        if os.path.isfile(parent):
          todo.append((parent, True))
        continue
      # `google` is a namespace shared by several distributions: keep the package.
      third.add(".".join(name.split(".")[:2]) if top == "google" else top)
  return third


def _requirement_closure(dists) -> set[str]:
  """`dists` and everything they require on CPython 3.12 / Linux, from installed metadata."""
  import importlib.metadata as md

  from packaging.requirements import Requirement
  from packaging.utils import canonicalize_name

  env = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
         "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
         "implementation_name": "cpython", "platform_python_implementation": "CPython"}
  out, done, todo = set(), set(), [(d, frozenset()) for d in dists]
  while todo:
    name, extras = todo.pop()
    if (canonicalize_name(name), extras) in done:
      continue
    done.add((canonicalize_name(name), extras))
    out.add(canonicalize_name(name))
    try:
      requires = md.requires(name) or []
    except md.PackageNotFoundError:
      continue
    for text in requires:
      req = Requirement(text)
      if req.marker is None or any(req.marker.evaluate(dict(env, extra=e))
                                   for e in (sorted(extras) or [""])):
        todo.append((req.name, frozenset(req.extras)))
  return out


def _wheels_list(name: str) -> list[str]:
  import re

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "benchmarks", "device_wheels.sh")) as f:
    text = f.read()
  body = re.search(rf"^{name}=\(\n(.*?)^\)", text, re.S | re.M).group(1)
  return [line.strip() for line in body.splitlines() if line.strip()]


def test_device_wheels_list_matches_device_check_imports():
  """device_wheels.sh downloads exactly what the check's imports need beyond the GPU host's
  packages (and their dependencies); nothing on the path imports TensorFlow."""
  import importlib.metadata as md

  from packaging.utils import canonicalize_name

  modules = _device_check_third_party()
  assert not {"tensorflow", "tensorflow_datasets"} & modules
  assert {"grain", "array_record", "ml_collections", "dm_pix", "torch"} <= modules
  by_module = dict(md.packages_distributions(), **{"google.protobuf": ["protobuf"]})
  missing = sorted(m for m in modules if m not in by_module)
  # Only optional imports (try/except) may be absent here; the wheels list names them anyway.
  assert set(missing) <= {"simplejpeg"}, missing
  dists = {d for m in modules for d in by_module.get(m, [m])}
  needed = _requirement_closure(dists) - _requirement_closure(GPU_HOST_HAS)
  listed = {canonicalize_name(p) for p in _wheels_list("PACKAGES")}
  assert listed == needed, (f"device_wheels.sh PACKAGES should be {sorted(needed)}; "
                            f"it is {sorted(listed)}")
  assert not listed & {canonicalize_name(p) for p in _wheels_list("FALLBACKS")}


def test_conv_profile_tiny(results):
  """Every conv of one R(2+1)D-10 forward is recorded once (as many as the model has 5-D
  kernels) and timed in each framework and lowering; the totals are the rows' sums."""
  import conv_profile

  out = results / "conv_profile.json"
  payload = conv_profile.main(["--batch=1", "--width=4", "--clip_len=4", "--crop=16",
                               "--steps=1", "--lowerings=xla", f"--out={out}"])
  assert _load(out)["rows"] == json.loads(json.dumps(payload["rows"]))
  rows = payload["rows"]
  from auxskd_jax import models

  net = models.build("r21d_10", num_classes=128, width=4)
  x = jax.numpy.zeros((1, 4, 16, 16, 3))
  params = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), x, train=False))["params"]
  kernels = [v for v in jax.tree.leaves(params) if len(v.shape) == 5]
  assert sum(r["count"] for r in rows) == len(kernels) == 24  # each conv once per forward
  assert tuple(rows[0]["kernel"][:4]) == (1, 7, 7, 3)  # the stem first
  for key in ("torch_fwd_bwd_ms", "jax_xla_fwd_bwd_ms", "jax_xla_fwd_ms"):
    assert all(r[key] > 0 for r in rows)
    total = sum(r[key] * r["count"] for r in rows)
    assert abs(payload["totals_ms_per_forward_x_count"][key] - total) < 0.01 + 1e-3 * total


def test_step_profile_sorts_ops_by_kind():
  """The profiler's accounting on a small jitted program: a fused layout change and a
  reduction are named by what their fusions hold, and on a CPU the asynchronous convolution
  is the wall time the synchronous ops leave."""
  import step_profile

  x = jax.numpy.ones((8, 16, 16, 8))
  k = jax.numpy.ones((3, 3, 8, 8))

  def fn(x, k):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.numpy.transpose(jax.nn.relu(y) + 1.0, (3, 1, 2, 0)), (y * y).sum(axis=(0, 1, 2))

  compiled = jax.jit(fn).lower(x, k).compile()
  kinds = step_profile.hlo_kinds(compiled.as_text())
  assert "convolution" in kinds.values()
  result = step_profile.profile_calls(compiled, lambda: compiled(x, k), steps=3)
  assert result["wall_ms_per_step"] > 0 and result["ops_per_step"] >= 2
  by_kind = {r["kind"]: r for r in result["by_kind"]}
  assert any(kind.startswith("fusion[") for kind in by_kind), by_kind
  assert "(asynchronous: convolutions)" in by_kind
  # ops that ran side by side can sum to more than the wall time, never to less
  assert sum(r["share"] for r in result["by_kind"]) >= 1.0 - 1e-6
  assert all(op["kind"] == kinds[op["op"]] for op in result["top_ops"])


def test_step_ab_tiny(results):
  """Both lowerings compiled and timed in turns; the first is the baseline of the ratios."""
  import step_ab

  out = results / "step_ab.json"
  payload = step_ab.main(TINY + ["--task=vspp", "--lowerings=xla,auto", "--rounds=2",
                                 f"--out={out}"])
  rows = payload["rows"]
  assert [r["lowering"] for r in rows] == ["xla", "auto"]
  assert rows[0]["speedup_vs_first"] == 1.0 and all(len(r["round_medians_ms"]) == 2 for r in rows)
  assert all(r["ms_median"] > 0 for r in rows)
  assert _load(out)["rows"] == json.loads(json.dumps(rows))
