"""The training loop across processes (issue 12), on localhost with CPU collectives (gloo):
2 processes x 2 devices against 1 process x 4 devices, the same global batch and data; the
2-process checkpoint in a 1-process run; SIGTERM saves, exits 42 and resumes exactly."""

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


def _flags(config: str, data, workdir: str, steps: int, extra=(), save_every: int = 2, batch: int = 8
           ) -> list[str]:
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
          f"--config.train.num_steps={steps}", "--config.train.log_every=1",
          f"--config.train.checkpoint_every={save_every}", "--config.xla_fast_compile=True", *extra]


def _run_job(args: list[str], processes: int, devices: int, timeout: float = 400):
  """main.py as one job of `processes` processes with `devices` CPU devices each."""
  if processes == 1:
    out = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True,
                         text=True, env=multiproc.child_env(devices), timeout=timeout)
    return [multiproc.Result(0, out.returncode, out.stdout, out.stderr)]
  address = f"127.0.0.1:{multiproc.free_port()}"
  procs = [subprocess.Popen(
      [sys.executable, "main.py", *args,
       f"--config.distributed.coordinator_address={address}",
       f"--config.distributed.num_processes={processes}",
       f"--config.distributed.process_id={i}"],
      cwd=ROOT, env=multiproc.child_env(devices), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(processes)]
  return multiproc.wait(procs, timeout=timeout)


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


@pytest.mark.parametrize("config", ["auxskd_r21d_k100.py", "vspp_r21d_k100.py"])
def test_two_processes_match_one_process(config, tiny_prepared, tmp_path):
  extra = ["--config.auxskd.queue_size=16"] if config.startswith("auxskd") else []
  one = str(tmp_path / "one")
  two = str(tmp_path / "two")
  results = _run_job(_flags(config, tiny_prepared, one, 3, extra), processes=1, devices=4)
  assert results[0].returncode == 0, results[0]
  results = _run_job(_flags(config, tiny_prepared, two, 3, extra), processes=2, devices=2)
  for r in results:
    assert r.returncode == 0, r
  l1, l2 = _losses(one), _losses(two)
  assert sorted(l1) == sorted(l2) == [1, 2, 3]
  # step 1 agrees to ~1e-6 and step 3 to ~1e-5 (relative; jax 0.12, measured in CI): the sums
  # associate differently across process counts and training grows the gap (see
  # _assert_trees_close); a wrong shard or a missing all-reduce moves the loss by >= 1e-2
  for step in l1:
    assert abs(l1[step] - l2[step]) <= 1e-4 * max(1.0, abs(l1[step])), (step, l1, l2)
  s1, s2 = _final_state(one), _final_state(two)
  _assert_trees_close(s1["params"], s2["params"])
  if "extras" in s1 and "queue" in s1.get("extras", {}):
    _assert_trees_close(s1["extras"]["queue"], s2["extras"]["queue"])
    assert int(s1["extras"]["queue_ptr"]) == int(s2["extras"]["queue_ptr"]) == 3 * 8 % 16
  # only process 0 wrote the logs, once
  assert len(_losses(two)) == 3
  if config.startswith("auxskd"):
    # the 2 x 2 pretraining continues on 1 x 4 (same global batch) as the 1 x 4 run does
    for workdir in (one, two):
      out = _run_job(_flags(config, tiny_prepared, workdir, 5, extra)
                     + ["--config.resume_overrides=train.num_steps"], processes=1, devices=4)
      assert out[0].returncode == 0, out[0]
    l1, l2 = _losses(one), _losses(two)
    assert sorted(l2) == [1, 2, 3, 4, 5]
    # Both continue exactly from their own step 3; the two step-3 states already differ by the
    # float noise of 2 x 2 vs 1 x 4 (~1e-5 relative), which the next steps carry on.
    for step in (4, 5):
      assert abs(l1[step] - l2[step]) <= 1e-4 * max(1.0, abs(l1[step])), (step, l1, l2)
    # the 2-process checkpoint serves a 1-process, 1-device retrieval
    ret = str(tmp_path / "ret")
    data_dir, name = tiny_prepared
    out_args = [
        "--config=configs/retrieval_r21d_ucf101.py", f"--workdir={ret}",
        f"--config.data.data_dir={data_dir}", f"--config.data.name={name}",
        "--config.model.name=r3d_10", "--config.model.width=4", "--config.clip.clip_len=4",
        "--config.clip.crop_size=16", "--config.clip.eval_clips=2", "--config.eval.topk=(1,)",
        "--config.eval.feature_layer=pool", f"--config.eval.init_from={two}",
        "--config.xla_fast_compile=True"]
    out = _run_job(out_args, processes=1, devices=1)
    assert out[0].returncode == 0, out[0]
    record = json.loads(_read(os.path.join(ret, "results.json")))
    assert 0.0 <= record["metrics"]["top1"] <= 1.0
    # the same evaluation as a 2 x 2 job: each process extracts its share of the videos, the
    # features are gathered, process 0 alone writes the same report
    ret2 = str(tmp_path / "ret2")
    args = [a.replace(ret, ret2) for a in out_args]
    for r in _run_job(args, processes=2, devices=2):
      assert r.returncode == 0, r
    record2 = json.loads(_read(os.path.join(ret2, "results.json")))
    assert record2["metrics"] == record["metrics"]
    assert record2["num_queries"] == record["num_queries"] == 6
    assert record2["num_gallery"] == record["num_gallery"] == 12
    assert len(_read(os.path.join(ret2, "results.md")).splitlines()) == \
        len(_read(os.path.join(ret, "results.md")).splitlines())


def test_sigterm_saves_exits_42_and_resumes_exactly(tiny_prepared, tmp_path):
  from auxskd_jax.train import checkpoint as ckpt_lib
  from auxskd_jax.train import preemption

  steps = 300
  straight = str(tmp_path / "straight")
  stopped = str(tmp_path / "stopped")
  out = _run_job(_flags("vspp_r21d_k100.py", tiny_prepared, straight, steps, save_every=1000), 1, 4)
  assert out[0].returncode == 0, out[0]
  args = _flags("vspp_r21d_k100.py", tiny_prepared, stopped, steps, save_every=1000)
  proc = subprocess.Popen([sys.executable, "main.py", *args], cwd=ROOT,
                          env=multiproc.child_env(4), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  path = os.path.join(stopped, "metrics.jsonl")
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and proc.poll() is None:
    if os.path.exists(path) and len(_read(path).splitlines()) >= 5:
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=200)
  assert proc.returncode == preemption.PREEMPTED_EXIT_CODE, err[-3000:]
  saved = sorted(int(s) for s in os.listdir(ckpt_lib.checkpoint_dir(stopped)) if s.isdigit())
  stop_step = saved[-1]
  assert 5 <= stop_step < steps  # the agreed step itself (no periodic save before the end)
  logged = _losses(stopped)
  assert max(logged) == stop_step
  out = _run_job(args, 1, 4)
  assert out[0].returncode == 0, out[0]
  l_straight, l_resumed = _losses(straight), _losses(stopped)
  assert sorted(l_resumed) == list(range(1, steps + 1))
  assert l_straight == l_resumed  # same process count: bitwise
  _assert_trees_close(_final_state(straight)["params"], _final_state(stopped)["params"],
                      scale_tol=0.0, atol=0.0)  # same process count: bitwise


def test_sigterm_to_a_two_process_job_stops_both_at_one_step(tiny_prepared, tmp_path):
  """SIGTERM to one process of a 2 x 2 job (a preemption notice reaching one host): both stop
  at the same step with status 42, that step is saved, and the restarted job finishes with the
  losses of an uninterrupted 2 x 2 job."""
  from auxskd_jax.train import checkpoint as ckpt_lib
  from auxskd_jax.train import preemption

  steps = 300
  straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
  for r in _run_job(_flags("vspp_r21d_k100.py", tiny_prepared, straight, steps,
                           save_every=1000), 2, 2):
    assert r.returncode == 0, r
  args = _flags("vspp_r21d_k100.py", tiny_prepared, stopped, steps, save_every=1000)
  address = f"127.0.0.1:{multiproc.free_port()}"
  procs = [subprocess.Popen(
      [sys.executable, "main.py", *args, f"--config.distributed.coordinator_address={address}",
       "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
      cwd=ROOT, env=multiproc.child_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  path = os.path.join(stopped, "metrics.jsonl")
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and all(p.poll() is None for p in procs):
    if os.path.exists(path) and len(_read(path).splitlines()) >= 5:
      break
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)
  results = multiproc.wait(procs, timeout=200)
  for r in results:
    assert r.returncode == preemption.PREEMPTED_EXIT_CODE, r
  saved = sorted(int(s) for s in os.listdir(ckpt_lib.checkpoint_dir(stopped)) if s.isdigit())
  assert 5 <= saved[-1] < steps and max(_losses(stopped)) == saved[-1]
  for r in _run_job(args, 2, 2):
    assert r.returncode == 0, r
  assert _losses(stopped) == _losses(straight)


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
