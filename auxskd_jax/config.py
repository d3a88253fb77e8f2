"""Config defaults, validation and saving shared by every experiment.

Configs are code (`configs/*.py`, each with `get_config()`), in the style of big_vision: a file
starts from `base_config()` and overrides what its experiment changes. Validation runs before
any work starts and before anything is written, so that a bad key or path fails in a second, not
an hour into a run: `validate_static` (values and paths; touches no device), then, once the
process has joined its job, `validate` (the task's own checks, some need the device count) and
`check_init_from` (the checkpoint to start from fits the model). `check_resume` refuses to resume
a workdir's run with another config, unless the keys meant to change are listed.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable

import ml_collections
from absl import logging

from auxskd_jax import defaults, errors
from auxskd_jax.errors import ConfigError, require  # noqa: F401  (re-exported)

# An expected error (a bad flag, a missing file, a corrupt dataset): main.py prints its message
# alone, without a traceback, and exits with status 2. ConfigError is one.
UserError = errors.UserError

# Tasks that evaluate on a labelled test split (the others only read the training split).
EVAL_TASKS = ("finetune", "retrieval", "linear_probe")
# Tasks that bring their own data (the demo generates it; prepare writes it).
NO_DATASET_TASKS = ("demo", "prepare")

# Keys a resumed run may change without listing them in --config.resume_overrides: they change
# speed, logging, storage paths or reports, never what is computed. A dotted name covers a key
# or a whole section.
RESUME_FREE_KEYS = (
    "resume_overrides", "compilation_cache_dir", "xla_fast_compile", "method_chain",
    "data.data_dir", "data.workers", "data.prefetch", "eval.batch_size",
    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "distributed.coordinator_address", "distributed.process_id", "distributed.num_processes",
    "distributed.initialization_timeout", "distributed.local_device_ids",
)


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
  # Resuming a workdir's run with another config fails unless the changed keys are listed here,
  # comma-separated (a section name covers its keys): e.g. "train.num_steps" to train longer.
  # RESUME_FREE_KEYS (paths, logging, workers) may always change.
  c.resume_overrides = ""
  # Multi-process jobs (auxskd_jax/distributed.py); empty values: detect, or run single-process.
  from auxskd_jax import distributed  # local: distributed imports this module's errors

  c.distributed = distributed.config_section()

  c.model = ml_collections.ConfigDict()
  c.model.name = "r21d_10"
  c.model.width = 64
  # Compute dtype; parameters stay float32. "bfloat16" on GPU/TPU. float16 is refused: it needs
  # loss scaling, which the steps do not do.
  c.model.dtype = "float32"
  c.model.embed_dim = 128  # auxSKD projection head
  c.model.predictor_hidden = 1024
  # Initialisation of every layer with weights: "torch" (PyTorch's defaults, which the
  # authors' models keep) or "kaiming" (this port's earlier scheme); see docs/FIDELITY.md.
  c.model.init = "torch"

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
  # A .pth with pickled objects other than argparse.Namespace is refused unless you trust it.
  c.train.trust_pickle = False

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 16
  c.eval.trust_pickle = False  # as train.trust_pickle, for eval.init_from
  # Retrieval / probe features: "pool" (pooled, 512-d at width 64) or "conv5_maxpool" (VCOP's
  # retrieval protocol: conv5 max-pooled (1, 2, 2) and flattened, 9216-d for R(2+1)D).
  c.eval.feature_layer = "pool"
  # Evaluators run inside the training loop (evaluate/evaluators.py), e.g. ("knn",) for the
  # k-NN monitor of pretraining on a labelled set (eval.knn); fine-tuning adds "val".
  c.evaluators = ()
  c.eval.knn = defaults.knn()
  c.eval.every_epochs = 1
  return c


def _json_tree(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as config.json holds it (tuples become lists, unknown types strings)."""
  return json.loads(json.dumps(config.to_dict(), sort_keys=True, default=str))


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the resolved config as `config.json` beside the run's checkpoints (atomically: a
  kill leaves the old file or the new one, never half of one)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(_json_tree(config), f, indent=2, sort_keys=True)
  os.replace(tmp, path)
  return path


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict) or (prefix and not tree):
    return {prefix: tree}
  out: dict[str, Any] = {}
  for k, v in tree.items():
    out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
  return out


def _covered(key: str, names: Iterable[str]) -> bool:
  return any(key == n or key.startswith(n + ".") for n in names)


def _has_progress(workdir: str) -> bool:
  """True when `workdir` holds work a run would resume: checkpoints, or finished demo stages."""
  for root, dirs, files in os.walk(workdir):
    if "checkpoints" in dirs or "stage_done.json" in files:
      return True
    if root[len(workdir):].count(os.sep) >= 2:
      dirs[:] = []  # stages sit at most two levels down (pretrain/auxskd)
  return False


