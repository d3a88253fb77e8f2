"""The training loop end to end through main.py, and across processes (issue 12) on localhost
with CPU collectives (gloo): 2 processes x 2 devices against 1 process x 4 devices, the same
global batch and data; the 2-process checkpoint in a 1-process run and in retrieval; SIGTERM
saves, exits 42 and resumes exactly; SIGKILL and resume ends bitwise-equal; VSPP starts from
an auxSKD checkpoint.

Each test launches every run it compares once (a main.py launch costs imports and compiles),
and the runs to interrupt are set far longer than they get to run, so the signal always lands
mid-run; the uninterrupted runs to compare with start once the stop step is known."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import multiproc

ROOT = multiproc.ROOT
pytestmark = pytest.mark.slow
# The session's compilation cache (tests/conftest.py), not the user's ~/.cache (the config's
# default): every launch here compiles the programs the launches before it compiled.
_CACHE = f"--config.compilation_cache_dir={os.environ['JAX_COMPILATION_CACHE_DIR']}"


def _flags(config: str, data, workdir: str, steps: int, extra=(), save_every: int = 2,
           batch: int = 8, log_every: int = 1) -> list[str]:
  data_dir, name = data
  return [f"--config=configs/{config}", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", f"--config.data.name={name}",
          "--config.model.name=r3d_10", "--config.model.width=4", "--config.clip.clip_len=4",
          "--config.clip.num_segments=2", "--config.clip.max_speed=2",
          "--config.clip.crop_size=16", f"--config.train.batch_size={batch}",
          # PyTorch's default init leaves a width-4 network with many pre-activations near 0,
          # where the float noise of different all-reduce orders flips ReLUs and grows ~1000x a
          # step (measured); Kaiming init keeps a 2 x 2 run within 1e-5 of a 1 x 4 one.
          "--config.model.init=kaiming",
          f"--config.train.num_steps={steps}", f"--config.train.log_every={log_every}",
          f"--config.train.checkpoint_every={save_every}", "--config.xla_fast_compile=True",
          _CACHE, *extra]


def _launch_job(args: list[str], processes: int, devices: int) -> list[subprocess.Popen]:
  """Starts main.py as one job of `processes` processes with `devices` CPU devices each."""
  if processes == 1:
    return [subprocess.Popen([sys.executable, "main.py", *args], cwd=ROOT,
                             env=multiproc.child_env(devices), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)]
  address = f"127.0.0.1:{multiproc.free_port()}"
  return [subprocess.Popen(
      [sys.executable, "main.py", *args,
       f"--config.distributed.coordinator_address={address}",
       f"--config.distributed.num_processes={processes}",
       f"--config.distributed.process_id={i}"],
      cwd=ROOT, env=multiproc.child_env(devices), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(processes)]


def _run_job(args: list[str], processes: int, devices: int, timeout: float = 400):
  """main.py as one job of `processes` processes with `devices` CPU devices each, to the end."""
  return multiproc.wait(_launch_job(args, processes, devices), timeout=timeout)


def _ok(results) -> None:
  for r in results:
    assert r.returncode == 0, r


def _read(path: str) -> str:
  with open(path) as f:
    return f.read()


def _losses(workdir: str) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in rows if r.get("split") == "train"}


def _final_state(workdir: str) -> dict:
  from auxskd_jax.train import checkpoint as ckpt_lib

  return ckpt_lib.restore_variables(workdir)


def _assert_trees_close(a, b, scale_tol=5e-3, atol=1e-6):
  """Leaf by leaf, |a - b| <= scale_tol * max|a| + atol. Across process counts the all-reduces
  (gloo vs in-process) and the compiled programs differ, so sums associate differently: step-1
  gradients agree to about 1e-5 of their scale, and a few steps of training (the sharp 0.02
  teacher temperature most) grow that to about 1e-3 of a parameter's scale (measured)."""
  import jax

  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert x.shape == y.shape
    if x.size:
      assert np.abs(x - y).max() <= scale_tol * np.abs(x).max() + atol


