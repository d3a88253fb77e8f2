"""Joining a multi-process JAX job (several hosts, or several processes on one machine).

`main.py` calls, in this order and before anything touches devices: `initialize(config)`,
`setup_logging()`, `check_same_config(config, workdir=...)`. With an empty `distributed` section
a run is single-process exactly as before, unless it finds itself in a multi-process cluster
environment that `jax.distributed.initialize()` detects on its own (SLURM with several tasks,
Open MPI, a Cloud TPU VM, an indexed Kubernetes Job or JobSet). Once joined, a watchdog ends every
process, with one line, within `distributed.heartbeat_timeout` seconds of any process dying or
stalling (`watch_peers`). jax is imported inside the functions: config files import this module
for `config_section()`. See docs/SCALING.md for launch commands.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging as py_logging
import os
import re
import socket
import sys
import threading
import time
from typing import Any, Callable, Mapping

import ml_collections

from auxskd_jax.errors import ConfigError, require
from auxskd_jax.trees import flatten

_FLAG = "--config.distributed"
# Keys that legitimately differ between the processes of one job.
# The exit status when the job did not form in time (main.py's status for config errors).
JOIN_EXIT_CODE = 2
# The exit status of every process of a job that lost a process (killed, stalled, unreachable).
PEER_FAILED_EXIT_CODE = 3
_JAX_GRACE_S = 30  # jax's own deadline, after ours
_PER_PROCESS_KEYS = ("distributed.process_id", "distributed.local_device_ids")


class JoinError(ConfigError):
  """This process could not join the job (coordinator unreachable, a process missing)."""


def config_section() -> ml_collections.ConfigDict:
  """The `distributed` config section; empty values mean "detect or run single-process"."""
  c = ml_collections.ConfigDict()
  c.coordinator_address = ""  # "host:port" of process 0's coordinator service
  c.num_processes = 0  # total processes in the job; 0 = detect
  c.process_id = -1  # this process's index in [0, num_processes); -1 = detect
  c.initialization_timeout = 300  # seconds to wait for every process to join
  c.local_device_ids = ""  # e.g. "0,1": the local accelerators this process uses; "" = all
  # Seconds after which a process that stopped answering (killed, stalled, its host gone) fails
  # the job: every process exits within about this bound, with one line naming it.
  c.heartbeat_timeout = 60
  # Deadline in seconds for the first cross-process collective (the Gloo / NCCL rendezvous,
  # slow on a loaded host); it is retried until then.
  c.first_collective_timeout = 120
  return c


def _section(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  section = config.get("distributed") if hasattr(config, "get") else None
  return section if section is not None else config_section()


def _local_device_ids(d: ml_collections.ConfigDict) -> list[int] | None:
  text = str(d.get("local_device_ids", "") or "").strip()
  if not text:
    return None
  try:
    return [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise ConfigError(f"{_FLAG}.local_device_ids={text!r}: give device numbers separated by "
                      "commas, e.g. '0,1', or leave it empty for all local devices.") from None


def explicit_values(config: ml_collections.ConfigDict) -> tuple[str, int, int] | None:
  """(coordinator_address, num_processes, process_id) when given on the command line, None
  when all three are left empty; raises ConfigError for a partial or inconsistent set."""
  d = _section(config)
  address = str(d.coordinator_address or "").strip()
  num, pid = int(d.num_processes), int(d.process_id)
  given = {"coordinator_address": bool(address), "num_processes": num > 0,
           "process_id": pid >= 0}
  for key in ("initialization_timeout", "heartbeat_timeout", "first_collective_timeout"):
    require(int(d.get(key, 1)) > 0, f"distributed.{key}", "must be a positive number of seconds.")
  if not any(given.values()):
    return None
  missing = [k for k, v in given.items() if not v]
  require(not missing, f"distributed.{missing[0] if missing else ''}",
          f"give all of coordinator_address, num_processes and process_id, or none of them "
          f"(missing: {', '.join(missing)}).")
  host, sep, port = address.rpartition(":")
  require(bool(sep and host and port.isdigit()), "distributed.coordinator_address",
          f"{address!r} is not host:port (e.g. localhost:12345 or 10.0.0.1:12345).")
  require(0 <= pid < num, "distributed.process_id",
          f"{pid} is not in [0, num_processes={num}); number the processes 0..{num - 1}.")
  return address, num, pid


def _int_env(name: str) -> int:
  try:
    return int(os.environ.get(name, "0"))
  except ValueError:
    return 0


def k8s_index() -> int | None:
  """This pod's index in an indexed Kubernetes Job or a JobSet, None outside one. Indexed Jobs
  set JOB_COMPLETION_INDEX (jax's K8sCluster reads it too); JobSet pods are also named
  <jobset>-<replicated job>-<job index>-<pod index>."""
  env = os.environ
  if "KUBERNETES_SERVICE_HOST" not in env:
    return None
  if env.get("JOB_COMPLETION_INDEX", "").isdigit():
    return int(env["JOB_COMPLETION_INDEX"])
  if env.get("JOBSET_NAME"):
    match = re.search(r"-(\d+)-(\d+)$", env.get("HOSTNAME", "").split(".")[0])
    if match:
      return int(match.group(2))
  return None


def job_id() -> str:
  """The scheduler's name for this job (for the workdir lease): "slurm:<id>", "k8s:<job>",
  "ompi:<id>", or "" outside a scheduler."""
  env = os.environ
  if env.get("SLURM_JOB_ID"):
    return f"slurm:{env['SLURM_JOB_ID']}"
  if env.get("JOBSET_NAME"):
    return f"k8s-jobset:{env['JOBSET_NAME']}"
  if k8s_index() is not None:  # pod <job>-<index>-<suffix>
    return "k8s:" + re.sub(r"-\d+(-[a-z0-9]+)?$", "", env.get("HOSTNAME", "").split(".")[0])
  if env.get("OMPI_MCA_ess_base_jobid"):
    return f"ompi:{env['OMPI_MCA_ess_base_jobid']}"
  return ""


def _k8s_api_available() -> bool:
  """Whether jax's K8sCluster can ask the API server for the job (needs `kubernetes`)."""
  import importlib.util
  return importlib.util.find_spec("kubernetes") is not None


def detect_cluster() -> str | None:
  """The multi-process cluster environment this process runs in, as `jax.distributed` would
  detect it (jax/_src/clusters): "slurm", "ompi", "tpu", "k8s"; None when single-process.

  SLURM and Open MPI count only with more than one task: a one-task job on a shared node must
  not start a coordinator on SLURM's fixed port.
  """
  env = os.environ
  slurm_vars = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                "SLURM_LOCALID")
  if all(v in env for v in slurm_vars) and _int_env("SLURM_NTASKS") > 1:
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in env and _int_env("OMPI_COMM_WORLD_SIZE") > 1:
    return "ompi"
  if k8s_index() is not None:
    return "k8s"
  workers = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
  if len([w for w in workers.split(",") if w.strip()]) > 1 or _int_env("MEGASCALE_NUM_SLICES") > 1:
    return "tpu"
  try:  # a GCE TPU VM: jax asks the metadata server for the workers (one worker is fine too)
    from jax._src import cloud_tpu_init
    if cloud_tpu_init.running_in_cloud_tpu_vm and "TPU_SKIP_MDS_QUERY" not in env:
      return "tpu"
  except ImportError:
    pass
  return None


