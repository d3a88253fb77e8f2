"""The `demo` task: generate data, prepare it, pretrain, evaluate three inits, report.

Compiled steps recur across stages (the three fine-tunings, feature extraction); the global
persistent compilation cache (`config.compilation_cache_dir`, set by `main.py`) reuses them.

Stages (each in its own sub-directory of the workdir; a finished stage leaves
`stage_done.json` and is skipped when the demo is run again, an interrupted one resumes from
its checkpoints):

  data/raw              generated videos            data/tfds   prepared TFDS datasets
  pretrain/auxskd       auxSKD on the pool          pretrain/auxskd_vspp   VSPP from it
  pretrain/vspp         VSPP from scratch (baseline)
  finetune/<init>, retrieval/<init>, linear_probe/<init>   for init in random / vspp /
                        auxskd_vspp
  results.md, results.json, results.png
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import ml_collections

from auxskd_jax import tasks
from auxskd_jax.demo import motions, stages
from auxskd_jax.errors import require
from auxskd_jax.evaluate import summary
from auxskd_jax.tasks import Task, common

DONE = "stage_done.json"


def validate(config: ml_collections.ConfigDict) -> None:
  """The components' value checks and the demo's; each stage's own task validates its config
  when it starts."""
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


def _say(message: str) -> None:
  print(f"[demo] {message}", flush=True)


def _stage(workdir: str, name: str, fn: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
  """Runs `fn(stage_dir)` unless the stage finished before; records its result."""
  stage_dir = os.path.join(workdir, name)
  done = os.path.join(stage_dir, DONE)
  if os.path.exists(done):
    with open(done) as f:
      _say(f"{name}: done before, skipped")
      return json.load(f)
  _say(f"{name}: starting")
  t0 = time.time()
  result = fn(stage_dir)
  os.makedirs(stage_dir, exist_ok=True)
  with open(done, "w") as f:
    json.dump(result, f, indent=2, default=str)
  _say(f"{name}: finished in {time.time() - t0:.0f}s")
  return result


def _run_task(name: str, config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """One stage: the task `name`, validated, then run."""
  task = tasks.get(name)
  task.validate(config)
  return task.run(config, workdir)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the whole demo in `workdir` (resuming finished stages); returns the results."""
  from auxskd_jax.demo import generate

  if config.demo.quick:
    config = stages.quick(config)
  t_start = time.time()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  d = config.demo
  raw = os.path.join(workdir, "data", "raw")
  tfds_dir = os.path.join(workdir, "data", "tfds")

  def make_data(_: str) -> dict[str, Any]:
    s = generate.settings(seed=int(config.seed), size=d.size, num_frames=d.num_frames,
                          train_per_class=d.train_per_class, test_per_class=d.test_per_class,
                          pool_synthetic=d.pool_synthetic, pool_real=d.pool_real)
    manifest = generate.generate(raw, s, progress=_say)
    for src, name, labelled in ((manifest["actions_dir"], stages.ACTIONS, True),
                                (manifest["pool_dir"], stages.POOL, False)):
      _run_task("prepare", stages.prepare_config(src, tfds_dir, name, labelled,
                                                 int(config.seed)), tfds_dir)
    return manifest

  manifest = _stage(workdir, "data", make_data)

  def pretrain(task: str, init_from: str, chain: str) -> Callable[[str], dict[str, Any]]:
    def fn(stage_dir: str) -> dict[str, Any]:
      c = stages.pretrain_config(config, task, tfds_dir, init_from, chain)
      result = _run_task(task, c, stage_dir)
      return {**result, "final": summary.last_train_metrics(stage_dir)}
    return fn

  pre = os.path.join(workdir, "pretrain")
  _stage(workdir, "pretrain/vspp", pretrain("vspp", "", "VSPP"))
  _stage(workdir, "pretrain/auxskd", pretrain("auxskd", "", "auxSKD"))
  _stage(workdir, "pretrain/auxskd_vspp",
         pretrain("vspp", os.path.join(pre, "auxskd"), "auxSKD -> VSPP"))

  finetune, retrieval, probe, pretext = {}, {}, {}, {}
  for init, source in stages.INITS.items():
    ckpt = os.path.join(pre, source) if source else ""
    slug = source or "random"
    chain = init if source else ""
    finetune[init] = _stage(workdir, f"finetune/{slug}", lambda sd, c=ckpt, m=chain: _run_task(
        "finetune", stages.finetune_config(config, tfds_dir, c, m), sd))
    retrieval[init] = _stage(workdir, f"retrieval/{slug}", lambda sd, c=ckpt, m=chain: _run_task(
        "retrieval", stages.retrieval_config(config, tfds_dir, c, m), sd))
    probe[init] = _stage(workdir, f"linear_probe/{slug}", lambda sd, c=ckpt, m=chain: _run_task(
        "linear_probe", stages.probe_config(config, tfds_dir, c, m), sd))
    if source:
      pretext[init] = summary.last_train_metrics(os.path.join(pre, source))

  table = summary.rows(finetune, retrieval, probe, pretext)
  info = {"classes": len(motions.CLASSES), "train_videos": manifest["counts"]["train"],
          "test_videos": manifest["counts"]["test"], "pool_videos": manifest["counts"]["pool"],
          "backbone": f"{config.model.name} width {config.model.width}, "
                      f"{config.clip.clip_len}x{config.clip.crop_size}x{config.clip.crop_size} "
                      "clips",
          "quick": bool(config.demo.quick),
          "seconds": round(time.time() - t_start, 1)}
  header = (f"Demo: {info['classes']} motion classes, {info['train_videos']} train / "
            f"{info['test_videos']} test videos, pretraining pool {info['pool_videos']} "
            f"videos; {info['backbone']}; chance = {100.0 / info['classes']:.1f}%.")
  paths = summary.write(workdir, table, header, info)
  with open(paths["md"]) as f:
    print(f.read(), flush=True)
  _say(f"done in {info['seconds']:.0f}s; results in {paths['md']}, {paths['png']}")
  return {"rows": table, "info": info, "paths": paths}


TASK = Task("demo", validate, run)
