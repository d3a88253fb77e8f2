"""Step-for-step parity with the authors' training code (issue 22, item 1).

For each method, one training step of ours (the pmapped `make_train_step`, on one device)
beside `auxskd_jax.testing.authors_steps`, the authors' step re-written in PyTorch from their
scripts, on identical inputs: the same weights (through `weights.convert`), the same queue and
pointer, the same SGD momentum buffers, the same already-made clips (our clip recipe is
replaced through the `make_clips` hook; theirs is not in the torch step). Each step is compared
on its own: before every step our state is re-synchronised from the authors' float32 run, so
rounding cannot accumulate.

Checked after each step: the loss, every SGD momentum buffer (gradient + weight decay, then
momentum), every parameter's update, every BN running mean and variance, the teacher's
parameters and statistics, the queue and its pointer. Each array is compared as its value and
as its change over the step, relative to the largest magnitude of the float64 step's value
(change); the tolerance is max(1e-4, 10 x the difference between the authors' float32 step and
the same step in float64), computed here for every array.

XLA settings: those of a real run (optimised codegen, `runtime.apply`'s YNNPACK choice), all
five tests in one child pytest (`product_xla`), not the suite's unoptimised codegen. Measured on a
2-core Intel Xeon: under unoptimised codegen one XLA:CPU path or another drifts from the
float64 step in VCOP's step (jax 0.10: XLA's own convs, 3.4x the tolerance; jax 0.12: YNNPACK's,
172x), while with a real run's settings all five pass on both, at 0.2-0.4x.

Settings: R(2+1)D-10 at full width (64, as issue 22 asks) on clips of 4 frames of 16x16, batch 4, 2 steps of
one step per epoch with the step schedule decaying every epoch (the authors' `StepLR`, so the
second step runs at the decayed rate), a queue of 8 that the second step's enqueue wraps back
to 0. The learning rate is 0.01 and the EMA momentum 0.9 (not 0.001 / 0.999) so that one step's
update and teacher change stand far above float32 resolution. torch runs on one thread.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

from auxskd_jax.methods import auxskd, pace, rspnet, vcop, vspp  # noqa: E402
from auxskd_jax.testing import authors_steps as authors  # noqa: E402
from auxskd_jax.testing import reference_torch  # noqa: E402
from auxskd_jax.train import optim  # noqa: E402
from auxskd_jax.train import step as step_lib  # noqa: E402
from auxskd_jax.train.state import TrainState  # noqa: E402
from auxskd_jax.weights import convert  # noqa: E402

import conftest  # noqa: E402
import tiny  # noqa: E402

# Full width, as issue 22 asks: the parity is of the authors' network as they train it. Width 16
# passes too (largest error / tolerance 0.17-0.52 against 0.20-0.32 at 64) and saves ~40 s of
# the suite, but a width the authors never ran would prove less.
NAME, WIDTH = "r21d_10", 64
BATCH, FRAMES, CROP = 4, 4, 16
LR, EMA, DECAY_EPOCHS = 0.01, 0.9, 1
QUEUE, EMBED = 8, 128
FLOOR = 1e-4
STEPS = 2


# The parity tests' names, in definition order (`product_xla` collects them).
PARITY_TESTS: list[str] = []


def product_xla(test: Callable[[], None]) -> Callable[[], None]:
  """Marks a parity test that must run under a real run's XLA settings (see the module
  docstring): XLA reads its flags once per process, and the suite's process compiles
  unoptimised. In the child (PRODUCT_XLA) it is an ordinary test; in the suite's process it is
  not collected, and `test_every_step_matches_authors_under_a_real_runs_xla` runs all of them
  in one child pytest (one start-up: torch, jax and the methods imported once)."""
  PARITY_TESTS.append(test.__name__)
  if not conftest.PRODUCT_XLA:
    test.__test__ = False  # type: ignore[attr-defined]
  return test


if not conftest.PRODUCT_XLA:

  def test_every_step_matches_authors_under_a_real_runs_xla(tmp_path):
    """The five parity tests below in one child pytest under a real run's XLA settings; each
    must have run and passed (a missing or skipped one fails this test too)."""
    import xml.etree.ElementTree as ElementTree

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    report_xml = tmp_path / "parity.xml"
    env = {**os.environ, conftest.PRODUCT_XLA_ENV: "1",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--junitxml={report_xml}", "tests/test_authors_step.py"],
        cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    print(run.stdout[-3000:])
    assert report_xml.exists(), run.stdout[-6000:] + run.stderr[-2000:]
    outcomes = {}
    for case in ElementTree.parse(report_xml).getroot().iter("testcase"):
      failed = [c.tag for c in case if c.tag in ("failure", "error", "skipped")]
      outcomes[case.get("name")] = failed[0] if failed else "passed"
    assert outcomes == dict.fromkeys(PARITY_TESTS, "passed"), (
        f"{outcomes}\n{run.stdout[-6000:]}{run.stderr[-2000:]}")
    assert run.returncode == 0


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
  """torch's intra-op threads spin against XLA's on a small shared CPU (a step: 7 s -> 0.4 s)."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def config_for(file: str):
  c = tiny.load_config(file)
  c.model.name, c.model.width = NAME, WIDTH
  c.clip.clip_len, c.clip.crop_size = FRAMES, CROP
  c.train.batch_size = BATCH
  c.train.init_from = ""
  c.optim.learning_rate = LR
  if c.optim.schedule != "constant":  # VCOP's rate is constant (its scheduler never steps)
    c.optim.schedule = "step"  # RSPNet's cosine per epoch is not a step's computation
    c.optim.decay_epochs = DECAY_EPOCHS
  return c