def _one_line(error: BaseException) -> str:
  text = " ".join(str(error).split())
  return text[:300] + ("..." if len(text) > 300 else "")


def _wait_for_coordinator(address: str, deadline: float) -> str:
  """Polls until the coordinator accepts TCP connections; "" when it does, else the cause."""
  host, _, port = address.rpartition(":")
  host = host.strip("[]")
  cause = "nothing answered"
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=1.0):
        return ""
    except OSError as e:
      cause = _one_line(e) or type(e).__name__
    if time.monotonic() >= deadline:
      return f"nothing answered at {address} ({cause})"
    time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def _give_up(message: str) -> None:
  sys.stderr.write(f"Config error: {message}\n")
  sys.stderr.flush()
  os._exit(JOIN_EXIT_CODE)


def initialize(config: ml_collections.ConfigDict) -> None:
  """Joins the job described by `config.distributed` (or a detected cluster); a no-op for a
  single-process run. Must run before anything touches devices; safe to call twice."""
  import jax

  explicit = explicit_values(config)
  d = _section(config)
  local_ids = _local_device_ids(d)
  if jax.distributed.is_initialized():
    return
  cluster = None if explicit else detect_cluster()
  if explicit is None and cluster is None:
    return
  if cluster == "k8s" and not _k8s_api_available():
    index = k8s_index()
    if index:  # pod 0 may be a one-pod job; the lease refuses it if another shares the workdir
      raise JoinError(
          f"{_FLAG}.coordinator_address: this is pod {index} of an indexed Kubernetes Job, but "
          "jax can only find the job's other pods with the `kubernetes` package (pip install "
          "'jax[k8s]', and let the service account read pods); or set "
          f"{_FLAG}.coordinator_address, num_processes and process_id. Not training alone.")
    py_logging.getLogger(__name__).warning(
        "Pod 0 of an indexed Kubernetes Job without the `kubernetes` package: running as a "
        "single process (other pods cannot join; install jax[k8s] for a multi-pod job).")
    return
  if not getattr(jax.config, "jax_cpu_collectives_implementation", "gloo"):
    # Cross-process collectives on CPU (tests, the localhost recipe); gloo is jax's default
    # from 0.5 on, older versions had none.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  timeout = int(d.initialization_timeout)
  kwargs: dict[str, Any] = {"initialization_timeout": timeout}
  if local_ids is not None:
    kwargs["local_device_ids"] = local_ids
  if explicit is not None:
    kwargs.update(coordinator_address=explicit[0], num_processes=explicit[1],
                  process_id=explicit[2])
    where = f"{explicit[0]} as process {explicit[2]} of {explicit[1]}"
  else:
    where = (f"the coordinator jax detected from the {cluster} environment (or set "
             f"{_FLAG}.coordinator_address, num_processes and process_id)")
  deadline = time.monotonic() + timeout

  def fail(cause: str) -> str:
    return (f"{_FLAG}.coordinator_address: could not join the job at {where} within "
            f"{timeout} s{cause}. Check the address and port, start every process (process 0 "
            f"hosts the coordinator), or raise {_FLAG}.initialization_timeout.")

  if explicit is not None and explicit[2] != 0:
    cause = _wait_for_coordinator(explicit[0], deadline)
    if cause:
      raise JoinError(fail(f": {cause}"))
  # jax aborts the process (no exception) when the job does not form in time, e.g. a process
  # is missing; a watchdog with a shorter deadline exits first, with the message above.
  kwargs["initialization_timeout"] = timeout + _JAX_GRACE_S
  # jax's own heartbeat and shutdown deadlines come after the watchdog's, which names the cause.
  heartbeat = int(d.get("heartbeat_timeout", 60))
  kwargs["heartbeat_timeout_seconds"] = heartbeat + _JAX_GRACE_S
  kwargs["shutdown_timeout_seconds"] = heartbeat + _JAX_GRACE_S
  watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _give_up,
                             args=(fail(" (not every process joined)"),))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:  # e.g. the port is taken: the cause is in its first line
    raise JoinError(fail(f": {_one_line(e)}")) from None
  finally:
    watchdog.cancel()
  _install_excepthook()
  cache_compiles_in_every_cpu_process()
  watch_peers(heartbeat)
  first_collective(int(d.get("first_collective_timeout", 120)))
  py_logging.getLogger(__name__).info(
      "Joined the job: process %d of %d, %d local / %d global devices.", jax.process_index(),
      jax.process_count(), jax.local_device_count(), jax.device_count())


