"""Config defaults, validation and saving shared by every experiment.

Configs are code (`configs/*.py`, each with `get_config()`), in the style of big_vision: a file
starts from `base_config()` and overrides what its experiment changes. `validate` runs before
any work starts so that a bad key fails in a second, not an hour into a run.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from auxskd_jax.errors import ConfigError, require  # noqa: F401  (re-exported)


def base_config() -> ml_collections.ConfigDict:
  """Defaults for every section; values are the paper's (SPEC sections 3, 4, 6)."""
  c = ml_collections.ConfigDict()
  c.task = "demo"
  c.seed = 0
  # JAX PRNG implementation for the whole run. "rbg" compiles far faster than threefry on
  # XLA:CPU and is fast on GPU/TPU; results are reproducible for a given seed and backend.
  c.prng_impl = "rbg"
  # Persistent XLA compilation cache ("" turns it off). Steps that recur across stages (the
  # demo's fine-tunes, a resumed run) then compile once per machine, not once per process.
  c.compilation_cache_dir = "~/.cache/auxskd-jax/xla"
  # XLA's unoptimised code generation: compiles about 2x faster, kernels somewhat slower. For
  # compile-bound CPU runs (the demo, tests); leave off for real training on GPU/TPU.
  c.xla_fast_compile = False
  # What the run is called in reports (e.g. "auxSKD -> VSPP").
  c.method_chain = ""

  c.model = ml_collections.ConfigDict()
  c.model.name = "r21d_10"
  c.model.width = 64
  c.model.dtype = "float32"  # compute dtype; parameters stay float32. "bfloat16" on GPU/TPU.
  c.model.embed_dim = 128  # auxSKD projection head
  c.model.predictor_hidden = 1024

  c.data = ml_collections.ConfigDict()
  c.data.data_dir = ""  # where prepared TFDS datasets live
  c.data.name = ""  # e.g. "ucf101/split1", "kinetics/k100", "video_folder"
  c.data.train_split = "train"
  c.data.test_split = "test"
  c.data.workers = 0  # grain worker processes; 0 = in the main process
  c.data.prefetch = 2

  c.clip = ml_collections.ConfigDict()
  c.clip.clip_len = 16
  c.clip.num_segments = 4
  c.clip.max_speed = 4
  c.clip.crop_size = 112
  c.clip.vcop_gap = 8
  c.clip.vcop_clips = 3
  c.clip.eval_clips = 10

  c.augment = ml_collections.ConfigDict()
  c.augment.flip = True
  c.augment.jitter_prob = 0.8
  c.augment.brightness = 0.8
  c.augment.contrast = 0.8
  c.augment.saturation = 0.8
  c.augment.hue = 0.2
  c.augment.jitter_per_frame = True
  c.augment.input_convention = "reference"  # float 0..255 BGR, or "rgb" (normalised)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.001
  c.optim.momentum = 0.9
  c.optim.weight_decay = 0.005
  c.optim.schedule = "step"  # "step" (x decay_factor every decay_epochs), "cosine", "constant"
  c.optim.decay_epochs = 6
  c.optim.decay_factor = 0.1
  c.optim.warmup_epochs = 0.0

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 30  # global, over all devices of all hosts
  c.train.num_epochs = 20
  c.train.num_steps = -1  # > 0 overrides num_epochs
  c.train.steps_per_epoch = -1  # > 0 overrides len(dataset) * repeats // batch
  c.train.repeats_per_epoch = 1  # VSPP visits each video 10 times an epoch
  c.train.log_every = 10
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3
  c.train.init_from = ""  # checkpoint dir / .pth to initialise the backbone from
  c.train.bn = "sync"  # "sync" (cross-device statistics) or "local"

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 16
  c.eval.every_epochs = 1
  return c


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return config.to_dict()


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the resolved config as `config.json` beside the run's checkpoints."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  with open(path, "w") as f:
    json.dump(config.to_dict(), f, indent=2, sort_keys=True, default=str)
  return path


def validate_common(config: ml_collections.ConfigDict) -> None:
  """Checks that hold for every task that has the section in question."""
  if "model" in config:
    from auxskd_jax import models  # local: keeps `config` importable without jax

    require(config.model.name in models.NAMES, "model.name",
            f"{config.model.name!r} is not a backbone; choose one of {sorted(models.NAMES)}.")
    require(config.model.dtype in ("float32", "bfloat16", "float16"), "model.dtype",
            "use float32, bfloat16 or float16.")
    require(config.model.width > 0, "model.width", "must be positive (64 is the paper's).")
  if "clip" in config:
    c = config.clip
    require(c.clip_len > 0 and c.num_segments > 0 and c.clip_len % c.num_segments == 0,
            "clip.num_segments", f"must divide clip.clip_len ({c.clip_len}).")
    require(c.max_speed >= 1, "clip.max_speed", "must be at least 1.")
    require(c.crop_size > 0, "clip.crop_size", "must be positive.")
  if "augment" in config:
    require(config.augment.input_convention in ("reference", "rgb"),
            "augment.input_convention", "use 'reference' (0..255 BGR) or 'rgb'.")
    require(0.0 <= config.augment.jitter_prob <= 1.0, "augment.jitter_prob",
            "is a probability in [0, 1].")
  if "optim" in config:
    require(config.optim.schedule in ("step", "cosine", "constant"), "optim.schedule",
            "use 'step', 'cosine' or 'constant'.")
    require(config.optim.learning_rate > 0, "optim.learning_rate", "must be positive.")
  if "train" in config:
    require(config.train.batch_size > 0, "train.batch_size", "must be positive.")
    require(config.train.bn in ("sync", "local"), "train.bn", "use 'sync' or 'local'.")


def apply_runtime(config: ml_collections.ConfigDict) -> None:
  """Process-wide JAX settings the config asks for; call once, before any JAX work."""
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
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def validate(config: ml_collections.ConfigDict) -> None:
  """Validates `config` for its task; raises ConfigError before any work starts."""
  from auxskd_jax import tasks

  require("task" in config, "task", "every config needs a task.")
  if config.task not in tasks.TASKS:
    raise ConfigError(
        f"--config.task: {config.task!r} is not a known task; choose one of "
        f"{sorted(tasks.TASKS)}.")
  validate_common(config)
  module = tasks.get_task_module(config.task)
  task_validate = getattr(module, "validate", None)
  if task_validate is not None:
    task_validate(config)