# --------------------------------------------------------------------------------------------
# Moving a run's state between the authors' torch modules and our TrainState.


@dataclasses.dataclass
class Role:
  """One network of a method: where ours keeps it (`params` / `extras` key), its kind."""
  where: str  # 'params' (trained) or 'extras' (the teacher)
  key: str
  kind: str  # 'encoder', 'predictor' or 'vcop_head'
  heads: dict[str, int] = dataclasses.field(default_factory=dict)


def _numpy_sd(module) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().float().numpy() for k, v in module.state_dict().items()
          if not k.endswith("num_batches_tracked")}


def torch_to_ours(role: Role, sd: dict[str, np.ndarray]) -> dict[str, Any]:
  if role.kind == "encoder":
    return convert.encoder_from_torch(sd, NAME, heads=role.heads, width=WIDTH)
  if role.kind == "predictor":
    return convert.predictor_from_torch(sd)
  return {"params": {m: {"kernel": sd[f"{m}.weight"].T, "bias": sd[f"{m}.bias"]}
                     for m in ("fc7", "fc8")}}


def ours_to_torch(role: Role, variables: dict[str, Any]) -> dict[str, np.ndarray]:
  if role.kind == "encoder":
    sd = convert.to_torch(variables, NAME)
  elif role.kind == "predictor":
    sd = convert.predictor_to_torch(variables)
  else:
    p = variables["params"]
    sd = {f"{m}.{leaf}": np.asarray(p[m][k]).T if k == "kernel" else np.asarray(p[m][k])
          for m in ("fc7", "fc8") for k, leaf in (("kernel", "weight"), ("bias", "bias"))}
  return {k: np.asarray(v, np.float64) for k, v in sd.items()
          if not k.endswith("num_batches_tracked")}


