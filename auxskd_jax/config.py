"""The experiment config's schema: defaults, saving, and the resume rule.

Configs are code (`configs/*.py`, each with `get_config()`), in the style of big_vision: a file
starts from `base_config()` and overrides what its experiment changes. The checks of the values
live with the code that uses them (models, ops, data, weights, train); a task puts them
together (`auxskd_jax/tasks/`). `check_resume` refuses to resume a workdir's run with another
config, unless the keys meant to change are listed.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

import ml_collections
from absl import logging

from auxskd_jax import defaults, distributed, errors, runtime
from auxskd_jax.trees import flatten
from auxskd_jax.errors import ConfigError, require  # noqa: F401  (re-exported)

# An expected error (a bad flag, a missing file, a corrupt dataset): main.py prints its message
# alone, without a traceback, and exits with status 2. ConfigError is one.
UserError = errors.UserError

# Keys a resumed run may change without listing them in --config.resume_overrides: they change
# speed, logging, storage paths or reports, never what is computed. A dotted name covers a key
# or a whole section.
RESUME_FREE_KEYS = (
    "resume_overrides", "compilation_cache_dir", "xla_fast_compile", "xla_cpu_ynnpack_ops",
    "xla_cpu_scheduler",
    "method_chain",
    "data.data_dir", "data.workers", "data.prefetch", "eval.batch_size",
    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "distributed.coordinator_address", "distributed.process_id", "distributed.num_processes",
    "distributed.initialization_timeout", "distributed.local_device_ids",
    "distributed.heartbeat_timeout", "distributed.first_collective_timeout", "logging",
    "lease",
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
  # The op kinds XLA:CPU hands to YNNPACK (comma-separated; "" keeps XLA's default, which also
  # sends convolutions there). Convolutions stay on XLA's own (Eigen) kernels: on the 2-core
  # CPUs we measured, the whole training step is then about 1.4x faster (BENCHMARKS.md). The
  # results differ from XLA's default by float32 rounding only. No effect on GPU/TPU.
  c.xla_cpu_ynnpack_ops = runtime.DEFAULT_YNNPACK_OPS  # "dot,reduce"
  # XLA:CPU's instruction scheduler: "memory_optimized" (1.09-1.12x faster steps on a 2-core
  # CPU, BENCHMARKS.md; the same results), "default" or "concurrency_optimized". No effect on
  # GPU/TPU.
  c.xla_cpu_scheduler = runtime.DEFAULT_CPU_SCHEDULER
  # What the run is called in reports (e.g. "auxSKD -> VSPP").
  c.method_chain = ""
  # Resuming a workdir's run with another config fails unless the changed keys are listed here,
  # comma-separated (a section name covers its keys): e.g. "train.num_steps" to train longer.
  # RESUME_FREE_KEYS (paths, logging, workers) may always change.
  c.resume_overrides = ""
  # Multi-process jobs (auxskd_jax/distributed.py); empty values: detect, or run single-process.
  c.distributed = distributed.config_section()
  # The workdir lease (auxskd_jax/workdir_lock.py, docs/SCALING.md): the holder rewrites it every
  # `renew_every` seconds; one not renewed for `stale_after` seconds is taken over, even from a
  # process that still holds its lock (stopped, hung), which exits when it wakes.
  c.lease = ml_collections.ConfigDict()
  c.lease.renew_every = 30
  c.lease.stale_after = 300

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
  # How convolutions are lowered (models/layers.py): "auto" is XLA's convolutions everywhere
  # except, on a CPU, the kernel gradient of the stride-1 temporal convs, which runs as one dot
  # over all taps (float32 rounding only; whole steps 1.01-1.08x on a 2-core Intel Xeon,
  # BENCHMARKS.md). "xla": XLA's convolutions only; "native", "im2col", "shifted": for study.
  c.model.conv_lowering = "auto"

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
  c.train.init_from = ""  # checkpoint dir / .pth to initialise the encoder from
  # "sync" (statistics over all devices: the authors' one-GPU run), "local" (per device, the
  # devices' mean running statistics) or "dataparallel" (per device, device 0's running
  # statistics: their DataParallel at the same per-device batch); docs/FIDELITY.md.
  c.train.bn = "sync"
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

  # Experiment trackers beside TensorBoard and metrics.jsonl, written by process 0 only.
  c.logging = ml_collections.ConfigDict()
  # Also log the training scalars and the resolved config to Weights & Biases (needs
  # pip install 'auxskd-jax[wandb]'; WANDB_MODE=offline keeps the run on disk).
  c.logging.wandb = False
  c.logging.wandb_project = "auxskd-jax"  # the W&B project the runs go to
  c.logging.wandb_entity = ""  # the W&B team or user ("" = your default entity)
  c.logging.wandb_name = ""  # the W&B run's name ("" = the workdir's name)
  return c


def json_tree(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as config.json holds it (tuples become lists, unknown types strings)."""
  return json.loads(json.dumps(config.to_dict(), sort_keys=True, default=str))


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the resolved config as `config.json` beside the run's checkpoints (atomically: a
  kill leaves the old file or the new one, never half of one)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(json_tree(config), f, indent=2, sort_keys=True)
  os.replace(tmp, path)
  return path


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
  known = flatten(json_tree(config))
  for name in names:
    require(any(_covered(k, (name,)) for k in known), "resume_overrides",
            f"{name!r} is not a config key or section; list the keys meant to change, "
            "comma-separated, e.g. train.num_steps,train.num_epochs.")
  return names