def _rows(workdir: str) -> list[dict]:
  """The train rows of metrics.jsonl, in file order."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r.get("split") == "train"]


def _saved_steps(workdir: str) -> list[int]:
  from auxskd_jax.train import checkpoint as ckpt_lib

  return sorted(int(s) for s in os.listdir(ckpt_lib.checkpoint_dir(workdir)) if s.isdigit())


def _step_state(workdir: str, step: int) -> dict:
  """The state saved at `step` (kept: the runs that need it set keep_checkpoints high)."""
  from auxskd_jax.train import checkpoint as ckpt_lib

  return ckpt_lib.restore_variables(os.path.join(ckpt_lib.checkpoint_dir(workdir), str(step)))


def _assert_losses_close(l1: dict, l2: dict, steps) -> None:
  # step 1 agrees to ~1e-6 and step 3 to ~1e-5 (relative; jax 0.12, measured in CI): the sums
  # associate differently across process counts and training grows the gap (see
  # _assert_trees_close); a wrong shard or a missing all-reduce moves the loss by >= 1e-2
  for step in steps:
    assert abs(l1[step] - l2[step]) <= 1e-4 * max(1.0, abs(l1[step])), (step, l1, l2)


def _sigterm_once_logged(args: list[str], workdir: str, processes: int, devices: int,
                         target: int, logged: int) -> int:
  """Starts main.py (a long run), SIGTERMs process `target` once `logged` steps are logged,
  checks that every process exits 42 having saved the agreed step (and only it: no periodic
  save), and returns that step."""
  from auxskd_jax.train import preemption

  procs = _launch_job(args, processes, devices)
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and all(p.poll() is None for p in procs):
    if os.path.exists(path) and len(_read(path).splitlines()) >= logged:
      break
    time.sleep(0.05)
  multiproc.send(procs[target], signal.SIGTERM)
  for r in multiproc.wait(procs, timeout=200):
    assert r.returncode == preemption.PREEMPTED_EXIT_CODE, r
  saved = _saved_steps(workdir)
  assert len(saved) == 1 and saved[0] >= logged, saved  # the agreed step itself
  assert max(_losses(workdir)) == saved[0]
  return saved[0]


def test_vspp_sigterm_resumes_exactly_in_one_and_two_processes_which_match(tiny_prepared,
                                                                          tmp_path):
  """VSPP through main.py. SIGTERM to a 1 x 4 run, and to one process of a 2 x 2 job (a
  preemption notice reaching one host): every process stops at one agreed step s with status
  42, that step alone is saved, and the restarted run (told to end at s + 2) ends bitwise-equal
  to an uninterrupted run of s + 2 steps with the same process count. The uninterrupted 1 x 4
  and 2 x 2 runs (same global batch and data) agree to the float noise of their all-reduces.

  The signalled runs are set 10**4 steps so the signal always lands mid-run; the straight runs
  are started only once s is known. The 'step' schedule (x0.1 every 6 epochs of 15 steps) and
  everything else a step computes do not depend on train.num_steps."""
  cfg, long = "vspp_r21d_k100.py", 10_000
  jobs = {"1x4": (1, 4, 0), "2x2": (2, 2, 1)}  # processes, devices each, the one signalled
  ends = {}
  for name, (processes, devices, target) in jobs.items():
    stopped = str(tmp_path / f"stopped_{name}")
    stop = _sigterm_once_logged(
        _flags(cfg, tiny_prepared, stopped, long, save_every=1000), stopped, processes, devices,
        target, logged=2)
    ends[name] = stop + 2
  for name, (processes, devices, _) in jobs.items():
    # step 3 is kept for the 1 x 4 vs 2 x 2 comparison
    _ok(_run_job(_flags(cfg, tiny_prepared, str(tmp_path / f"straight_{name}"), ends[name],
                        ["--config.train.keep_checkpoints=50"], save_every=3),
                 processes, devices))
    stopped = str(tmp_path / f"stopped_{name}")
    _ok(_run_job(_flags(cfg, tiny_prepared, stopped, ends[name],
                        ["--config.resume_overrides=train.num_steps"], save_every=1000),
                 processes, devices))
  for name in jobs:
    straight, stopped = str(tmp_path / f"straight_{name}"), str(tmp_path / f"stopped_{name}")
    l_straight, l_resumed = _losses(straight), _losses(stopped)
    assert sorted(l_resumed) == list(range(1, ends[name] + 1))
    assert l_straight == l_resumed  # same process count: bitwise
    _assert_trees_close(_final_state(straight)["params"], _final_state(stopped)["params"],
                        scale_tol=0.0, atol=0.0)  # same process count: bitwise
  one, two = str(tmp_path / "straight_1x4"), str(tmp_path / "straight_2x2")
  _assert_losses_close(_losses(one), _losses(two), (1, 2, 3))
  _assert_trees_close(_step_state(one, 3)["params"], _step_state(two, 3)["params"])
  # only process 0 wrote the logs, once
  assert [r["step"] for r in _rows(two)] == list(range(1, ends["2x2"] + 1))


def test_auxskd_two_processes_match_one_kill_resume_bitwise_retrieval_and_vspp_from_it(
    tiny_prepared, tmp_path):
  """auxSKD through main.py. A 1 x 4 run SIGKILLed once its first checkpoint exists resumes
  to end bitwise-equal to an uninterrupted run (state, teacher, queue, optimizer); a 2 x 2 run
  matches the 1 x 4 one to the float noise of the all-reduces; its checkpoint serves a 1-device
  and a 2 x 2 retrieval with the same report, then continues on 1 x 4 as the 1 x 4 run does;
  VSPP then starts from the auxSKD checkpoint.

  The killed run is set 1000 steps so the kill always lands mid-run; the uninterrupted run is
  started once the killed run's last checkpoint k is known, and the resume is told its length
  (train.num_steps does not change what a step computes: the schedule counts epochs)."""
  from auxskd_jax.train import checkpoint as ckpt_lib

  cfg, extra = "auxskd_r21d_k100.py", ["--config.auxskd.queue_size=16"]
  keep = ["--config.train.keep_checkpoints=50"]
  killed, one, two = (str(tmp_path / n) for n in ("killed", "one", "two"))
  (proc,) = _launch_job(_flags(cfg, tiny_prepared, killed, 1000, extra + keep, save_every=3),
                        1, 4)
  first = os.path.join(ckpt_lib.checkpoint_dir(killed), "3")
  still_running = multiproc.kill_once_exists(proc, first, timeout=600)
  proc.communicate()
  assert still_running, "the run ended before it could be killed mid-training"
  steps = max(5, _saved_steps(killed)[-1] + 2)

  _ok(_run_job(_flags(cfg, tiny_prepared, one, steps, extra + keep, save_every=3), 1, 4))
  assert json.loads(_read(os.path.join(one, "config.json")))["task"] == "auxskd"
  rows = _rows(one)
  assert [r["step"] for r in rows] == list(range(1, steps + 1))
  assert all(np.isfinite(r["loss"]) for r in rows)
  # the first step's row has no throughput (compilation); every later one has
  assert "clips_per_sec" not in rows[0] and all(r["clips_per_sec"] > 0 for r in rows[1:])

  _ok(_run_job(_flags(cfg, tiny_prepared, killed, steps,
                      extra + keep + ["--config.resume_overrides=train.num_steps"],
                      save_every=3), 1, 4))
  a, b = _final_state(one), _final_state(killed)
  assert int(a["step"]) == int(b["step"]) == steps
  for key in ("params", "batch_stats", "extras", "opt_state"):
    _assert_trees_close(a[key], b[key], scale_tol=0.0, atol=0.0)  # same process count: bitwise
  assert _losses(one) == _losses(killed)

  _ok(_run_job(_flags(cfg, tiny_prepared, two, 3, extra, save_every=3), processes=2, devices=2))
  l1, l2 = _losses(one), _losses(two)
  assert sorted(l2) == [1, 2, 3]
  _assert_losses_close(l1, l2, (1, 2, 3))
  s1, s2 = _step_state(one, 3), _final_state(two)
  _assert_trees_close(s1["params"], s2["params"])
  _assert_trees_close(s1["extras"]["queue"], s2["extras"]["queue"])
  assert int(s1["extras"]["queue_ptr"]) == int(s2["extras"]["queue_ptr"]) == 3 * 8 % 16
  # only process 0 wrote the logs, once
  assert [r["step"] for r in _rows(two)] == [1, 2, 3]
  # the 2-process checkpoint (step 3, the only one `two` holds yet) serves a 1-process,
  # 1-device retrieval
  assert _saved_steps(two) == [3]
  ret = str(tmp_path / "ret")
  data_dir, name = tiny_prepared
  out_args = [
      "--config=configs/retrieval_r21d_ucf101.py", f"--workdir={ret}",
      f"--config.data.data_dir={data_dir}", f"--config.data.name={name}",
      "--config.model.name=r3d_10", "--config.model.width=4", "--config.clip.clip_len=4",
      "--config.clip.crop_size=16", "--config.clip.eval_clips=2", "--config.eval.topk=(1,)",
      "--config.eval.feature_layer=pool", f"--config.eval.init_from={two}",
      "--config.xla_fast_compile=True", _CACHE]
  _ok(_run_job(out_args, processes=1, devices=1))
  record = json.loads(_read(os.path.join(ret, "results.json")))
  assert 0.0 <= record["metrics"]["top1"] <= 1.0
  # the same evaluation as a 2 x 2 job: each process extracts its share of the videos, the
  # features are gathered, process 0 alone writes the same report
  ret2 = str(tmp_path / "ret2")
  _ok(_run_job([a.replace(ret, ret2) for a in out_args], processes=2, devices=2))
  record2 = json.loads(_read(os.path.join(ret2, "results.json")))
  assert record2["metrics"] == record["metrics"]
  assert record2["num_queries"] == record["num_queries"] == 6
  assert record2["num_gallery"] == record["num_gallery"] == 12
  assert len(_read(os.path.join(ret2, "results.md")).splitlines()) == \
      len(_read(os.path.join(ret, "results.md")).splitlines())

  # the 2 x 2 pretraining continues on 1 x 4 (same global batch) as the 1 x 4 run does
  _ok(_run_job(_flags(cfg, tiny_prepared, two, 5, extra, save_every=5)
               + ["--config.resume_overrides=train.num_steps"], processes=1, devices=4))
  l2 = _losses(two)
  assert sorted(l2) == [1, 2, 3, 4, 5]
  # The two step-3 states already differ by the float noise of 2 x 2 vs 1 x 4 (~1e-5
  # relative), which the next steps carry on.
  _assert_losses_close(l1, l2, (4, 5))

  # VSPP from the auxSKD checkpoint; log_every=2 over 3 steps logs steps 2 and 3 (the last)
  vspp = str(tmp_path / "vspp")
  (out,) = _run_job(_flags("vspp_r21d_k100.py", tiny_prepared, vspp, 3,
                           [f"--config.train.init_from={one}", "--verbose"], log_every=2,
                           save_every=3), 1, 4)
  assert out.returncode == 0, out
  assert "loaded layers: " in out.stderr and "conv1/temporal_spatial_conv" in out.stderr
  rows = _rows(vspp)
  assert [r["step"] for r in rows] == [2, 3]
  assert all(np.isfinite(r["loss"]) and r["clips_per_sec"] > 0 for r in rows)
  assert {"accuracy_speed", "accuracy_segment"} <= set(rows[-1])


@pytest.mark.parametrize("per_process,needle", [
    ([[], []], "train.batch_size"),  # 6 does not divide over 2 x 2 devices
    ([["--config.seed=1"], []], "seed"),  # processes started with different configs
])
def test_bad_jobs_fail_clearly_in_every_process(per_process, needle, tiny_prepared, tmp_path):
  args = _flags("vspp_r21d_k100.py", tiny_prepared, str(tmp_path / "run"), 2, batch=6
                if needle == "train.batch_size" else 8)
  address = f"127.0.0.1:{multiproc.free_port()}"
  procs = [subprocess.Popen(
      [sys.executable, "main.py", *args, *per_process[i],
       f"--config.distributed.coordinator_address={address}",
       "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
      cwd=ROOT, env=multiproc.child_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  for r in multiproc.wait(procs, timeout=200):
    assert r.returncode == 2, r
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) <= 5 and needle in r.stderr, r
  assert not os.path.exists(os.path.join(str(tmp_path / "run"), "config.json"))