def state_from_torch(roles: dict[str, Role], run: authors.TorchRun, tx, step: int) -> TrainState:
  """Our state holding exactly the authors' run's weights, statistics, momentum buffers,
  teacher, queue and pointer, at optimizer step `step`."""
  params, stats, trace, extras = {}, {}, {}, {}
  for name, role in roles.items():
    sd = _numpy_sd(run.modules[name])
    v = torch_to_ours(role, sd)
    if role.where == "extras":
      extras[role.key] = v
      continue
    params[role.key] = v["params"]
    if v.get("batch_stats"):
      stats[role.key] = v["batch_stats"]
    bufs = {k: b.detach().float().numpy() for k, b in run.momentum_buffers(name).items()}
    trace[role.key] = (torch_to_ours(role, {**sd, **bufs})["params"] if bufs else
                       jax.tree.map(np.zeros_like, v["params"]))
  if run.queue is not None:
    extras["queue"] = run.queue.detach().float().numpy()
    extras["queue_ptr"] = np.asarray(run.queue_ptr, np.int32)
  # All numpy: a jax op per leaf would compile once per leaf shape (seconds a method).
  opt_state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(tx.init, params))
  opt_state = optax.tree_utils.tree_set(opt_state, trace=trace,
                                        count=np.asarray(step, np.int32))
  return TrainState(step=np.asarray(step, np.int32), params=params, batch_stats=stats,
                    opt_state=opt_state, extras=extras, tx=tx)