def resume_overrides(config: ml_collections.ConfigDict) -> list[str]:
  """The keys listed in --config.resume_overrides; each must name a key or section."""
  text = str(config.get("resume_overrides", "") or "")
  names = [n.strip().removeprefix("config.") for n in text.split(",") if n.strip()]
  known = _flatten(_json_tree(config))
  for name in names:
    require(_is_key_or_section(name, known), "resume_overrides",
            f"{name!r} is not a config key or section; list the keys meant to change, "
            "comma-separated, e.g. train.num_steps,train.num_epochs.")
  return names


def _is_key_or_section(name: str, keys: Iterable[str]) -> bool:
  return any(k == name or k.startswith(name + ".") for k in keys)


def _short(value: Any) -> str:
  text = json.dumps(value)
  return text if len(text) <= 40 else text[:37] + "..."


def check_resume(config: ml_collections.ConfigDict, workdir: str,
                 allow: Iterable[str] | None = None) -> None:
  """Refuses to resume `workdir`'s run with a config other than the one it was started with.

  Compares with `<workdir>/config.json` when the workdir has something to resume (checkpoints
  or finished demo stages); raises ConfigError naming every key that differs, unless it is in
  RESUME_FREE_KEYS or in `allow` (default: --config.resume_overrides). Keys the saved config
  lacks (added by a newer version of the code) are logged, not refused. Reads only: call it
  before anything is written into the workdir.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path) or not _has_progress(workdir):
    return
  try:
    with open(path) as f:
      saved = _flatten(json.load(f))
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path} is unreadable ({e}); move it away to resume without the check, "
                      "or use another --workdir.") from None
  allowed = tuple(RESUME_FREE_KEYS) + tuple(resume_overrides(config) if allow is None else allow)
  now = _flatten(_json_tree(config))
  new_keys = sorted(k for k in set(now) - set(saved) if not _covered(k, allowed))
  if new_keys:
    logging.warning("Resuming %s: its config.json predates the keys %s (taken as configured).",
                    workdir, ", ".join(new_keys))
  diffs = [k for k in sorted(set(saved) | set(now))
           if k in saved and now.get(k, "<absent>") != saved[k] and not _covered(k, allowed)]
  if not diffs:
    return
  shown = "; ".join(f"{k}: {_short(saved[k])} -> "
                    f"{_short(now[k]) if k in now else '(absent)'}" for k in diffs[:8])
  more = f" and {len(diffs) - 8} more" if len(diffs) > 8 else ""
  raise ConfigError(
      f"--workdir={workdir} holds a run with another config ({shown}{more}). Resume it with "
      f"the same config, start a new --workdir, or list the keys meant to change: "
      f"--config.resume_overrides={','.join(diffs)}")


def validate_common(config: ml_collections.ConfigDict) -> None:
  """Checks that hold for every task that has the section in question."""
  if "model" in config:
    from auxskd_jax import models  # local: keeps `config` importable without jax

    require(config.model.name in models.NAMES, "model.name",
            f"{config.model.name!r} is not a backbone; choose one of {sorted(models.NAMES)}.")
    require(config.model.dtype != "float16", "model.dtype",
            "float16 needs loss scaling, which the training steps do not do (its gradients "
            "underflow); use bfloat16 for mixed precision, or float32.")
    require(config.model.dtype in ("float32", "bfloat16"), "model.dtype",
            "use float32 or bfloat16 (mixed precision; parameters stay float32).")
    require(config.model.width > 0, "model.width", "must be positive (64 is the paper's).")
    require(config.model.get("init", "torch") in models.INIT_SCHEMES, "model.init",
            f"use one of {list(models.INIT_SCHEMES)} ('torch' = PyTorch's defaults).")
    require(config.model.name != "s3d_g" or config.model.width % 8 == 0, "model.width",
            "S3D-G's channel counts need a width that is a multiple of 8 (64 is the release's).")
    if "clip" in config:
      try:
        models.check_input(config.model.name, config.clip.clip_len, config.clip.crop_size)
      except ValueError as e:
        raise ConfigError(f"--config.clip.crop_size / clip.clip_len: {e}") from None
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


def _task_known(config: ml_collections.ConfigDict) -> None:
  from auxskd_jax import tasks

  require("task" in config, "task", "every config needs a task.")
  if not tasks.known(config.task):
    raise ConfigError(
        f"--config.task: {config.task!r} is not a known task; choose one of "
        f"{sorted(tasks.TASKS)}.")


def validate_paths(config: ml_collections.ConfigDict) -> None:
  """The files a run reads exist: the checkpoints to start from and the prepared dataset."""
  for key in ("train.init_from", "eval.init_from"):
    section, name = key.split(".")
    path = config[section].get(name, "") if section in config else ""
    require(not path or os.path.exists(path), key,
            f"{path!r} does not exist; give one of our workdirs / checkpoint directories or a "
            "reference PyTorch .pth, or '' to start from a random initialisation.")
  if "data" not in config or config.task in NO_DATASET_TASKS:
    return
  d = config.data
  require(bool(d.data_dir), "data.data_dir",
          "set it to the directory where the `prepare` task wrote the datasets "
          "(python main.py --config=configs/prepare.py ...).")
  require(os.path.isdir(d.data_dir), "data.data_dir",
          f"{d.data_dir!r} is not a directory; give the directory where the `prepare` task "
          "wrote the datasets.")
  require(bool(d.name), "data.name", "set the prepared dataset, e.g. ucf101/split1.")
  from auxskd_jax import data  # local: keeps this module importable without jax

  splits = [d.train_split] + ([d.test_split] if config.task in EVAL_TASKS else [])
  where = f"--config.data.name={d.name!r} in --config.data.data_dir={d.data_dir!r}"
  for split in splits:
    try:
      source = data.open_split(d.data_dir, d.name, split)
    except (OSError, KeyError, ValueError) as e:
      if isinstance(e, ConfigError):
        raise
      message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
      raise ConfigError(f"{where}, split {split!r}: {message}") from None
    try:
      len(source.records)  # opens every shard and reads its footer: finds truncated shards
    except (OSError, RuntimeError, ValueError):
      bad = _unreadable_shard(source.dataset_dir, split)
      raise ConfigError(
          f"{where}, split {split!r}: the shard {bad} is unreadable (truncated or corrupt?); "
          "prepare the dataset again.") from None


def _unreadable_shard(dataset_dir: str, split: str) -> str:
  """The first shard file of `split` that array_record cannot open (for the error message)."""
  from array_record.python.array_record_data_source import ArrayRecordDataSource

  from auxskd_jax.data import reader

  for path in reader.shard_paths(dataset_dir, split)[0]:
    try:
      len(ArrayRecordDataSource([path]))
    except (OSError, RuntimeError, ValueError):
      return path
  return f"of {dataset_dir}"


def validate_static(config: ml_collections.ConfigDict) -> None:
  """The checks that need no device: values, and the files the run reads. main.py runs them
  before joining a multi-process job (a typo fails at once, not after every process joined)."""
  _task_known(config)
  validate_common(config)
  if config.task != "prepare":
    resume_overrides(config)
  validate_paths(config)


def validate(config: ml_collections.ConfigDict) -> None:
  """Validates `config` for its task; raises ConfigError before any work starts.

  Includes the task's own checks, some of which count the devices: in a multi-process job call
  it after `distributed.initialize`.
  """
  validate_static(config)
  module = _task_module(config.task)
  task_validate = getattr(module, "validate", None)
  if task_validate is not None:
    task_validate(config)
  _VALIDATED.add(_fingerprint(config))


# Configs (by content) that `validate` passed in this process: a task's runner skips its own
# checks for them, so a run through main.py validates once (some checks open every shard).
_VALIDATED: set[str] = set()


def _fingerprint(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), sort_keys=True, default=str)


def ensure_valid(config: ml_collections.ConfigDict,
                 task_validate: Callable[[ml_collections.ConfigDict], None]) -> None:
  """What a task's `run` calls first: its own `task_validate(config)`, unless `validate`
  already passed this config (main.py validates before anything is written)."""
  if _fingerprint(config) not in _VALIDATED:
    task_validate(config)


def _task_module(task: str) -> Any:
  from auxskd_jax import tasks

  return tasks.get_task_module(task)


def check_init_from(config: ml_collections.ConfigDict) -> None:
  """The checkpoint the run starts from fits the configured backbone (a .pth of another model,
  a workdir of another width): checked before any work, with the layers that do not fit named.

  Loads the checkpoint once more than the run will; shapes come from `jax.eval_shape`, so no
  model is compiled.
  """
  keys = [k for k in ("train.init_from", "eval.init_from")
          if k.split(".")[0] in config and config[k.split(".")[0]].get(k.split(".")[1], "")]
  if not keys or "model" not in config:
    return
  from auxskd_jax.evaluate import backbone
  from auxskd_jax.train import init_from

  _, variables = backbone.build_and_init(config, random=False)
  for key in keys:
    section, name = key.split(".")
    path = config[section][name]
    if config.task in EVAL_TASKS:  # every backbone layer must load
      backbone.load_backbone(path, variables, key=key, model_name=config.model.name)
      continue
    try:
      init_from.load_encoder(path, variables, model_name=config.model.name)
    except (KeyError, ValueError, OSError) as e:
      message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
      prefix = f"--config.{key}="
      message = message if message.startswith(prefix) else f"{prefix}{path!r}: {message}"
      raise ConfigError(" ".join(message.split())) from None
