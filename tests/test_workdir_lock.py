"""One job per workdir (auxskd_jax/workdir_lock.py): a second holder is refused in one line
naming the first, a stale lease is taken over with a warning, the holder renews it and gives it
back on exit, and a workdir that cannot be written is refused before anything is written."""

import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import time
import types

import pytest

from auxskd_jax import distributed, workdir_lock
from auxskd_jax.errors import UserError

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(workdir) -> dict:
  with open(os.path.join(workdir, workdir_lock.LEASE_FILE)) as f:
    return json.load(f)


def _plant(workdir, **fields) -> workdir_lock.Holder:
  """A lease record left by someone else (no lock held)."""
  now = time.time()
  holder = workdir_lock.Holder(**{"host": "elsewhere", "pid": 4242, "job_id": "slurm:7",
                                  "token": "theirs", "started": now, "renewed": now, **fields})
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, workdir_lock.LEASE_FILE)
  with open(path + ".planted", "w") as f:
    json.dump(dataclasses.asdict(holder), f)
  os.replace(path + ".planted", path)  # whole, as the lease's own writes are
  return holder


def _dead_pid() -> int:
  child = subprocess.Popen([sys.executable, "-c", "pass"])
  child.wait()
  return child.pid


@pytest.mark.parametrize("locks", [True, False])
def test_a_second_holder_is_refused_in_one_line_naming_the_first(tmp_path, monkeypatch, locks):
  if not locks:  # a filesystem without fcntl locks: the renewal time decides
    monkeypatch.setattr(workdir_lock.Lease, "_try_lock", lambda self: None)
  workdir = str(tmp_path / "run")
  with workdir_lock.Lease(workdir).acquire() as first:
    with pytest.raises(workdir_lock.WorkdirBusy) as e:
      workdir_lock.Lease(workdir).acquire()
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"--workdir={workdir} is in use by")
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
    assert _record(workdir)["token"] == first.holder.token  # the refused run wrote nothing


@pytest.mark.parametrize("case", ["dead_pid", "own_pid", "own_pid_other_ticks", "not_renewed"])
def test_a_stale_lease_is_taken_over_with_a_warning(tmp_path, monkeypatch, caplog, case):
  monkeypatch.setattr(workdir_lock.Lease, "_try_lock", lambda self: None)  # the record decides
  workdir = str(tmp_path / "run")
  if case == "dead_pid":
    _plant(workdir, host=socket.gethostname(), pid=_dead_pid())
    why = "its process is gone"
  elif case == "own_pid":  # a restarted container: same host name, same pid, another process
    _plant(workdir, host=socket.gethostname(), pid=os.getpid(), started=time.time() - 1e6)
    why = "belongs to a newer process"  # an older lease, without start ticks: wall clocks
  elif case == "own_pid_other_ticks":  # the same, told by the process's start ticks
    _plant(workdir, host=socket.gethostname(), pid=os.getpid(),
           start_ticks=workdir_lock._process_start_ticks(os.getpid()) - 1)
    why = "belongs to another process"
  else:
    _plant(workdir, renewed=time.time() - 5)
    why = "not renewed for"
  with caplog.at_level(logging.WARNING):
    lease = workdir_lock.Lease(workdir, stale_after_s=1).acquire()
  try:
    assert _record(workdir)["token"] == lease.holder.token
    warned = [r.getMessage() for r in caplog.records if "Taking over the stale lease" in
              r.getMessage()]
    assert warned and why in warned[0], caplog.text
  finally:
    lease.release()


def test_a_fresh_lease_of_another_host_is_refused_without_locks(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lock.Lease, "_try_lock", lambda self: None)
  workdir = str(tmp_path / "run")
  _plant(workdir)
  with pytest.raises(workdir_lock.WorkdirBusy, match="pid 4242 on host elsewhere, job slurm:7"):
    workdir_lock.Lease(workdir, stale_after_s=60).acquire()


def test_the_lock_decides_over_a_fresh_record_whose_holder_is_gone(tmp_path, caplog):
  """A record that looks live (another host, just renewed) but whose lock nobody holds."""
  workdir = str(tmp_path / "run")
  _plant(workdir)
  with caplog.at_level(logging.WARNING):
    with workdir_lock.Lease(workdir).acquire():
      assert "no process holds its lock" in caplog.text


