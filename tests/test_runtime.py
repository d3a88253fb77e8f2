"""Process-wide settings from the config (auxskd_jax/runtime.py): the compilation cache, the
environment's minimum compile time winning over the config's default (the suite caches every
program its main.py subprocesses compile), the op kinds XLA:CPU hands to YNNPACK, and XLA:CPU's
scheduler."""

import importlib.metadata
import os
import subprocess
import sys

import jax
import ml_collections
import pytest

from auxskd_jax import config as config_lib
from auxskd_jax import runtime


def _cache_settings():
  return (jax.config.jax_compilation_cache_dir,
          jax.config.jax_persistent_cache_min_compile_time_secs)


def test_compilation_cache_and_its_minimum_compile_time(tmp_path, monkeypatch):
  saved = _cache_settings()
  config = ml_collections.ConfigDict({"compilation_cache_dir": str(tmp_path / "xla")})
  try:
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    runtime.apply(config)
    assert _cache_settings() == (str(tmp_path / "xla"), 1.0)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.25)
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.25")
    runtime.apply(config)  # the environment's value (read by jax at import) is kept
    assert _cache_settings() == (str(tmp_path / "xla"), 0.25)
  finally:
    jax.config.update("jax_compilation_cache_dir", saved[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])


def test_ynnpack_ops_become_one_xla_flag_unless_the_environment_sets_it(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
  runtime.set_ynnpack_ops("dot, reduce")
  assert os.environ["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=4 "
                                     f"{runtime.YNN_FLAG}=dot,reduce")
  runtime.set_ynnpack_ops("eltwise")  # the flag is already there: the environment wins
  assert os.environ["XLA_FLAGS"].count(runtime.YNN_FLAG) == 1
  for flags, value in (("", ""),  # XLA's own default
                       (runtime.FAST_COMPILE_FLAG, "reduce")):  # unoptimised codegen
    monkeypatch.setenv("XLA_FLAGS", flags)
    runtime.set_ynnpack_ops(value)
    assert os.environ["XLA_FLAGS"] == flags
  monkeypatch.setenv("XLA_FLAGS", "")
  runtime.apply(ml_collections.ConfigDict({"xla_fast_compile": True,
                                           "xla_cpu_ynnpack_ops": "reduce"}))
  assert os.environ["XLA_FLAGS"] == runtime.FAST_COMPILE_FLAG
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.13.0")
  runtime.set_ynnpack_ops("reduce")  # a jaxlib it was not measured on may lack the flag
  assert os.environ["XLA_FLAGS"] == ""


def test_a_bad_ynnpack_op_is_a_user_error_naming_the_key():
  with pytest.raises(config_lib.UserError, match="xla_cpu_ynnpack_ops.*'convolution' is not"):
    runtime.apply(ml_collections.ConfigDict({"xla_cpu_ynnpack_ops": "reduce,convolution"}))


_CONV_HLO = r"""
import jax, jax.numpy as jnp
x, w = jnp.zeros((8, 28, 28, 32)), jnp.zeros((3, 3, 32, 32))
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
print(jax.jit(conv).lower(x, w).compile().as_text())
"""


def _conv_in_ynnpack(xla_flags: str) -> bool:
  env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", _CONV_HLO], env=env, capture_output=True,
                       text=True, timeout=120, check=True).stdout
  return any("ynn_fusion" in line and "conv" in line for line in out.splitlines())


def test_the_default_keeps_convolutions_on_xlas_kernels_and_xla_alone_would_not(monkeypatch):
  """The flag reaches XLA: with it a conv compiles to XLA's own kernel, without it (XLA's
  default, on the jaxlibs we support) to a YNNPACK fusion."""
  monkeypatch.setenv("XLA_FLAGS", "")
  runtime.set_ynnpack_ops(config_lib.base_config().xla_cpu_ynnpack_ops)
  assert runtime.YNN_FLAG in os.environ["XLA_FLAGS"]
  assert not _conv_in_ynnpack(os.environ["XLA_FLAGS"])
  assert _conv_in_ynnpack("")


def test_cpu_scheduler_becomes_one_xla_flag_unless_the_environment_sets_it(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
  runtime.apply(ml_collections.ConfigDict({"xla_cpu_scheduler": "memory_optimized"}))
  assert os.environ["XLA_FLAGS"] == (
      "--xla_force_host_platform_device_count=4 "
      f"{runtime.SCHEDULER_FLAG}=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED")
  runtime.set_cpu_scheduler("concurrency_optimized")  # already set: the environment wins
  assert os.environ["XLA_FLAGS"].count(runtime.SCHEDULER_FLAG) == 1
  monkeypatch.setenv("XLA_FLAGS", "")
  runtime.set_cpu_scheduler("default")  # XLA's own: nothing added
  assert os.environ["XLA_FLAGS"] == ""
  monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.13.0")
  runtime.set_cpu_scheduler()  # a jaxlib it was not measured on may lack the flag
  assert os.environ["XLA_FLAGS"] == ""
  with pytest.raises(config_lib.UserError, match="xla_cpu_scheduler.*'fastest' is not"):
    runtime.apply(ml_collections.ConfigDict({"xla_cpu_scheduler": "fastest"}))


_TRAIN_STEP_BYTES = r"""
import hashlib, jax, jax.numpy as jnp
from auxskd_jax.models import layers
def loss(w, x):
  y = layers.conv3d(x, w, (1, 1, 1), (1, 1, 1))
  y = jax.nn.relu((y - y.mean((0, 1, 2, 3))) * jax.lax.rsqrt(y.var((0, 1, 2, 3)) + 1e-5))
  return jnp.mean(layers.conv3d(y, w[..., :4, :], (1, 1, 1), (1, 1, 1)) ** 2)
w = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 3, 4, 4))
x = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 8, 8, 4))
g = jax.jit(jax.grad(loss))(w, x)
print(hashlib.sha256(jax.device_get(g).tobytes()).hexdigest())
"""


def test_the_memory_optimised_schedule_runs_here_and_changes_no_bit():
  """This jaxlib accepts the scheduler flag (an unknown one aborts XLA) and the schedule does
  not change what a small conv + BN + ReLU gradient computes, bit for bit."""
  def digest(flags: str) -> str:
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return subprocess.run([sys.executable, "-c", _TRAIN_STEP_BYTES], env=env,
                          capture_output=True, text=True, timeout=120, check=True).stdout
  optimised = f"{runtime.SCHEDULER_FLAG}=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
  assert digest(optimised) == digest("") != ""