def cache_compiles_in_every_cpu_process() -> bool:
  """Lets every process of a CPU job write its compiled programs to the persistent compilation
  cache, not process 0 alone; returns whether it did. jax writes from process 0 only (so that
  processes sharing a cache do not write the same entry), but on CPU the cache key holds the
  process's own device topology: the other processes never find process 0's entries and
  compiled every program again at every launch (a tiny training step: ~10 s). Their keys are
  their own, so their writes never collide. A jax without these internals keeps its own rule."""
  import jax

  try:
    from jax._src import compilation_cache
    from jax._src import compiler
    from jax._src import distributed as jax_distributed
  except ImportError:
    return False
  original = getattr(compiler, "_cache_write", None)
  if (original is None or getattr(original, "_every_cpu_process", False)
      or not hasattr(compilation_cache, "put_executable_and_time")
      or jax.process_count() == 1 or jax.default_backend() != "cpu"):
    return False

  def cache_write(cache_key: str, compile_time_secs: float, module_name: str, backend: Any,
                  executable: Any, *rest: Any) -> None:
    if (getattr(jax_distributed.global_state, "process_id", 0) == 0
        or getattr(backend, "platform", "") != "cpu" or (rest and rest[0])):  # host callbacks
      return original(cache_key, compile_time_secs, module_name, backend, executable, *rest)
    if compile_time_secs < jax.config.jax_persistent_cache_min_compile_time_secs:
      return None
    try:
      compilation_cache.put_executable_and_time(cache_key, module_name, executable, backend,
                                                int(compile_time_secs))
    except Exception as e:  # pylint: disable=broad-except  (a cache is an optimisation)
      py_logging.getLogger(__name__).info("Not cached (%s): %s", module_name, _one_line(e))
    return None

  cache_write._every_cpu_process = True  # type: ignore[attr-defined]
  compiler._cache_write = cache_write
  return True


