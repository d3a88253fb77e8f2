"""Checkpoints with everything a run needs to continue exactly: the train state (teacher, queue,
pointer and step included) and every process's input-iterator state, in `<workdir>/checkpoints/`.

Saves are asynchronous (orbax) and collective: every process calls `save` with the same step
(orbax synchronises them; process 0 writes the host-numpy state, all processes must see the same
directory, e.g. a shared file system or a bucket). A step counts as saved only once its async
write has finished (`last_good_step`). The manager keeps the last N and, when it starts,
deletes temporary step directories that a killed save left behind. The RNG needs no saving:
each step's keys are derived from the base seed and the step number.

The `loader` item holds one iterator state per process, by process index:
`{"format": 2, "process_count": P, "states": [state_0, ..., state_P-1]}` (older checkpoints
hold a single state, `{"kind": ...}`, and still restore). Restoring with the same process count
gives each process its own state. With another process count (see docs/SCALING.md) the saved
states are reused only when they are all the same (the data loader's state is its batch index,
the same in every process, and batch k covers the same videos for any process count when the
global batch is unchanged: the run continues exactly); otherwise the loader starts afresh (from
the first batch of its endless stream) with a warning, while the train state still continues
exactly.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from auxskd_jax import distributed
from auxskd_jax.train import state as state_lib
from auxskd_jax.weights.orbax import checkpoint_dir, restore_variables  # noqa: F401

LOADER_FORMAT = 2


def _manager_options(keep: int, async_save: bool) -> ocp.CheckpointManagerOptions:
  """Keeps the last `keep` steps with orbax's `preservation_policy` where it exists (the
  `max_to_keep` option is deprecated there), `max_to_keep` on older orbax."""
  fields = {f.name for f in dataclasses.fields(ocp.CheckpointManagerOptions)}
  kwargs: dict[str, Any] = {"create": True, "enable_async_checkpointing": async_save}
  if "cleanup_tmp_directories" in fields:
    kwargs["cleanup_tmp_directories"] = True
  latest_n = getattr(getattr(ocp, "checkpoint_managers", None), "LatestN", None)
  if "preservation_policy" in fields and latest_n is not None:
    kwargs["preservation_policy"] = latest_n(n=keep)
  else:
    kwargs["max_to_keep"] = keep
  return ocp.CheckpointManagerOptions(**kwargs)


def make_manager(workdir: str, *, keep: int = 3, async_save: bool = True
                 ) -> ocp.CheckpointManager:
  """The run's checkpoint manager (create it in every process)."""
  return ocp.CheckpointManager(checkpoint_dir(workdir),
                               options=_manager_options(max(1, int(keep)), async_save),
                               item_names=("state", "loader"))


def _encode_loader_state(loader_state: Any) -> dict[str, Any]:
  """grain iterator states are bytes or JSON-able dicts; JSON holds both."""
  if loader_state is None:
    return {"kind": "none"}
  if isinstance(loader_state, (bytes, bytearray)):
    return {"kind": "bytes", "value": base64.b64encode(bytes(loader_state)).decode("ascii")}
  return {"kind": "json", "value": loader_state}


def _decode_loader_state(saved: dict[str, Any]) -> Any:
  kind = saved.get("kind", "none")
  if kind == "bytes":
    return base64.b64decode(saved["value"])
  if kind == "json":
    return saved["value"]
  return None


def gather_loader_states(loader_state: Any) -> dict[str, Any]:
  """The `loader` item: every process's encoded state, by process index (a collective)."""
  mine = json.dumps(_encode_loader_state(loader_state), sort_keys=True).encode()
  states = [json.loads(b.decode()) for b in distributed.allgather_bytes(mine)]
  return {"format": LOADER_FORMAT, "process_count": len(states), "states": states}


def loader_state_for_process(saved: dict[str, Any] | None, process_index: int,
                             process_count: int) -> Any:
  """This process's iterator state from a `loader` item (either layout); None = start afresh."""
  if not saved:
    return None
  states = saved.get("states") if "states" in saved else [saved]  # older: a single state
  if not states:
    return None
  if len(states) == process_count:
    return _decode_loader_state(states[process_index])
  if all(s == states[0] for s in states):
    logging.info("The checkpoint's loader state comes from %d process(es), this run has %d; "
                 "every process saved the same state, so each continues from it.", len(states),
                 process_count)
    return _decode_loader_state(states[0])
  logging.warning(
      "The checkpoint was written by %d process(es), this run has %d, and their data-loader "
      "positions differ: the data loader starts afresh (the first batch of its stream); the "
      "model, optimizer and step continue exactly. See docs/SCALING.md.", len(states),
      process_count)
  return None


def save(manager: ocp.CheckpointManager, step: int, host_state: state_lib.TrainState,
         loader_state: Any, *, force: bool = False, wait: bool = False) -> bool:
  """Starts an async save of a host (unreplicated) state in every process (a collective: all
  processes call it with the same step). Returns whether a save started; False when `step` is
  already saved. `wait=True` returns only once the checkpoint is on disk (preemption saves)."""
  if step in manager.all_steps():
    if wait:
      manager.wait_until_finished()
    return False
  tree = jax.tree.map(np.asarray, state_lib.to_checkpoint(host_state))
  started = manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(tree),
      loader=ocp.args.JsonSave(gather_loader_states(loader_state))), force=force)
  if wait:
    manager.wait_until_finished()
  return bool(started)


def last_good_step(manager: ocp.CheckpointManager) -> int | None:
  """The newest step whose checkpoint is completely written (waits for a save in flight)."""
  manager.wait_until_finished()
  return manager.latest_step()


def restore_latest(manager: ocp.CheckpointManager, target: state_lib.TrainState
                   ) -> tuple[state_lib.TrainState, Any] | None:
  """The newest checkpoint in `target`'s structure plus this process's loader state (None:
  start the loader afresh); None if there is no checkpoint."""
  step = manager.latest_step()
  if step is None:
    return None
  tree = jax.tree.map(np.asarray, state_lib.to_checkpoint(target))
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(tree), loader=ocp.args.JsonRestore()))
  loader_state = loader_state_for_process(restored["loader"], jax.process_index(),
                                          jax.process_count())
  return state_lib.from_checkpoint(target, restored["state"]), loader_state
