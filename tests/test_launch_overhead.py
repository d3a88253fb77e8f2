"""What every main.py launch no longer pays: torch's import through tensorboardX, a gather
compile per state leaf at each checkpoint save, and (CPU multi-process jobs) process 1
recompiling every program at every launch."""

import importlib.util
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from auxskd_jax.train import devices
from tests import multiproc


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_metric_logger_does_not_import_torch_and_torch_still_imports(tmp_path):
  code = (
      "import sys\n"
      "from auxskd_jax.train.logging import MetricLogger\n"
      f"logger = MetricLogger({str(tmp_path)!r}, total_steps=2, clips_per_step=1)\n"
      "logger.write(1, {'loss': 1.0}); logger.close()\n"
      "assert 'torch' not in sys.modules, 'tensorboardX imported torch'\n"
      "import torch\n"  # importable as before once the writer exists
      "assert torch.Tensor is not None\n"
      "print('OK')\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=multiproc.ROOT, capture_output=True,
                       text=True, env=multiproc.child_env(1), timeout=120)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]
  assert any(f.startswith("events.out.tfevents")
             for f in os.listdir(tmp_path / "tensorboard"))


def test_unreplicate_is_replica_zero_copied_and_compiles_nothing():
  # shapes no other test uses: an `x[0]` gather would compile here, not come from memory
  tree = {"w": np.arange(21, dtype=np.float32).reshape(7, 3), "step": np.int16(4),
          "empty": np.zeros((0, 5), np.float32)}
  p_step = jax.pmap(lambda s: jax.tree.map(lambda x: x + 1, s), axis_name=devices.AXIS,
                    donate_argnums=(0,))
  state = p_step(devices.replicate(tree))
  records: list[logging.LogRecord] = []
  handler = logging.Handler()
  handler.emit = records.append  # type: ignore[method-assign]
  logging.getLogger("jax").addHandler(handler)
  try:
    with jax.log_compiles(True):
      host = devices.unreplicate(state)
  finally:
    logging.getLogger("jax").removeHandler(handler)
  assert not [r.getMessage() for r in records if "Compiling" in r.getMessage()]
  for k, v in tree.items():
    assert host[k].dtype == v.dtype and host[k].shape == v.shape, k
    np.testing.assert_array_equal(host[k], v + 1)
  state = p_step(state)  # donates the buffers the copy was read from
  jax.block_until_ready(state)
  np.testing.assert_array_equal(host["w"], tree["w"] + 1)  # a copy, not a view of them
  np.testing.assert_array_equal(devices.unreplicate(state)["w"], tree["w"] + 2)


_CACHED_JOB = r"""
import json
from tests import multiproc
multiproc.init_from_env(60)
import jax, numpy as np
from jax._src import monitoring
hits = []
monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
f = jax.pmap(lambda x: jax.lax.psum(x * 3.0 + 1.0, "b"), axis_name="b")
out = np.asarray(f(np.ones((jax.local_device_count(), 5), np.float32))).tolist()
print("RESULT " + json.dumps({"hits": len(hits), "out": out}), flush=True)
"""


def test_every_process_of_a_cpu_job_finds_its_compiles_in_the_cache(tmp_path):
  """Job 1 compiles and caches (process 1's entries too); job 2 loads every program, in both
  processes, with the same results."""
  import json

  cache = str(tmp_path / "xla")
  results = []
  for _ in range(2):
    job = multiproc.run(_CACHED_JOB, 2, devices=2, timeout=180,
                        env={"JAX_COMPILATION_CACHE_DIR": cache,
                             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})
    rows = []
    for r in job:
      lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
      assert r.returncode == 0 and lines, str(r)
      rows.append(json.loads(lines[-1][len("RESULT "):]))
    results.append(rows)
  first, second = results
  assert all(r["out"] == first[0]["out"] for r in first + second)
  assert [r["hits"] > 0 for r in second] == [True, True], second
