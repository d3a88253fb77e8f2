"""Launches N python processes on localhost as one `jax.distributed` job, for tests.

Each child gets `JAX_PLATFORMS=cpu`, `XLA_FLAGS=--xla_force_host_platform_device_count=<d>`
and, for a job, `MP_COORDINATOR` (127.0.0.1:<free port>), `MP_NUM_PROCESSES`, `MP_PROCESS_ID`;
`init_from_env()` in the child joins the job with them (through `auxskd_jax.distributed`).
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Result:
  process_id: int
  returncode: int | None  # None: killed at the timeout
  stdout: str
  stderr: str

  def __str__(self) -> str:
    return (f"--- process {self.process_id}: rc={self.returncode}\n[stdout]\n{self.stdout}\n"
            f"[stderr]\n{self.stderr[-4000:]}")


def free_port() -> int:
  """A TCP port nobody listens on right now (the OS picks it)."""
  try:
    import portpicker
    return int(portpicker.pick_unused_port())
  except ImportError:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
      s.bind(("127.0.0.1", 0))
      return int(s.getsockname()[1])


def child_env(devices: int, extra: dict[str, str] | None = None) -> dict[str, str]:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  env.update(extra or {})
  return env


def launch(code: str, num_processes: int, *, devices: int = 2, args: Sequence[str] = (),
           env: dict[str, str] | None = None, per_process_env: Sequence[dict[str, str]] = (),
           coordinator: str | None = None) -> list[subprocess.Popen]:
  """Starts `python -c code *args` `num_processes` times as one job (process i gets
  MP_PROCESS_ID=i); returns the running processes."""
  coordinator = coordinator or f"127.0.0.1:{free_port()}"
  procs = []
  for i in range(num_processes):
    extra = {"MP_COORDINATOR": coordinator, "MP_NUM_PROCESSES": str(num_processes),
             "MP_PROCESS_ID": str(i), **(env or {})}
    if i < len(per_process_env):
      extra.update(per_process_env[i])
    procs.append(subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=child_env(devices, extra),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  return procs


def wait(procs: Sequence[subprocess.Popen], timeout: float = 180) -> list[Result]:
  """Waits for every process (killing all of them at `timeout`) and collects their output."""
  deadline = time.monotonic() + timeout
  results = []
  for i, p in enumerate(procs):
    try:
      out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
      results.append(Result(i, p.returncode, out, err))
    except subprocess.TimeoutExpired:
      for q in procs:
        if q.poll() is None:
          q.kill()
      out, err = p.communicate()
      results.append(Result(i, None, out, err))
  return results


def run(code: str, num_processes: int, *, timeout: float = 180, **kwargs) -> list[Result]:
  """`launch` then `wait`."""
  return wait(launch(code, num_processes, **kwargs), timeout=timeout)


def read_until(proc: subprocess.Popen, prefix: str, timeout: float = 120) -> list[str]:
  """Reads `proc`'s stdout line by line until a line starts with `prefix` (returns the lines
  read); raises AssertionError at EOF or after `timeout` seconds."""
  deadline = time.monotonic() + timeout
  lines: list[str] = []
  while True:
    left = deadline - time.monotonic()
    if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
      raise AssertionError(f"no line starting {prefix!r} within {timeout} s: {lines}")
    line = proc.stdout.readline()
    if not line:
      raise AssertionError(f"the process ended (rc={proc.poll()}) before {prefix!r}: {lines}")
    lines.append(line.rstrip("\n"))
    if line.startswith(prefix):
      return lines


def kill(procs: Sequence[subprocess.Popen]) -> None:
  for p in procs:
    if p.poll() is None:
      p.kill()


def send(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
  if proc.poll() is None:
    proc.send_signal(sig)


def kill_once_exists(proc: subprocess.Popen, path: str, timeout: float = 600) -> bool:
  """SIGKILLs `proc` as soon as `path` exists (or it ends, or `timeout` passes); whether it was
  still running when killed (False: it ended first, so the kill tested nothing)."""
  deadline = time.time() + timeout
  while not os.path.exists(path) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  still_running = proc.poll() is None
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return still_running


def init_from_env(timeout: int = 60) -> None:
  """In a child: joins the job the parent described (a no-op when it described none)."""
  import ml_collections

  from auxskd_jax import distributed

  config = ml_collections.ConfigDict({"distributed": distributed.config_section()})
  if "MP_COORDINATOR" in os.environ:
    config.distributed.coordinator_address = os.environ["MP_COORDINATOR"]
    config.distributed.num_processes = int(os.environ["MP_NUM_PROCESSES"])
    config.distributed.process_id = int(os.environ["MP_PROCESS_ID"])
  config.distributed.initialization_timeout = timeout
  distributed.initialize(config)
