"""The `demo_data` task, the demo's first stage: generates its videos (auxskd_jax/demo) into
`<workdir>/raw` and prepares them as two TFDS datasets in `<workdir>/tfds`: the labelled
actions (`demo/stages.ACTIONS`) and the unlabelled pretraining pool (`demo/stages.POOL`)."""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from auxskd_jax import tasks
from auxskd_jax.errors import ConfigError
from auxskd_jax.tasks import Task

KEYS = ("size", "num_frames", "train_per_class", "test_per_class", "pool_synthetic",
        "pool_real")


def _settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  from auxskd_jax.demo import generate

  try:
    return generate.settings(seed=int(config.seed), **{k: config[k] for k in KEYS})
  except ValueError as e:
    raise ConfigError(str(e)) from None


def validate(config: ml_collections.ConfigDict) -> None:
  _settings(config)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Generates (or reuses) the videos, prepares both datasets; returns the manifest."""
  from auxskd_jax.demo import generate, stages

  raw, tfds_dir = os.path.join(workdir, "raw"), os.path.join(workdir, "tfds")
  manifest = generate.generate(raw, _settings(config),
                               progress=lambda m: print(f"[demo] {m}", flush=True))
  prepare = tasks.get("prepare")
  for src, name, labelled in ((manifest["actions_dir"], stages.ACTIONS, True),
                              (manifest["pool_dir"], stages.POOL, False)):
    c = stages.prepare_config(src, tfds_dir, name, labelled, int(config.seed))
    prepare.validate(c)
    prepare.run(c, tfds_dir)
  return manifest


TASK = Task("demo_data", validate, run)
