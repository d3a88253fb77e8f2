"""Joining a jax.distributed job: cross-process collectives on CPU (gloo), a fast clear failure
when the job cannot form, and the same-config check. Jobs are 2 localhost processes x 2 CPU
devices (tests/multiproc.py)."""

import os
import time

import ml_collections
import pytest

from auxskd_jax import distributed
from auxskd_jax.config import ConfigError
from tests import multiproc

_JOB = r"""
import json, sys
import ml_collections
from tests import multiproc
multiproc.init_from_env(60)
import jax, jax.numpy as jnp, numpy as np
from auxskd_jax import distributed
from auxskd_jax.config import ConfigError

pid = jax.process_index()
x = jnp.arange(2.0) + 10 * pid  # devices hold 0, 1 | 10, 11
total = jax.pmap(lambda v: jax.lax.psum(v, "b"), axis_name="b")(x)
gathered = jax.pmap(lambda v: jax.lax.all_gather(v, "b"), axis_name="b")(x)
out = {"count": jax.process_count(), "devices": jax.device_count(),
       "psum": np.asarray(total).tolist(), "gather": np.asarray(gathered).tolist(),
       "bytes": [b.decode() for b in distributed.allgather_bytes(b"p" * (pid + 1))]}
config = ml_collections.ConfigDict({"distributed": distributed.config_section(),
                                    "train": {"batch_size": 8, "lr": 0.1}})
config.distributed.process_id = pid  # differs by design: not compared
distributed.check_same_config(config, {"workdir": "/tmp/run"})
out["same"] = "ok"
if pid == 1:
  config.train.batch_size = 6
try:
  distributed.check_same_config(config, {"workdir": "/tmp/run"})
  out["differ"] = "no error"
except ConfigError as e:
  out["differ"] = str(e)
from absl import logging
logging.set_verbosity(logging.INFO)
distributed.setup_logging()
logging.info("info line %d", pid)
logging.warning("warning line %d", pid)
out["chief"] = distributed.is_chief()
print("RESULT " + json.dumps(out), flush=True)
"""


def _result(r: multiproc.Result) -> dict:
  import json
  lines = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
  assert r.returncode == 0 and lines, str(r)
  return json.loads(lines[-1][len("RESULT "):])


def test_two_processes_collectives_and_config_check():
  results = multiproc.run(_JOB, 2, devices=2, timeout=240)
  outs = [_result(r) for r in results]
  for out in outs:
    assert out["count"] == 2 and out["devices"] == 4
    assert out["psum"] == [22.0, 22.0]  # 0 + 1 + 10 + 11 over all 4 devices
    assert out["gather"] == [[0.0, 1.0, 10.0, 11.0]] * 2
    assert out["bytes"] == ["p", "pp"]
    assert out["same"] == "ok"
    # Every process raises, and names the key that differs (with both values).
    assert "--config.train.batch_size (process 0: 8, process 1: 6)" in out["differ"], out
    assert "\n" not in out["differ"]
  assert [out["chief"] for out in outs] == [True, False]
  # Process 0 logs as usual; the others only warnings, marked with their index.
  assert "info line 0" in results[0].stderr and "warning line 0" in results[0].stderr
  assert "info line 1" not in results[1].stderr
  assert "[process 1] warning line 1" in results[1].stderr


_JOIN = r"""
import sys
import ml_collections
from auxskd_jax import distributed
from auxskd_jax.config import ConfigError
c = ml_collections.ConfigDict({"distributed": distributed.config_section()})
c.distributed.coordinator_address = sys.argv[1]
c.distributed.num_processes = 2
c.distributed.process_id = int(sys.argv[2])
c.distributed.initialization_timeout = 2
try:
  distributed.initialize(c)
except ConfigError as e:
  print(f"Config error: {e}", file=sys.stderr)
  sys.exit(2)
print("joined")
"""


