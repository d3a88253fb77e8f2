"""Joining a multi-process JAX job (several hosts, or several processes on one machine).

`main.py` calls `initialize(config)` before anything touches devices, then
`check_same_config(config)` and `setup_logging()`. With an empty `distributed` section a run is
single-process exactly as before, unless it finds itself in a cluster environment that
`jax.distributed.initialize()` detects on its own (SLURM with several tasks, Open MPI, a
multi-worker TPU pod slice). jax is imported inside the functions: config files import this
module for `config_section()`.
"""

from __future__ import annotations

import ml_collections


def config_section() -> ml_collections.ConfigDict:
  """The `distributed` config section; empty values mean "detect or run single-process"."""
  c = ml_collections.ConfigDict()
  c.coordinator_address = ""  # "host:port" of process 0's coordinator service
  c.num_processes = 0  # total processes in the job; 0 = detect
  c.process_id = -1  # this process's index in [0, num_processes); -1 = detect
  c.initialization_timeout = 300  # seconds to wait for every process to join
  c.local_device_ids = ""  # e.g. "0,1": the local accelerators this process uses; "" = all
  return c


def initialize(config: ml_collections.ConfigDict) -> None:
  """Joins the job described by `config.distributed` (or a detected cluster); no-op otherwise."""
  raise NotImplementedError


def check_same_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError in every process unless all processes run the same config."""
  raise NotImplementedError


def is_chief() -> bool:
  """True in process 0, the one that writes files (config.json, TensorBoard, reports)."""
  import jax
  return jax.process_index() == 0


def setup_logging() -> None:
  """Non-chief processes log to stderr at warning level only."""
  raise NotImplementedError
