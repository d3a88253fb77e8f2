"""Reading the variables of one of our runs' orbax checkpoints, whatever the run trained."""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


def checkpoint_dir(workdir: str) -> str:
  """Where a run in `workdir` keeps its checkpoints."""
  if "://" in workdir:  # a bucket (gs://...): orbax writes there directly
    return workdir.rstrip("/") + "/checkpoints"
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def restore_variables(path: str) -> dict[str, Any]:
  """Just the `params` / `batch_stats` trees of a checkpoint, without knowing its structure.

  `path` is a workdir, its `checkpoints/` folder, or one step folder inside it.
  """
  path = os.path.abspath(path)
  candidates = [checkpoint_dir(path), path]
  for root in candidates:
    if not os.path.isdir(root):
      continue
    try:
      manager = ocp.CheckpointManager(root, item_names=("state", "loader"))
      step = manager.latest_step()
    except (ValueError, FileNotFoundError):
      step = None
    if step is not None:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore()))
      manager.close()
      return dict(restored["state"])
    state_dir = os.path.join(root, "state")
    if os.path.isdir(state_dir):
      with ocp.StandardCheckpointer() as checkpointer:
        return dict(checkpointer.restore(state_dir))
  raise FileNotFoundError(
      f"--config.train.init_from={path!r}: no auxskd-jax checkpoint there; give a workdir, its "
      "checkpoints/ folder, one step folder inside it, or a reference .pth file.")