def _short(value: Any) -> str:
  text = json.dumps(value)
  return text if len(text) <= 40 else text[:37] + "..."


def changed_keys(saved: dict[str, Any], config: ml_collections.ConfigDict,
                 allowed: Iterable[str] = ()) -> list[str]:
  """The keys of the flat `saved` config (`flatten` of a config.json) whose value `config`
  changes, except RESUME_FREE_KEYS and `allowed` (keys `config` adds are not changes)."""
  allowed = tuple(RESUME_FREE_KEYS) + tuple(allowed)
  now = flatten(json_tree(config))
  return [k for k in sorted(set(saved) | set(now))
          if k in saved and now.get(k, "<absent>") != saved[k] and not _covered(k, allowed)]


def check_resume(config: ml_collections.ConfigDict, workdir: str,
                 allow: Iterable[str] | None = None, *, prefix: str = "") -> None:
  """Refuses to resume `workdir`'s run with a config other than the one it was started with.

  Compares with `<workdir>/config.json` when the workdir has something to resume (checkpoints
  or finished demo stages); raises ConfigError naming every key that differs, unless it is in
  RESUME_FREE_KEYS or in `allow` (default: --config.resume_overrides). Keys the saved config
  lacks (added by a newer version of the code) are logged, not refused. Reads only: call it
  before anything is written into the workdir. `prefix` (e.g. "stages.auxskd.") is put before
  the keys the message names: the config is one stage of a pipeline.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path) or not _has_progress(workdir):
    return
  try:
    with open(path) as f:
      saved = flatten(json.load(f))
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path} is unreadable ({e}); move it away to resume without the check, "
                      "or use another --workdir.") from None
  allowed = tuple(RESUME_FREE_KEYS) + tuple(resume_overrides(config) if allow is None else allow)
  now = flatten(json_tree(config))
  new_keys = sorted(k for k in set(now) - set(saved) if not _covered(k, allowed))
  if new_keys:
    logging.warning("Resuming %s: its config.json predates the keys %s (taken as configured).",
                    workdir, ", ".join(new_keys))
  diffs = changed_keys(saved, config, allowed)
  if not diffs:
    return
  shown = "; ".join(f"{prefix}{k}: {_short(saved[k])} -> "
                    f"{_short(now[k]) if k in now else '(absent)'}" for k in diffs[:8])
  more = f" and {len(diffs) - 8} more" if len(diffs) > 8 else ""
  raise ConfigError(
      f"--workdir={workdir} holds a run with another config ({shown}{more}). Resume it with "
      f"the same config, start a new --workdir, or list the keys meant to change: "
      f"--config.resume_overrides={','.join(prefix + k for k in diffs)}")