@pytest.mark.parametrize("process_id", [1, 0])
def test_failing_to_join_is_fast_and_clear(process_id):
  """Process 1 with nobody at the coordinator's address; process 0 waiting for a process 1
  that never comes. Both stop after the timeout with one line naming the flag, not a hang."""
  address = f"127.0.0.1:{multiproc.free_port()}"
  start = time.monotonic()
  (r,) = multiproc.wait(multiproc.launch(_JOIN, 1, args=[address, str(process_id)]),
                        timeout=120)
  assert time.monotonic() - start < 60
  assert r.returncode == distributed.JOIN_EXIT_CODE, str(r)
  lines = [l for l in r.stderr.splitlines() if l.startswith("Config error:")]
  assert len(lines) == 1, str(r)
  assert "--config.distributed.coordinator_address" in lines[0]
  assert address in lines[0] and "within 2 s" in lines[0]


def _config(**distributed_values) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict({"distributed": distributed.config_section()})
  config.distributed.update(distributed_values)
  return config


def test_explicit_values_are_validated():
  assert distributed.explicit_values(_config()) is None
  assert distributed.explicit_values(_config(
      coordinator_address="localhost:1234", num_processes=2, process_id=1)) == (
          "localhost:1234", 2, 1)
  with pytest.raises(ConfigError, match="process_id.*none of them"):
    distributed.explicit_values(_config(coordinator_address="localhost:1234", num_processes=2))
  with pytest.raises(ConfigError, match=r"--config.distributed.process_id: 2 is not in \[0"):
    distributed.explicit_values(_config(
        coordinator_address="localhost:1234", num_processes=2, process_id=2))
  with pytest.raises(ConfigError, match="coordinator_address: 'localhost' is not host:port"):
    distributed.explicit_values(_config(
        coordinator_address="localhost", num_processes=2, process_id=0))
  with pytest.raises(ConfigError, match="local_device_ids"):
    distributed._local_device_ids(_config(local_device_ids="a,b").distributed)
  assert distributed._local_device_ids(_config(local_device_ids="0, 1").distributed) == [0, 1]


def test_a_single_process_run_does_not_initialise(monkeypatch):
  for var in ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "TPU_WORKER_HOSTNAMES",
              "TPU_PROCESS_ADDRESSES", "MEGASCALE_NUM_SLICES"):
    monkeypatch.delenv(var, raising=False)
  distributed.initialize(_config())  # nothing to join: returns without touching jax.distributed
  import jax
  assert not jax.distributed.is_initialized()


def test_cluster_detection(monkeypatch):
  for var in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
              "SLURM_LOCALID", "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE",
              "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_NUM_SLICES"):
    monkeypatch.delenv(var, raising=False)
  assert distributed.detect_cluster() is None
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "1",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
  for k, v in slurm.items():
    monkeypatch.setenv(k, v)
  assert distributed.detect_cluster() is None  # one task: single-process
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert distributed.detect_cluster() == "slurm"
  for k in slurm:
    monkeypatch.delenv(k)
  monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1.0;tcp://10.0.0.1:1234")
  monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
  assert distributed.detect_cluster() == "ompi"
  monkeypatch.delenv("OMPI_MCA_orte_hnp_uri")
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t0,t1,t2,t3")
  assert distributed.detect_cluster() == "tpu"


def test_config_json_ignores_per_process_keys():
  a, b = _config(process_id=0), _config(process_id=1, local_device_ids="1")
  assert distributed.config_json(a) == distributed.config_json(b)
  assert distributed.config_json(a, {"workdir": "x"}) != distributed.config_json(b, {"workdir": "y"})


def test_every_distributed_key_may_change_on_resume(tmp_path):
  """The section says how the job forms and how long it waits, never what it computes."""
  from auxskd_jax import config as config_lib

  config = config_lib.base_config()
  workdir = str(tmp_path / "run")
  config_lib.save_config(config, workdir)
  os.makedirs(os.path.join(workdir, "checkpoints", "2"))  # something to resume
  for key in config.distributed:
    assert f"distributed.{key}" in config_lib.RESUME_FREE_KEYS, key
  config.distributed.heartbeat_timeout = 5
  config.distributed.first_collective_timeout = 7
  config_lib.check_resume(config, workdir)  # no error
  config.seed = 1
  with pytest.raises(ConfigError, match="seed"):
    config_lib.check_resume(config, workdir)
