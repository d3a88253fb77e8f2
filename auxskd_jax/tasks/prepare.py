"""The `prepare` task: source videos -> a prepared TFDS dataset in `data_dir`
(`auxskd_jax.data.prepare`; needs TensorFlow, imported only when this task runs)."""

from __future__ import annotations

from typing import Any

import ml_collections

from auxskd_jax.tasks import Task


def validate(config: ml_collections.ConfigDict) -> None:
  from auxskd_jax.data import prepare

  prepare.validate(config)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Prepares the dataset (into config.data_dir, not the workdir); returns the report."""
  from auxskd_jax.data import prepare

  del workdir
  return prepare.run(config)


TASK = Task("prepare", validate, run, uses_workdir=False)