def test_the_holder_renews_and_releases_on_exit(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_lock.hold(workdir, renew_every_s=0.05) as lease:
    first = _record(workdir)["renewed"]
    deadline = time.time() + 10
    while _record(workdir)["renewed"] == first and time.time() < deadline:
      time.sleep(0.05)
    assert _record(workdir)["renewed"] > first
    assert lease.release in distributed._ABORT_HOOKS  # a watchdog's os._exit gives it back
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LEASE_FILE))
  assert lease.release not in distributed._ABORT_HOOKS
  with pytest.raises(RuntimeError):  # released on an error too
    with workdir_lock.hold(workdir):
      raise RuntimeError("boom")
  with workdir_lock.hold(workdir):  # free again
    pass


def test_a_holder_that_lost_its_lease_stops(tmp_path, monkeypatch, capsys):
  workdir = str(tmp_path / "run")
  lease = workdir_lock.Lease(workdir, renew_every_s=0.05).acquire()
  exits = []

  def fake_exit(code):  # os._exit does not return: nothing after it may write
    exits.append(code)
    monkeypatch.setattr(workdir_lock, "_write", lambda *args: None)
    lease._stop.set()

  monkeypatch.setattr(workdir_lock.os, "_exit", fake_exit)
  _plant(workdir, token="usurper")
  lease._thread.join(timeout=10)
  lease.release()
  assert exits == [2]
  assert "lost the lease" in capsys.readouterr().err
  assert _record(workdir)["token"] == "usurper"  # neither overwritten nor removed


def test_another_process_checks_it_joined_the_job_holding_the_lease(tmp_path, monkeypatch):
  """Process 1 of a job: process 0's token (from the all-gather) must be in lease.json."""
  import jax

  workdir = str(tmp_path / "run")
  _plant(workdir, token="another-job")
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  chief = {"ok": True, "error": "", "token": "this-job"}
  monkeypatch.setattr(workdir_lock, "_agree", lambda mine: [chief, mine])
  with pytest.raises(UserError, match="process 1 sees pid 4242 on host elsewhere"):
    with workdir_lock.hold(workdir):
      pass
  _plant(workdir, token="this-job")
  with workdir_lock.hold(workdir) as lease:
    assert lease is None  # only process 0 holds it


def test_unwritable_workdirs_are_refused_before_anything_is_written(tmp_path, monkeypatch):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  with pytest.raises(UserError, match=r"is a file, not a directory"):
    workdir_lock.check_writable(str(a_file))
  with pytest.raises(UserError, match=r"is a file, so the workdir cannot be created"):
    workdir_lock.check_writable(str(a_file / "run"))
  workdir_lock.check_writable(str(tmp_path / "new" / "run"))  # to be created: fine
  assert not (tmp_path / "new").exists()
  monkeypatch.setattr(workdir_lock, "MIN_FREE_BYTES", 1 << 62)
  with pytest.raises(UserError, match=r"is full \(\d+ MiB free\)"):
    workdir_lock.check_writable(str(tmp_path / "run"))