_ABORT_HOOKS: list[Callable[[], None]] = []
_RESTART = "every process of the job stops. Restart the job to resume from its last checkpoint."
# What a collective or the coordination service says when another process of the job is gone.
_PEER_FAILURE = re.compile(r"Gloo|NCCL|[Cc]onnection (reset|refused|closed)|coordination "
                           r"service|[Ss]ocket closed|heartbeat")


def _install_excepthook() -> None:
  """An uncaught collective failure (another process died mid-step) ends this process with one
  line and at once, rather than a traceback and a wait at jax's shutdown barrier."""
  previous = sys.excepthook

  def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    if isinstance(value, Exception) and _PEER_FAILURE.search(str(value)):
      abort(f"a cross-process collective failed ({_one_line(value)[:200]}); another process of "
            f"the job probably died (see its log); {_RESTART}")
    previous(kind, value, tb)

  sys.excepthook = hook


def at_abort(hook: Callable[[], None]) -> Callable[[], None]:
  """Registers `hook` (e.g. releasing the workdir lease) to run before `abort` exits."""
  _ABORT_HOOKS.append(hook)
  return hook


def cancel_at_abort(hook: Callable[[], None]) -> None:
  """Unregisters an `at_abort` hook (no-op if it is not registered)."""
  if hook in _ABORT_HOOKS:
    _ABORT_HOOKS.remove(hook)


def abort(message: str, code: int = PEER_FAILED_EXIT_CODE) -> None:
  """Ends this process at once (from any thread, even while the main thread is stuck in a
  collective) with one line on stderr; the at_abort hooks run first."""
  for hook in list(_ABORT_HOOKS):
    try:
      hook()
    except Exception:  # exiting anyway; the line below names the cause
      pass
  sys.stderr.write(f"Error: {message}\n")
  sys.stderr.flush()
  os._exit(code)


