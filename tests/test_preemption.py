"""PreemptionGuard: a signal stops every process at one agreed step with the documented exit
status; a second Ctrl-C exits at once; the old handlers come back."""

import json
import os
import signal
import pytest

from auxskd_jax.train import preemption
from tests import multiproc


def test_single_process_signal_stops_at_the_next_step():
  old_term, old_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
  with preemption.PreemptionGuard(sync_every=5) as guard:
    assert not guard.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.requested
    assert guard.should_stop(2)  # one process: no need to wait for a sync step
    assert guard.stop_step == 2 and guard.reason == "SIGTERM"
    assert guard.should_stop(2)  # asking again for the same step gives the same answer
  assert signal.getsignal(signal.SIGTERM) == old_term
  assert signal.getsignal(signal.SIGINT) == old_int


def test_first_ctrl_c_is_a_request_and_restores_the_handler_after():
  old_int = signal.getsignal(signal.SIGINT)
  with preemption.PreemptionGuard() as guard:
    os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: a request to save and stop
    assert guard.should_stop(1) and guard.reason == "SIGINT (Ctrl-C)"
    assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL  # the next one kills
  assert signal.getsignal(signal.SIGINT) == old_int


_TWICE = r"""
import time
from auxskd_jax.train import preemption
with preemption.PreemptionGuard() as guard:
  print("ready", flush=True)
  while True:
    time.sleep(0.02)
    if guard.requested:
      print("requested", flush=True)
      while True:
        time.sleep(0.02)  # a long step: never reaches should_stop
"""


def test_second_ctrl_c_exits_at_once():
  (proc,) = multiproc.launch(_TWICE, 1, devices=1)
  try:
    multiproc.read_until(proc, "ready")
    proc.send_signal(signal.SIGINT)
    multiproc.read_until(proc, "requested", timeout=30)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
  finally:
    multiproc.kill([proc])
  assert proc.returncode == -signal.SIGINT  # the shell's 130


_LOOP = r"""
import json, sys, time
from tests import multiproc
multiproc.init_from_env(60)
import jax, jax.numpy as jnp
from auxskd_jax.train import preemption

step_fn = jax.pmap(lambda x: jax.lax.psum(x, "b"), axis_name="b")  # keeps the processes in step
x = jnp.ones(jax.local_device_count())
with preemption.PreemptionGuard(sync_every=4) as guard:
  for step in range(1, 5000):
    step_fn(x).block_until_ready()
    if step == 3:
      print("ready", flush=True)
    time.sleep(0.01)
    if guard.should_stop(step):
      # the loop saves its checkpoint at `step` here
      print("STOP " + json.dumps({"step": step, "reason": guard.reason}), flush=True)
      sys.exit(preemption.PREEMPTED_EXIT_CODE)
print("STOP never", flush=True)
"""


def _stops(results):
  stops = []
  for r in results:
    assert r.returncode == preemption.PREEMPTED_EXIT_CODE, str(r)
    line = [l for l in r.stdout.splitlines() if l.startswith("STOP ")][-1]
    stops.append(json.loads(line[len("STOP "):]))
  return stops


@pytest.mark.parametrize("sig,target", [(signal.SIGTERM, 1), (signal.SIGINT, 0)])
def test_a_signal_to_one_process_stops_all_at_one_step(sig, target):
  """SIGTERM goes through jax's preemption service; SIGINT through the guard's own agreement
  (every `sync_every` steps). Either way both processes stop after the same step."""
  procs = multiproc.launch(_LOOP, 2, devices=2)
  try:
    multiproc.read_until(procs[target], "ready")
  except AssertionError:
    multiproc.kill(procs)
    raise
  multiproc.send(procs[target], sig)
  results = multiproc.wait(procs, timeout=120)
  first, second = _stops(results)
  assert first == second, results
  assert first["step"] > 3
  if sig == signal.SIGINT:
    assert first["step"] % 4 == 0 and first["reason"] == "SIGINT (Ctrl-C)"
  else:
    assert first["reason"] == "preemption notice"


def test_preempted_names_the_step_and_exit_code():
  e = preemption.Preempted(17, "SIGTERM")
  assert e.step == 17 and e.exit_code == preemption.PREEMPTED_EXIT_CODE == 42
  assert "step 17" in str(e) and "SIGTERM" in str(e)

# The loop's SIGTERM test (one process and two) is tests/test_multihost_train.py.


def test_the_early_handler_hands_over_to_the_guard_and_back():
  old, old_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
  try:
    assert preemption.install_early_sigterm()
    assert signal.getsignal(signal.SIGTERM) is preemption._early_handler
    assert signal.getsignal(signal.SIGINT) is preemption._early_handler  # Ctrl-C: 130 at once
    with preemption.PreemptionGuard():
      handler = signal.getsignal(signal.SIGTERM)
      assert handler is not preemption._early_handler
      os.kill(os.getpid(), signal.SIGTERM)  # the guard's: a request, no exit (the watcher
      assert _wait_for(lambda: handler.__self__.requested)  # thread sees it and stands by)
    assert signal.getsignal(signal.SIGTERM) is preemption._early_handler
    assert signal.getsignal(signal.SIGINT) is preemption._early_handler
  finally:
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, old)
    signal.signal(signal.SIGINT, old_int)


def _wait_for(predicate, seconds: float = 10.0) -> bool:
  import time

  deadline = time.monotonic() + seconds
  while not predicate() and time.monotonic() < deadline:
    time.sleep(0.01)
  return predicate()


def test_sigterm_before_the_first_step_exits_42_and_the_restart_trains(tiny_prepared, tmp_path):
  """main.py gets SIGTERM as soon as it took the workdir's lease (building and compiling the
  state, before any step): status 42 at once, one line, nothing saved, the lease given back;
  the same command then trains to the end."""
  import subprocess
  import sys
  import time

  from auxskd_jax import workdir_lock
  from auxskd_jax.train import checkpoint as ckpt_lib

  data_dir, name = tiny_prepared
  workdir = str(tmp_path / "run")
  args = [sys.executable, "main.py", "--config=configs/vspp_r21d_k100.py", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", f"--config.data.name={name}",
          "--config.model.name=r3d_10", "--config.model.width=4", "--config.clip.clip_len=4",
          "--config.clip.num_segments=2", "--config.clip.max_speed=2",
          "--config.clip.crop_size=16", "--config.train.batch_size=4",
          "--config.train.num_steps=2", "--config.train.log_every=1",
          "--config.xla_fast_compile=True"]
  env = multiproc.child_env(2)
  proc = subprocess.Popen(args, cwd=multiproc.ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  lease = os.path.join(workdir, workdir_lock.LEASE_FILE)
  deadline = time.monotonic() + 120
  while proc.poll() is None and not os.path.exists(lease) and time.monotonic() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == preemption.PREEMPTED_EXIT_CODE, err[-3000:]
  assert "Traceback" not in err and "SIGTERM" in err.strip().splitlines()[-1], err[-3000:]
  assert not os.path.exists(lease)  # given back
  checkpoints = ckpt_lib.checkpoint_dir(workdir)
  assert not os.path.isdir(checkpoints) or not [s for s in os.listdir(checkpoints)
                                                 if s.isdigit()]
  out = subprocess.run(args, cwd=multiproc.ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f if '"train"' in line]
  assert steps == [1, 2]
