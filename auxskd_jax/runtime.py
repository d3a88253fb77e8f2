"""Process-wide JAX settings a config asks for (PRNG, XLA flags, compilation cache)."""

from __future__ import annotations

import os

import ml_collections

from auxskd_jax.errors import require


def apply(config: ml_collections.ConfigDict) -> None:
  """Checks and applies the runtime settings; call once, before any JAX work."""
  if "prng_impl" in config:
    import jax

    require(config.prng_impl in ("threefry2x32", "rbg", "unsafe_rbg"), "prng_impl",
            "use 'rbg' (default), 'threefry2x32' or 'unsafe_rbg'.")
    jax.config.update("jax_default_prng_impl", config.prng_impl)
  if config.get("xla_fast_compile"):
    # Read when the backend starts, i.e. at the first JAX computation, which is still ahead.
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_backend_optimization_level" not in flags:
      os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()
  if config.get("compilation_cache_dir"):
    import jax

    jax.config.update("jax_compilation_cache_dir",
                      os.path.expanduser(config.compilation_cache_dir))
    # Programs that compile faster than this are not cached (1 s: the steps and evaluators,
    # not every small helper); JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS, when set, wins
    # (the test suite caches everything, since its processes all compile the same programs).
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