def test_a_read_only_filesystem_is_refused(tmp_path, monkeypatch):
  """A read-only mount (statvfs's ST_RDONLY), which binds root too."""
  real = os.statvfs(str(tmp_path))
  fake = types.SimpleNamespace(f_flag=real.f_flag | os.ST_RDONLY, f_bavail=real.f_bavail,
                               f_frsize=real.f_frsize)
  monkeypatch.setattr(workdir_lock.os, "statvfs", lambda path: fake)
  with pytest.raises(UserError, match=r"is read-only \(a read-only filesystem"):
    workdir_lock.check_writable(str(tmp_path / "run"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_workdir_is_refused(tmp_path):
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o555)
  try:
    for workdir in (ro, ro / "run"):
      with pytest.raises(UserError, match=r"is read-only"):
        workdir_lock.check_writable(str(workdir))
  finally:
    ro.chmod(0o755)


def test_cli_refuses_a_second_run_on_a_held_workdir(tmp_path):
  """End to end: main.py on a workdir whose lease this test process holds exits 2, one line."""
  workdir = str(tmp_path / "demo")
  with workdir_lock.Lease(workdir).acquire():
    out = subprocess.run([sys.executable, "main.py", f"--workdir={workdir}"], cwd=_ROOT,
                         capture_output=True, text=True, timeout=300)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert f"is in use by pid {os.getpid()} on host {socket.gethostname()}" in lines[0]
  assert sorted(os.listdir(workdir)) == [workdir_lock.LOCK_FILE]  # nothing else written


_STOPPED_HOLDER = """
import sys, time
from auxskd_jax import workdir_lock
lease = workdir_lock.Lease(sys.argv[1], renew_every_s=0.1).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_lock_holder_that_stopped_renewing_loses_the_lease_and_exits(tmp_path, caplog):
  """A live process holds the fcntl lock but is stopped (SIGSTOP): once its lease is older than
  stale_after it is taken over with a warning, and on SIGCONT the old holder exits with 2."""
  import signal

  workdir = str(tmp_path / "run")
  child = subprocess.Popen([sys.executable, "-c", _STOPPED_HOLDER, workdir], cwd=_ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    assert child.stdout.readline().strip() == "held", child.stderr.read()
    with pytest.raises(workdir_lock.WorkdirBusy):  # renewing: refused, lock or not
      workdir_lock.Lease(workdir, stale_after_s=1).acquire()
    os.kill(child.pid, signal.SIGSTOP)
    time.sleep(1.5)
    with caplog.at_level(logging.WARNING):
      lease = workdir_lock.Lease(workdir, stale_after_s=1).acquire()
    try:
      assert _record(workdir)["token"] == lease.holder.token
      assert "not renewed for" in caplog.text and "still holds the lock" in caplog.text
      os.kill(child.pid, signal.SIGCONT)
      assert child.wait(timeout=30) == 2
      assert "lost the lease" in child.stderr.read()
      assert _record(workdir)["token"] == lease.holder.token  # the old holder wrote nothing
    finally:
      lease.release()
  finally:
    if child.poll() is None:
      os.kill(child.pid, signal.SIGCONT)
      child.kill()
      child.wait()


def test_a_live_holder_is_not_taken_for_a_reused_pid_after_the_clock_moved(tmp_path,
                                                                            monkeypatch):
  """Its start ticks match its pid's, so a wall clock stepped since (the lease's start time
  far from what /proc's boot time gives now) does not make it look like another process."""
  monkeypatch.setattr(workdir_lock.Lease, "_try_lock", lambda self: None)  # the record decides
  workdir = str(tmp_path / "run")
  _plant(workdir, host=socket.gethostname(), pid=os.getpid(), started=time.time() - 1e6,
         start_ticks=workdir_lock._process_start_ticks(os.getpid()))
  with pytest.raises(workdir_lock.WorkdirBusy):
    workdir_lock.Lease(workdir, stale_after_s=60).acquire()
  assert _record(workdir)["token"] == "theirs"


def test_lease_times_come_from_the_config_and_bad_ones_name_the_key():
  from auxskd_jax import config as config_lib

  config = config_lib.base_config()
  assert workdir_lock.settings(config) == {"renew_every_s": 30.0, "stale_after_s": 300.0}
  config.lease.stale_after = 900
  assert workdir_lock.settings(config)["stale_after_s"] == 900.0
  assert workdir_lock.settings({}) == {"renew_every_s": workdir_lock.RENEW_EVERY_S,
                                       "stale_after_s": workdir_lock.STALE_AFTER_S}
  config.lease.renew_every = 0
  with pytest.raises(UserError, match=r"^--config\.lease\.renew_every=0: give a positive"):
    workdir_lock.settings(config)
  config.lease.renew_every = 600
  with pytest.raises(UserError, match=r"^--config\.lease\.stale_after=900: give at least twice"):
    workdir_lock.settings(config)


def test_ctrl_c_before_the_loop_is_one_line_and_gives_the_lease_back(tiny_prepared, tmp_path):
  """SIGINT once the run holds its lease (it is loading data and compiling): status 130, one
  line, no traceback, and lease.json is gone, so the same command can start again at once."""
  import signal

  data_dir, name = tiny_prepared
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen(
      [sys.executable, "main.py", "--config=configs/vspp_r21d_k100.py", f"--workdir={workdir}",
       f"--config.data.data_dir={data_dir}", f"--config.data.name={name}",
       "--config.model.name=r3d_10", "--config.model.width=4", "--config.clip.clip_len=4",
       "--config.clip.num_segments=2", "--config.clip.max_speed=2", "--config.clip.crop_size=16",
       "--config.train.batch_size=4", "--config.train.num_steps=2"],
      cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  lease = os.path.join(workdir, workdir_lock.LEASE_FILE)
  deadline = time.time() + 120
  while not os.path.exists(lease) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("I1", "W1"))]
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err and lines[-1].startswith("Interrupted (Ctrl-C) outside a "
                                                         "training loop"), err[-3000:]
  assert not os.path.exists(lease)