def first_collective(timeout: int) -> None:
  """The job's first cross-process collective (a tiny all-gather), retried until `timeout`
  seconds passed: the Gloo / NCCL rendezvous can miss its own deadline on a loaded host."""
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  if jax.process_count() == 1:
    return
  n = jax.process_count()
  message = (f"the first collective across the {n} processes did not complete within "
             f"{timeout} s; start every process, check that they reach each other, or raise "
             f"{_FLAG}.first_collective_timeout")
  deadline = time.monotonic() + timeout
  timer = threading.Timer(timeout, abort, args=(message + ".",))
  timer.daemon = True
  timer.start()
  try:
    while True:
      try:
        multihost_utils.process_allgather(np.zeros((1,), np.int32))
        return
      except Exception as e:  # e.g. "Gloo context initialization failed: DEADLINE_EXCEEDED"
        if time.monotonic() >= deadline:
          raise JoinError(f"{message} ({_one_line(e)}).") from None
        py_logging.getLogger(__name__).warning("The first collective failed (%s); retrying.",
                                               _one_line(e))
        time.sleep(1.0)
  finally:
    timer.cancel()


class _PeerWatch:
  """Every process beats a counter in the coordination service's key-value store and reads the
  others'; a counter that stops moving for `timeout` s (a killed or stalled process), or a
  coordinator that stops answering, ends this process with `abort`. Two threads: one talks to
  the service (its calls can block), one only reads the clock."""

  _PREFIX = "auxskd/alive/"

  def __init__(self, client: Any, process_id: int, num_processes: int, timeout: float):
    self._client = client
    self._id = process_id
    self._num = num_processes
    self._timeout = float(timeout)
    self._every = max(0.2, self._timeout / 6)
    self._stop = threading.Event()
    now = time.monotonic()
    self._last_ok = now
    self._seen: dict[int, tuple[str, float]] = {p: ("", now) for p in range(num_processes)
                                                if p != process_id}

  def start(self) -> None:
    for target, name in ((self._beat, "peer-heartbeat"), (self._judge, "peer-judge")):
      threading.Thread(target=target, name=name, daemon=True).start()
    atexit.register(self.stop)  # before jax's own shutdown (atexit runs last-registered first)

  def stop(self) -> None:
    """A normal exit: stop watching, and tell the others this process is done."""
    if self._stop.is_set():
      return
    self._stop.set()
    try:
      self._client.key_value_set(f"{self._PREFIX}{self._id}", "done", allow_overwrite=True)
    except Exception:  # the service may be gone already
      pass

  def _beat(self) -> None:
    count = 0
    while not self._stop.is_set():
      count += 1
      try:
        self._client.key_value_set(f"{self._PREFIX}{self._id}", str(count),
                                   allow_overwrite=True)
        values = dict(self._client.key_value_dir_get(self._PREFIX))
      except Exception as e:  # the coordinator's process died or its host went away
        if self._stop.is_set():
          return
        abort(f"lost the job's coordinator (process 0): {_one_line(e)[:160]}; "
              f"{_RESTART}")
      now = time.monotonic()
      self._last_ok = now
      for p, (value, since) in list(self._seen.items()):
        new = values.get(f"{self._PREFIX}{p}", "")
        if new == "done":
          del self._seen[p]
        elif new != value:
          self._seen[p] = (new, now)
        elif now - since > self._timeout:
          abort(f"process {p} of {self._num} stopped answering for {self._timeout:.0f} s "
                f"(killed, stalled or its host is gone; {_FLAG}.heartbeat_timeout); "
                f"{_RESTART}")
      self._stop.wait(self._every)

  def _judge(self) -> None:
    while not self._stop.wait(min(1.0, self._every)):
      if time.monotonic() - self._last_ok > self._timeout:
        abort(f"the job's coordinator (process 0) stopped answering for {self._timeout:.0f} s "
              f"(stalled or its host is gone; {_FLAG}.heartbeat_timeout); "
              f"{_RESTART}")