def torch_snapshot(run: authors.TorchRun) -> dict[str, np.ndarray]:
  """Every array of the authors' run by name: `<role>.<state_dict key>`,
  `momentum.<role>.<parameter>`, `queue`."""
  out = {}  # in the run's own precision: a float64 run's arrays are not rounded to float32
  for name, module in run.modules.items():
    out.update({f"{name}.{k}": v.detach().double().numpy()
                for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")})
  for name in run.trained:
    out.update({f"momentum.{name}.{k}": b.detach().double().numpy()
                for k, b in run.momentum_buffers(name).items()})
  if run.queue is not None:
    out["queue"] = run.queue.detach().double().numpy()
  return out


def ours_snapshot(roles: dict[str, Role], state: TrainState) -> dict[str, np.ndarray]:
  """`torch_snapshot`'s names for our (unreplicated) state."""
  state = jax.tree.map(np.asarray, state)
  trace = optax.tree_utils.tree_get(state.opt_state, "trace")
  out = {}
  for name, role in roles.items():
    if role.where == "extras":
      out.update({f"{name}.{k}": v for k, v in
                  ours_to_torch(role, state.extras[role.key]).items()})
      continue
    v = {"params": state.params[role.key]}
    if role.key in state.batch_stats:
      v["batch_stats"] = state.batch_stats[role.key]
    sd = ours_to_torch(role, v)
    out.update({f"{name}.{k}": a for k, a in sd.items()})
    momentum = ours_to_torch(role, {**v, "params": trace[role.key]})
    params = set(ours_to_torch(role, {"params": v["params"]}).keys()) if role.kind == \
        "vcop_head" else {k for k in sd if not k.endswith(("running_mean", "running_var"))}
    out.update({f"momentum.{name}.{k}": a for k, a in momentum.items() if k in params})
  if "queue" in state.extras:
    out["queue"] = np.asarray(state.extras["queue"], np.float64)
  return out


# --------------------------------------------------------------------------------------------
# Comparison.


def _relative(a: np.ndarray, b: np.ndarray, scale: float) -> float:
  return float(np.max(np.abs(a - b))) / scale if a.size else 0.0


def compare(before: dict, ours: dict, t32: dict, t64: dict, step: int,
            margins: list | None = None) -> list[str]:
  """Failures: arrays (value, and change over the step) where ours differs from the authors'
  float32 step by more than max(FLOOR, 10 x their float32-float64 difference). `margins`
  collects (error / tolerance, name) of every comparison."""
  assert set(ours) == set(t32), (sorted(set(ours) ^ set(t32)))[:10]
  failures = []
  for name in sorted(t32):
    pairs = [("value", ours[name], t32[name], t64[name], None)]
    if name in before:
      b = before[name]
      pairs.append(("change", ours[name] - b, t32[name] - b, t64[name] - b, b))
    for what, mine, theirs, exact, b in pairs:
      scale = float(np.max(np.abs(exact))) if exact.size else 0.0
      if b is not None:  # a change that is exactly zero in float64 is compared to the value
        scale = max(scale, 1e-9 * float(np.max(np.abs(b))))
      scale = max(scale, 1e-30)
      err, noise = _relative(mine, theirs, scale), _relative(theirs, exact, scale)
      tol = max(FLOOR, 10.0 * noise)
      if margins is not None:
        margins.append((err / tol, f"{name} ({what})"))
      if not err <= tol:
        failures.append(f"step {step} {name} ({what}): {err:.2e} > tol {tol:.2e}")
  return failures


def compare_scalar(name: str, mine: float, theirs: float, exact: float, step: int) -> list[str]:
  scale = max(abs(exact), 1e-30)
  err, tol = abs(mine - theirs) / scale, max(FLOOR, 10 * abs(theirs - exact) / scale)
  return [] if err <= tol else [f"step {step} {name}: {mine} vs {theirs} ({err:.2e} > {tol:.2e})"]


# --------------------------------------------------------------------------------------------
# The harness: our step on one device with fixed clips, the authors' step in float32 and
# float64 from the same state.


def fixed_clips(task, key, batch, config, *, train):
  """The batch's clips as they are; its labels."""
  del task, key, config, train
  return batch["clips"], {k: v for k, v in batch.items() if k != "clips"}


@dataclasses.dataclass
class Harness:
  method: Any
  roles: dict[str, Role]
  tx: Any
  step_fn: Callable

  @classmethod
  def build(cls, method_cls, config, roles: dict[str, Role]) -> "Harness":
    method = method_cls(config)
    tx, schedule = optim.make_optimizer(config, steps_per_epoch=1, total_steps=10)
    step_fn = jax.pmap(step_lib.make_train_step(method, schedule, make_clips=fixed_clips),
                       axis_name=step_lib.AXIS, devices=jax.devices()[:1])
    return cls(method, roles, tx, step_fn)

  def ours(self, run: authors.TorchRun, step: int, batch: dict[str, np.ndarray],
           key: jax.Array) -> tuple[TrainState, dict]:
    state = state_from_torch(self.roles, run, self.tx, step)
    rep = jax.tree.map(lambda x: np.asarray(x)[None], state)
    new, metrics = self.step_fn(rep, jax.tree.map(lambda x: np.asarray(x)[None], batch),
                                np.asarray(key)[None])
    return (jax.tree.map(lambda x: np.asarray(x)[0], new),
            jax.tree.map(lambda x: float(np.asarray(x)[0]), metrics))


def ncdhw(clips: np.ndarray, dtype) -> "torch.Tensor":
  """`[..., T, H, W, C]` (ours) -> `[..., C, T, H, W]` (theirs)."""
  nd = clips.ndim
  perm = tuple(range(nd - 4)) + (nd - 1, nd - 4, nd - 3, nd - 2)
  return torch.from_numpy(np.ascontiguousarray(clips.transpose(perm))).to(dtype)


def random_clips(rng: np.random.Generator, views: int) -> np.ndarray:
  """Reference-convention pixels (0..255) `[B, views, T, H, W, 3]`."""
  return rng.uniform(0, 255, (BATCH, views, FRAMES, CROP, CROP, 3)).astype(np.float32)


def run_parity(harness: Harness, run32: authors.TorchRun, steps: int,
               make_inputs: Callable[[int], dict[str, np.ndarray]],
               torch_step: Callable[[authors.TorchRun, dict, Any], dict],
               scheduled: bool, key_seed: int = 1) -> list[str]:
  """`steps` steps; before each one ours is re-synchronised from the authors' float32 run.
  Returns every failure (empty: parity)."""
  failures, key, margins = [], jax.random.PRNGKey(key_seed), []
  for step in range(steps):
    if scheduled:
      run32.set_lr(authors.step_lr(LR, step, step_size=DECAY_EPOCHS))
    inputs = make_inputs(step)
    before = torch_snapshot(run32)
    run64 = run32.clone(torch.float64)
    new_state, metrics = harness.ours(run32, step, inputs, key)
    out64 = torch_step(run64, inputs, torch.float64, step)
    out32 = torch_step(run32, inputs, torch.float32, step)
    ours = ours_snapshot(harness.roles, new_state)
    failures += compare_scalar("loss", metrics["loss"], out32["loss"], out64["loss"], step)
    if scheduled:
      failures += compare_scalar("learning_rate", metrics["learning_rate"],
                                 run32.optimizer.param_groups[0]["lr"],
                                 run64.optimizer.param_groups[0]["lr"], step)
    failures += compare(before, ours, torch_snapshot(run32), torch_snapshot(run64), step,
                        margins)
    if run32.queue is not None and int(new_state.extras["queue_ptr"]) != run32.queue_ptr:
      failures.append(f"step {step} queue_ptr: {int(new_state.extras['queue_ptr'])} vs "
                      f"{run32.queue_ptr}")
  worst = max(margins)
  print(f"largest error / tolerance: {worst[0]:.2f} ({worst[1]}); median "
        f"{sorted(margins)[len(margins) // 2][0]:.3f}")
  return failures


def report(failures: list[str]) -> str:
  """The count of differing arrays per network, then the first few of each."""
  groups: dict[str, list[str]] = {}
  for f in failures:
    groups.setdefault(f.split()[2].split(".")[0], []).append(f)
  lines = [f"{len(failures)} differences: " +
           ", ".join(f"{g} {len(v)}" for g, v in groups.items())]
  for v in groups.values():
    lines += v[:6]
  return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The methods.


@product_xla
def test_videopace_step_matches_authors():
  config = config_for("pace_r21d_k100")
  r = config.clip.max_speed
  roles = {"model": Role("params", "encoder", "encoder", {"linear": r})}
  harness = Harness.build(pace.VideoPace, config, roles)
  torch.manual_seed(0)
  run = authors.TorchRun({"model": reference_torch.build_torch(NAME, num_classes=r, width=WIDTH)},
                         ("model",), LR, 0.9, config.optim.weight_decay)
  rng = np.random.default_rng(0)

  def inputs(step):
    return {"clips": random_clips(rng, 1), "pace": rng.integers(0, r, BATCH).astype(np.int32)}

  def torch_step(run, x, dtype, step):
    return authors.pace_step(run, ncdhw(x["clips"][:, 0], dtype),
                             torch.from_numpy(x["pace"]).long())

  failures = run_parity(harness, run, STEPS, inputs, torch_step, scheduled=True)
  assert not failures, report(failures)


@product_xla
def test_vspp_step_matches_authors():
  config = config_for("vspp_r21d_k100")
  heads = {"linear": config.clip.max_speed, "linear_segment": config.clip.num_segments}
  roles = {"model": Role("params", "encoder", "encoder", heads)}
  harness = Harness.build(vspp.VSPP, config, roles)
  torch.manual_seed(1)
  run = authors.TorchRun({"model": reference_torch.build_torch(NAME, heads=heads, width=WIDTH)},
                         ("model",), LR, 0.9, config.optim.weight_decay)
  rng = np.random.default_rng(1)

  def inputs(step):
    return {"clips": random_clips(rng, 1),
            "speed": rng.integers(0, heads["linear"], BATCH).astype(np.int32),
            "segment": rng.integers(0, heads["linear_segment"], BATCH).astype(np.int32)}

  def torch_step(run, x, dtype, step):
    return authors.vspp_step(run, ncdhw(x["clips"][:, 0], dtype),
                             torch.from_numpy(x["speed"]).long(),
                             torch.from_numpy(x["segment"]).long())

  failures = run_parity(harness, run, STEPS, inputs, torch_step, scheduled=True)
  assert not failures, report(failures)


def authors_queue(size: int, dim: int, per_key: bool) -> "torch.Tensor":
  """The authors' initial queue as `[K, D]`: auxSKD normalises its `randn(K, D)` along dim 0
  (each feature column); RSPNet's is `randn(D, K)` normalised along dim 0 (each key)."""
  if per_key:
    return torch.nn.functional.normalize(torch.randn(dim, size), dim=0).t().contiguous()
  return torch.nn.functional.normalize(torch.randn(size, dim), dim=0)


def student_and_teacher(seed: int, **build: Any) -> tuple["torch.nn.Module", "torch.nn.Module"]:
  """The authors' momentum pair: a torch encoder and its frozen copy (the teacher starts as
  the student)."""
  torch.manual_seed(seed)
  student = reference_torch.build_torch(NAME, width=WIDTH, **build)
  teacher = reference_torch.build_torch(NAME, width=WIDTH, **build)
  teacher.load_state_dict(student.state_dict())
  for p in teacher.parameters():
    p.requires_grad = False
  return student, teacher


@product_xla
def test_auxskd_step_matches_authors():
  config = config_for("auxskd_r21d_k100")
  config.auxskd.queue_size, config.auxskd.momentum = QUEUE, EMA
  config.model.embed_dim = EMBED
  assert config.auxskd.teacher_bn == "shuffle"
  head = {"linear": EMBED}
  roles = {"encoder_q": Role("params", "encoder", "encoder", head),
           "predict_q_c": Role("params", "predictor", "predictor"),
           "encoder_k": Role("extras", "teacher", "encoder", head)}
  harness = Harness.build(auxskd.AuxSKD, config, roles)
  student, teacher = student_and_teacher(2, num_classes=EMBED)
  modules = {"encoder_q": student, "encoder_k": teacher,
             "predict_q_c": reference_torch.predictor(EMBED, config.model.predictor_hidden)}
  run = authors.TorchRun(modules, ("encoder_q", "predict_q_c"), LR, 0.9,
                         config.optim.weight_decay, queue=authors_queue(QUEUE, EMBED, False))
  rng = np.random.default_rng(2)
  generator = torch.Generator().manual_seed(0)

  def inputs(step):
    return {"clips": random_clips(rng, 2)}

  def torch_step(run, x, dtype, step):
    return authors.auxskd_step(run, ncdhw(x["clips"][:, 0], dtype),
                               ncdhw(x["clips"][:, 1], dtype), momentum=EMA,
                               student_temp=config.auxskd.student_temp,
                               teacher_temp=config.auxskd.teacher_temp, generator=generator)

  failures = run_parity(harness, run, STEPS, inputs, torch_step, scheduled=True)
  assert run.queue_ptr == 0  # wrapped
  assert not failures, report(failures)


@product_xla
def test_rspnet_step_matches_authors():
  config = config_for("rspnet_r21d_k100")
  s = config.rspnet
  s.queue_size, s.momentum, s.embed_dim = QUEUE, EMA, EMBED
  assert s.teacher_bn == "shuffle"
  heads = {name: EMBED for name in rspnet.HEADS}
  roles = {"encoder_q": Role("params", "encoder", "encoder", heads),
           "encoder_k": Role("extras", "teacher", "encoder", heads)}
  harness = Harness.build(rspnet.RSPNet, config, roles)
  enc_q, enc_k = student_and_teacher(3, heads=heads)
  run = authors.TorchRun({"encoder_q": enc_q, "encoder_k": enc_k}, ("encoder_q",), LR, 0.9,
                         config.optim.weight_decay, queue=authors_queue(QUEUE, EMBED, True))
  rng = np.random.default_rng(3)
  generator = torch.Generator().manual_seed(0)

  def inputs(step):
    return {"clips": random_clips(rng, 3)}

  def torch_step(run, x, dtype, step):
    q, k, o = (ncdhw(x["clips"][:, i], dtype) for i in range(3))
    return authors.rspnet_step(run, q, k, o, momentum=EMA, temperature=s.temperature,
                               margin=s.margin, weight_avid=s.weight_avid,
                               weight_rsp=s.weight_rsp, generator=generator)

  failures = run_parity(harness, run, STEPS, inputs, torch_step, scheduled=True)
  assert run.queue_ptr == 0
  assert not failures, report(failures)


def vcop_keep_masks(method, key: jax.Array, steps: int) -> list[np.ndarray]:
  """The dropout masks (True = kept) our VCOP step draws at steps 0..steps-1: the head applied
  with each step's method key (`step_keys`, under the same pmap), its Dropout fed ones (a mask
  depends on the key and the shape only)."""
  n = method.config.clip.vcop_clips

  def keep(k, step):
    seen = {}

    def intercept(next_fun, args, kwargs, context):
      if isinstance(context.module, nn.Dropout):
        seen["keep"] = next_fun(jnp.ones_like(args[0]), *args[1:], **kwargs) != 0
        return args[0]
      return next_fun(*args, **kwargs)

    feats = jnp.zeros((BATCH, n, WIDTH * 8), jnp.float32)
    params = method.head.init(jax.random.PRNGKey(0), feats, train=False)["params"]
    with nn.intercept_methods(intercept):
      method.head.apply({"params": params}, feats, train=True,
                        rngs={"dropout": step_lib.step_keys(k, step).method})
    return seen["keep"]

  f = jax.pmap(keep, axis_name=step_lib.AXIS, devices=jax.devices()[:1])
  return [np.asarray(f(np.asarray(key)[None], np.full((1,), s, np.int32)))[0]
          for s in range(steps)]


@product_xla
def test_vcop_step_matches_authors_with_one_batch_of_positions():
  """Ours runs the n clip positions through the encoder as one batch (docs/FIDELITY.md,
  "VCOP batch statistics"); theirs once per position. Parity is checked against their step
  with that one change; the change itself is measured, and must be a real difference (else
  the documented deviation is gone and FIDELITY.md is to be updated)."""
  config = config_for("vcop_r21d_ucf101")
  n = config.clip.vcop_clips
  roles = {"encoder": Role("params", "encoder", "encoder"),
           "head": Role("params", "vcop_head", "vcop_head")}
  harness = Harness.build(vcop.VCOP, config, roles)
  torch.manual_seed(4)
  modules = {"encoder": reference_torch.build_torch(NAME, width=WIDTH),
             "head": authors.VCOPHead(WIDTH * 8, n, config.vcop.hidden, config.vcop.dropout)}
  run = authors.TorchRun(modules, ("encoder", "head"), LR, 0.9, config.optim.weight_decay)
  rng = np.random.default_rng(4)
  keep = vcop_keep_masks(harness.method, jax.random.PRNGKey(1), STEPS)
  assert all(0.3 < np.mean(k) < 0.7 for k in keep)

  def inputs(step):
    return {"clips": random_clips(rng, n),
            "order": rng.integers(0, 6, BATCH).astype(np.int32)}

  def torch_step(run, x, dtype, step, per_position=False):
    return authors.vcop_step(run, ncdhw(x["clips"], dtype), torch.from_numpy(x["order"]).long(),
                             keep=torch.from_numpy(np.array(keep[step])),
                             per_position=per_position)

  failures = run_parity(harness, run, STEPS, inputs, torch_step, scheduled=False, key_seed=1)
  assert not failures, report(failures)

  # The documented deviation: the authors' per-position statistics, from the same state.
  x = inputs(0)
  theirs, joint, exact = run.clone(torch.float32), run.clone(torch.float32), run.clone()
  before = torch_snapshot(run)
  loss_theirs = torch_step(theirs, x, torch.float32, 0, per_position=True)["loss"]
  loss_joint = torch_step(joint, x, torch.float32, 0)["loss"]
  loss_exact = torch_step(exact, x, torch.float64, 0)["loss"]
  differences = compare(before, torch_snapshot(theirs), torch_snapshot(joint),
                        torch_snapshot(exact), 0)
  differences += compare_scalar("loss", loss_theirs, loss_joint, loss_exact, 0)
  print(f"VCOP per-position BN (the authors') against one batch (ours): loss {loss_theirs:.6f} "
        f"vs {loss_joint:.6f}; {len(differences)} arrays differ beyond tolerance")
  assert any("running_mean" in d for d in differences), differences[:5]
