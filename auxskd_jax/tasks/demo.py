"""The `demo` task: the demo's settings (configs/demo.py) made a `pipeline` of stages
(`demo/stages.pipeline_config`), run by the pipeline task with the demo's table header.

Compiled steps recur across stages (the three fine-tunings, feature extraction); the global
persistent compilation cache (`config.compilation_cache_dir`, set by `main.py`) reuses them.

Stages (each in its own sub-directory of the workdir; a finished stage leaves
`stage_done.json` and is skipped when the demo is run again, an interrupted one resumes from
its checkpoints):

  data                  generated videos (data/raw), prepared TFDS datasets (data/tfds)
  pretrain/auxskd       auxSKD on the pool          pretrain/auxskd_vspp   VSPP from it
  pretrain/vspp         VSPP from scratch (baseline)
  finetune/<init>, retrieval/<init>, linear_probe/<init>   for init in random / vspp /
                        auxskd_vspp
  results.md, results.json, results.png
"""

from __future__ import annotations

import time
from typing import Any

import ml_collections

from auxskd_jax.demo import motions, stages
from auxskd_jax.errors import require
from auxskd_jax.tasks import Task, common


def validate(config: ml_collections.ConfigDict) -> None:
  """The components' value checks, the demo's, and every stage's values; each stage's own
  task validates its config (files, checkpoints) when it starts: the data is made by the
  first."""
  import jax

  common.check_values(config)
  require("demo" in config, "demo", "the demo needs its `demo` section (configs/demo.py).")
  d = config.demo
  require(d.size >= config.clip.crop_size and d.size % 2 == 0, "demo.size",
          f"must be even and at least clip.crop_size ({config.clip.crop_size}).")
  require(d.num_frames >= config.clip.clip_len, "demo.num_frames",
          f"must be at least clip.clip_len ({config.clip.clip_len}).")
  for key in ("train_per_class", "test_per_class"):
    require(d[key] >= 1, f"demo.{key}", "needs at least one video per class.")
  require(d.pool_synthetic + d.pool_real >= 1, "demo.pool_synthetic",
          "the pretraining pool needs at least one video.")
  n = jax.device_count()
  for name in ("auxskd", "vspp", "finetune"):
    stage = d[name]
    require(stage.num_steps >= 1, f"demo.{name}.num_steps", "must be positive.")
    require(stage.learning_rate > 0, f"demo.{name}.learning_rate", "must be positive.")
    require(stage.batch_size >= n and stage.batch_size % n == 0, f"demo.{name}.batch_size",
            f"must be a positive multiple of the {n} device(s).")
  require(d.probe_steps >= 1, "demo.probe_steps", "must be positive.")
  require(config.auxskd.queue_size >= d.auxskd.batch_size, "auxskd.queue_size",
          f"must hold at least one batch ({d.auxskd.batch_size}).")
  from auxskd_jax.tasks import pipeline

  pipeline.check_structure(_pipeline(config, "."))  # every stage's values; files: at its start


def _effective(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The demo as it runs: `stages.quick(config)` in quick mode."""
  return stages.quick(config) if config.demo.quick else config


def _pipeline(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  return stages.pipeline_config(_effective(config), workdir)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the demo's pipeline in `workdir` (skipping finished stages); returns the results."""
  from auxskd_jax.tasks import pipeline

  run_config = _effective(config)  # for the header
  t_start = time.time()

  def describe(done: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    counts = done["data"]["result"]["counts"]
    info = {"classes": len(motions.CLASSES), "train_videos": counts["train"],
            "test_videos": counts["test"], "pool_videos": counts["pool"],
            "encoder": f"{run_config.model.name} width {run_config.model.width}, "
                        f"{run_config.clip.clip_len}x{run_config.clip.crop_size}x"
                        f"{run_config.clip.crop_size} clips",
            "quick": bool(config.demo.quick), "seconds": round(time.time() - t_start, 1)}
    header = (f"Demo: {info['classes']} motion classes, {info['train_videos']} train / "
              f"{info['test_videos']} test videos, pretraining pool {info['pool_videos']} "
              f"videos; {info['encoder']}; chance = {100.0 / info['classes']:.1f}%.")
    return header, info

  return pipeline.run(stages.pipeline_config(run_config, workdir), workdir, describe=describe)


TASK = Task("demo", validate, run, runtime_config=_effective)
