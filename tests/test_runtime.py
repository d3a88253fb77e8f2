"""Process-wide settings from the config (auxskd_jax/runtime.py): the compilation cache, and the
environment's minimum compile time winning over the config's default (the suite caches every
program its main.py subprocesses compile)."""

import jax
import ml_collections

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