_SIGTERM_AS_THE_LEASE_APPEARS = r"""
import os, signal, sys, time
from auxskd_jax import workdir_lock
from auxskd_jax.train import preemption

preemption.install_early_sigterm()
acquire = workdir_lock.Lease.acquire

def acquire_then_sigterm(self):
  out = acquire(self)  # lease.json is written: the earliest a SIGTERM can find it
  os.kill(os.getpid(), signal.SIGTERM)
  time.sleep(5)  # the early handler exits (status 42) before this returns
  return out

workdir_lock.Lease.acquire = acquire_then_sigterm
with workdir_lock.hold(sys.argv[1]):
  pass
print("not stopped")
"""


def test_a_sigterm_the_moment_the_lease_is_taken_gives_it_back(tmp_path):
  """The release is registered for an early exit before the lease is taken, so a SIGTERM right
  after lease.json appears (as a scheduler's may be) exits 42 and leaves no lease behind."""
  workdir = str(tmp_path / "run")
  out = subprocess.run([sys.executable, "-c", _SIGTERM_AS_THE_LEASE_APPEARS, workdir],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 42, out.stdout + out.stderr[-2000:]
  assert "not stopped" not in out.stdout
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LEASE_FILE))


def _release_from_another_thread(lease) -> tuple:
  """Starts lease.release in a new thread, as the early signal handler's watcher does; returns
  (what it raised, filled in by the time the thread ends: empty when nothing; the thread)."""
  import threading

  raised = []

  def release():
    try:
      lease.release()
    except Exception as e:  # pylint: disable=broad-except
      raised.append(e)

  thread = threading.Thread(target=release)
  thread.start()
  return raised, thread


def test_a_release_from_another_thread_before_the_renewal_starts_gives_the_lease_back(
    tmp_path, monkeypatch):
  """The watcher thread may release while acquire is creating the renewal thread (the CI race:
  SIGINT the moment lease.json appears). Joining a created but unstarted thread raises, and the
  lease stayed behind."""
  import threading

  workdir = str(tmp_path / "run")
  lease = workdir_lock.Lease(workdir)
  seen = {}

  class ReleasedFirst(threading.Thread):
    def start(self):
      seen["raised"], releaser = _release_from_another_thread(lease)
      releaser.join(10)
      super().start()

  monkeypatch.setattr(workdir_lock, "threading",
                      types.SimpleNamespace(**{**vars(threading), "Thread": ReleasedFirst}))
  lease.acquire()
  assert seen["raised"] == []
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LEASE_FILE))
  lease._thread.join(5)  # the renewal thread saw the stop and ended without writing
  assert not lease._thread.is_alive()
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LEASE_FILE))


def test_a_release_during_the_write_waits_for_it_and_removes_the_lease(tmp_path, monkeypatch):
  """A release that comes while lease.json is being written removes it once it is written;
  without waiting it found no lease, and the write then left one behind."""
  workdir = str(tmp_path / "run")
  lease = workdir_lock.Lease(workdir)
  write = workdir_lock._write
  seen = {}

  def slow_write(*args):
    if "thread" not in seen:
      seen["raised"], seen["thread"] = _release_from_another_thread(lease)
      time.sleep(0.3)  # the release runs now, mid-write
    write(*args)

  monkeypatch.setattr(workdir_lock, "_write", slow_write)
  lease.acquire()
  seen["thread"].join(10)
  assert seen["raised"] == []
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LEASE_FILE))


def test_a_keyboard_interrupt_inside_acquire_gives_the_lease_back(tmp_path, monkeypatch):
  """Ctrl-C with Python's own handler (the API, no early handler) once lease.json is written,
  before acquire returns: hold's cleanup still removes it."""
  import threading

  class Interrupted(threading.Thread):
    def start(self):
      raise KeyboardInterrupt

  monkeypatch.setattr(workdir_lock, "threading",
                      types.SimpleNamespace(**{**vars(threading), "Thread": Interrupted}))
  workdir = str(tmp_path / "run")
  with pytest.raises(KeyboardInterrupt):
    with workdir_lock.hold(workdir):
      pass
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LEASE_FILE))
