"""Joining a multi-process JAX job (several hosts, or several processes on one machine).

`main.py` calls, in this order and before anything touches devices: `initialize(config)`,
`setup_logging()`, `check_same_config(config, workdir=...)`. With an empty `distributed` section
a run is single-process exactly as before, unless it finds itself in a multi-process cluster
environment that `jax.distributed.initialize()` detects on its own (SLURM with several tasks,
Open MPI, a Cloud TPU VM). jax is imported inside the functions: config files import this module
for `config_section()`. See docs/SCALING.md for launch commands.
"""

from __future__ import annotations

import hashlib
import json
import logging as py_logging
import os
import socket
import sys
import threading
import time
from typing import Any, Mapping

import ml_collections

from auxskd_jax.errors import ConfigError, require

_FLAG = "--config.distributed"
# Keys that legitimately differ between the processes of one job.
# The exit status when the job did not form in time (main.py's status for config errors).
JOIN_EXIT_CODE = 2
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
  require(int(d.initialization_timeout) > 0, "distributed.initialization_timeout",
          "must be a positive number of seconds.")
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


def detect_cluster() -> str | None:
  """The multi-process cluster environment this process runs in, as `jax.distributed` would
  detect it (jax/_src/clusters): "slurm", "ompi", "tpu"; None when single-process.

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
    time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


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
  py_logging.getLogger(__name__).info(
      "Joined the job: process %d of %d, %d local / %d global devices.", jax.process_index(),
      jax.process_count(), jax.local_device_count(), jax.device_count())


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


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix: tree}
  out: dict[str, Any] = {}
  for k, v in tree.items():
    out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
  return out


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
  mine = _flatten(texts[0])
  diffs = []
  for p, other in enumerate(texts[1:], start=1):
    theirs = _flatten(other)
    for key in sorted(set(mine) | set(theirs)):
      if mine.get(key, "<unset>") != theirs.get(key, "<unset>"):
        name = key.replace("<flags>.", "--") if key.startswith("<flags>.") else f"--config.{key}"
        diffs.append(f"{name} (process 0: {mine.get(key, '<unset>')!r}, process {p}: "
                     f"{theirs.get(key, '<unset>')!r})")
  shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
  raise ConfigError(f"the {jax.process_count()} processes run different configs: {shown}. "
                    "Start every process with the same config file and flags (only "
                    f"{_FLAG}.process_id differs).")