def watch_peers(timeout: float) -> None:
  """Starts the peer watchdog of a multi-process job (see _PeerWatch); a no-op otherwise."""
  import jax
  from jax._src import distributed as jax_distributed

  client = getattr(jax_distributed.global_state, "client", None)
  if client is None or jax.process_count() == 1:
    return
  _PeerWatch(client, jax.process_index(), jax.process_count(), timeout).start()


def is_chief() -> bool:
  """True in process 0, the one that writes files (config.json, TensorBoard, reports)."""
  import jax
  return jax.process_index() == 0


def setup_logging() -> None:
  """Non-chief processes log to stderr at warning level only (process 0 keeps the normal
  INFO log); their messages are prefixed with the process index."""
  import jax
  from absl import logging

  if jax.process_count() == 1 or is_chief():
    return
  logging.set_verbosity(logging.WARNING)
  logging.set_stderrthreshold(logging.WARNING)
  prefix = f"[process {jax.process_index()}] "

  def add_prefix(record: py_logging.LogRecord) -> bool:
    if not str(record.msg).startswith(prefix):
      record.msg = prefix + str(record.msg)
    return True

  py_logging.getLogger("absl").addFilter(add_prefix)
  py_logging.getLogger().setLevel(py_logging.WARNING)


def config_json(config: ml_collections.ConfigDict,
                extra: Mapping[str, Any] | None = None) -> str:
  """The config as canonical JSON, without the keys that differ per process by design."""
  tree = config.to_dict()
  for key in _PER_PROCESS_KEYS:
    section, _, name = key.partition(".")
    if isinstance(tree.get(section), dict):
      tree[section].pop(name, None)
  if extra:
    tree["<flags>"] = dict(extra)
  return json.dumps(tree, sort_keys=True, default=str)


def allgather_bytes(data: bytes) -> list[bytes]:
  """Every process's `data`, by process index (a collective: every process must call it)."""
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  if jax.process_count() == 1:
    return [bytes(data)]
  sizes = np.asarray(multihost_utils.process_allgather(np.asarray([len(data)], np.int32)))
  sizes = sizes.reshape(jax.process_count())
  padded = np.zeros(max(1, int(sizes.max())), np.uint8)
  padded[:len(data)] = np.frombuffer(data, np.uint8)
  rows = np.asarray(multihost_utils.process_allgather(padded))
  rows = rows.reshape(jax.process_count(), -1)
  return [rows[i, :int(n)].tobytes() for i, n in enumerate(sizes)]


def check_same_config(config: ml_collections.ConfigDict,
                      extra: Mapping[str, Any] | None = None) -> None:
  """Raises ConfigError in every process unless all processes run the same config (and the
  same `extra` values, e.g. {"workdir": ...}); the message names the keys that differ."""
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  if jax.process_count() == 1:
    return
  text = config_json(config, extra)
  digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
  digests = np.asarray(multihost_utils.process_allgather(digest)).reshape(jax.process_count(), -1)
  if (digests == digests[0]).all():
    return
  texts = [json.loads(t.decode()) for t in allgather_bytes(text.encode())]
  mine = flatten(texts[0])
  diffs = []
  for p, other in enumerate(texts[1:], start=1):
    theirs = flatten(other)
    for key in sorted(set(mine) | set(theirs)):
      if mine.get(key, "<unset>") != theirs.get(key, "<unset>"):
        name = key.replace("<flags>.", "--") if key.startswith("<flags>.") else f"--config.{key}"
        diffs.append(f"{name} (process 0: {mine.get(key, '<unset>')!r}, process {p}: "
                     f"{theirs.get(key, '<unset>')!r})")
  shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
  raise ConfigError(f"the {jax.process_count()} processes run different configs: {shown}. "
                    "Start every process with the same config file and flags (only "
                    f"{_FLAG}.process_id differs).")
