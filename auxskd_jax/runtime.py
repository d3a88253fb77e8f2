"""Process-wide JAX settings a config asks for (PRNG, XLA flags, compilation cache)."""

from __future__ import annotations

import importlib.metadata
import os

import ml_collections

from auxskd_jax.errors import require

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"
YNN_OPS = ("dot", "individual_dot", "reduce", "eltwise", "individual_convolution")
# config.xla_cpu_ynnpack_ops's default: convolutions stay on XLA's own kernels (BENCHMARKS.md).
DEFAULT_YNNPACK_OPS = "dot,reduce"
# jaxlib versions the XLA:CPU flags below were measured on (BENCHMARKS.md). They are
# experimental: a jaxlib without one would abort on an unknown XLA flag, so others keep XLA's
# own choice.
_MEASURED_JAXLIB = ((0, 10), (0, 12))
SCHEDULER_FLAG = "--xla_cpu_scheduler_type"
# config.xla_cpu_scheduler: XLA:CPU's instruction order. "memory_optimized" keeps each
# activation's producer and consumers close, so they meet in cache: 1.09-1.12x faster steps on a
# 2-core Intel Xeon (BENCHMARKS.md); the order changes no result (each op computes the same).
CPU_SCHEDULERS = ("memory_optimized", "default", "concurrency_optimized")
DEFAULT_CPU_SCHEDULER = "memory_optimized"


def ynn_ops(value: str) -> list[str]:
  """`xla_cpu_ynnpack_ops` as a list of XLA's YNNPACK fusion types, checked."""
  ops = [op.strip() for op in value.split(",") if op.strip()]
  for op in ops:
    require(op in YNN_OPS, "xla_cpu_ynnpack_ops",
            f"{op!r} is not a YNNPACK fusion type: use a comma-separated subset of "
            f"{', '.join(YNN_OPS)}, or '' for XLA's default.")
  return ops


def _jaxlib_measured() -> bool:
  try:
    version = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return False
  major_minor = tuple(int(v) for v in version.split(".")[:2])
  return _MEASURED_JAXLIB[0] <= major_minor <= _MEASURED_JAXLIB[1]


def _add_cpu_flag(flag: str, value: str) -> None:
  """Appends `flag=value` to XLA_FLAGS (read when the backend starts), unless XLA_FLAGS sets
  the flag already (the environment wins) or this jaxlib was not measured with it."""
  flags = os.environ.get("XLA_FLAGS", "")
  if flag not in flags and _jaxlib_measured():
    os.environ["XLA_FLAGS"] = f"{flags} {flag}={value}".strip()


def set_ynnpack_ops(value: str | None = None) -> None:
  """Sends exactly these op kinds (None: `DEFAULT_YNNPACK_OPS`) to YNNPACK on the CPU, through
  XLA_FLAGS (read when the backend starts, at the first JAX computation). Nothing is added for
  "" (XLA's default), for an untested jaxlib, when XLA_FLAGS already sets the flag (the
  environment wins), or under unoptimised codegen (`xla_fast_compile`, the tests), where the
  choice was measured only to round worse in one case (jax 0.10: VCOP's authors'-step parity
  3.4x its tolerance; docs/FIDELITY.md)."""
  ops = ynn_ops(DEFAULT_YNNPACK_OPS if value is None else value)
  if ops and FAST_COMPILE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    _add_cpu_flag(YNN_FLAG, ",".join(ops))


def set_cpu_scheduler(value: str | None = None) -> None:
  """XLA:CPU's scheduler (None: `DEFAULT_CPU_SCHEDULER`), through XLA_FLAGS like
  `set_ynnpack_ops`: nothing is added for "default", for a jaxlib it was not measured on (an
  unknown flag aborts XLA) or when XLA_FLAGS already sets it (the environment wins). GPU and
  TPU programs are unaffected."""
  name = DEFAULT_CPU_SCHEDULER if value is None else value
  require(name in CPU_SCHEDULERS, "xla_cpu_scheduler",
          f"{name!r} is not a scheduler: use one of {', '.join(CPU_SCHEDULERS)}.")
  if name != "default":
    _add_cpu_flag(SCHEDULER_FLAG, f"CPU_SCHEDULER_TYPE_{name.upper()}")


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
      os.environ["XLA_FLAGS"] = (flags + " " + FAST_COMPILE_FLAG).strip()
  if "xla_cpu_ynnpack_ops" in config:
    set_ynnpack_ops(config.xla_cpu_ynnpack_ops)
  if "xla_cpu_scheduler" in config:
    set_cpu_scheduler(config.xla_cpu_scheduler)
  if config.get("compilation_cache_dir"):
    import jax

    jax.config.update("jax_compilation_cache_dir",
                      os.path.expanduser(config.compilation_cache_dir))
    # Programs that compile faster than this are not cached (1 s: the steps and evaluators,
    # not every small helper); JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS, when set, wins
    # (the test suite caches everything, since its processes all compile the same programs).
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
