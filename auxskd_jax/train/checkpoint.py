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
import threading
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from auxskd_jax import distributed
from auxskd_jax.errors import UserError, disk_full_cause
from auxskd_jax.train import digest as digest_lib
from auxskd_jax.train import state as state_lib
from auxskd_jax.weights.orbax import checkpoint_dir, restore_variables  # noqa: F401

LOADER_FORMAT = 2
DIGEST_FORMAT = 1
DIGEST_KEY = "auxskd_digest"  # in orbax's custom step metadata: the step has digest files
DIGEST_PREFIX = "_DIGEST.process_"  # + "<process index>.json", inside the step folder
CORRUPT_DIR = "corrupt"  # steps that failed verification, under checkpoints/


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


class DiskFullError(UserError):
  """The disk filled while a checkpoint was saved; the message names the last verified step."""


class Manager(ocp.CheckpointManager):
  """orbax's manager plus the digest commit. A background thread hashes the saved state while
  orbax writes it; after orbax has committed the step (its folder has its final name), the
  next wait (before the next save, or at close) writes this process's digest file into it:
  a step is verified-complete once the files of all its processes are there."""

  def __init__(self, *args: Any, **kwargs: Any):
    super().__init__(*args, **kwargs)
    self._commits: list[tuple[int, threading.Thread, dict[str, Any]]] = []
    self.verified: set[int] = set()  # steps committed or verified on restore by this run
    self.last_started: int | None = None  # the newest step whose save started
    self.failed: DiskFullError | None = None  # the same error again later; close() is quiet
    self._commit_error: tuple[int, BaseException] | None = None  # a digest write's full disk

  def commit_later(self, step: int, tree: Any, loader: dict[str, Any]) -> None:
    """Digests `tree` and `loader` now, in the background; the digest is written once `step`
    is committed, by the next `wait_until_finished` (the next save's, or close's), in the
    calling thread. `tree` must not change meanwhile (it is the host copy handed to orbax).

    Only hashing runs in the thread: orbax's wait can run a cross-process collective, and a
    collective from a second thread interleaves with the main thread's (the loader-state
    allgather) and breaks both."""
    out: dict[str, Any] = {}
    thread = threading.Thread(target=self._digest, args=(step, tree, loader, out),
                              name=f"digest_{step}", daemon=True)
    thread.start()
    self._commits.append((step, thread, out))

  @staticmethod
  def _digest(step: int, tree: Any, loader: dict[str, Any], out: dict[str, Any]) -> None:
    try:
      out["record"] = {
          "format": DIGEST_FORMAT, "algorithm": digest_lib.ALGORITHM, "step": step,
          "process_index": jax.process_index(), "process_count": jax.process_count(),
          "arrays": digest_lib.tree_digests(tree), "loader": digest_lib.json_digest(loader)}
    except Exception as e:  # pylint: disable=broad-except
      out["error"] = e

  def _write_digest(self, step: int, out: dict[str, Any]) -> None:
    """After orbax's wait: this process's digest file into the committed step."""
    try:
      if "error" in out:
        raise out["error"]
      path = self.directory / str(step)
      # Process 0 renames the finished step into place; another process's view of it (and of
      # orbax's step list) can lag behind its own wait by a moment.
      deadline = time.monotonic() + 60
      while not path.is_dir() and time.monotonic() < deadline:
        time.sleep(0.05)
      if not path.is_dir():
        return  # orbax failed to commit the step (and said why): it stays unverified
      _write_json(path / _digest_name(jax.process_index()), out["record"])
      self.verified.add(step)
    except Exception as e:  # pylint: disable=broad-except
      if disk_full_cause(e):  # wait_until_finished says it, in one line
        self._commit_error = (step, e)
        logging.info("Could not write the digest of checkpoint step %d (%s).", step,
                     _one_line(e))
        return
      logging.warning("Could not write the digest of checkpoint step %d (%s); it will not count "
                      "as verified.", step, _one_line(e))

  def _join_commits(self, write: bool = True) -> None:
    commits, self._commits = self._commits, []
    for step, thread, out in commits:
      thread.join()
      if write:
        self._write_digest(step, out)

  def wait_until_finished(self) -> None:
    """orbax's wait, then this process's digest commits. A full disk in the save in flight
    (orbax's write or the digest's) raises DiskFullError (once; the run is ending)."""
    try:
      super().wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._join_commits(write=False)  # the step in flight did not commit
      self._raise_if_disk_full(e, self.last_started)
      raise
    if self._commits:
      self._join_commits()
      if jax.process_count() > 1:
        # Every process's digest is on disk before any process goes on: a restore right after
        # (or another process's check) must see the same complete step in every process, or
        # their verification collectives would not pair up.
        distributed.allgather_bytes(b"")
    if self._commit_error is not None:
      step, error = self._commit_error
      self._commit_error = None
      self._raise_if_disk_full(error, step)

  def close(self) -> None:
    """orbax's close; after a DiskFullError was raised, quietly (the error is on its way)."""
    try:
      super().close()
    except Exception:  # pylint: disable=broad-except
      if self.failed is None:
        raise

  def _raise_if_disk_full(self, error: BaseException, step: int | None) -> None:
    cause = disk_full_cause(error)
    if cause is None:
      return
    if self.failed is not None:
      raise self.failed from None
    good = verified_steps(self, exclude=step)
    last = (f"the last verified checkpoint is step {good[-1]}" if good else
            "no checkpoint is verified yet (a restart begins at step 0)")
    which = f"checkpoint step {step}" if step is not None else "a checkpoint"
    self.failed = DiskFullError(
        f"the disk filled while saving {which} in {self.directory} ({cause}); {last}. Free "
        "some space (or move the workdir) and start the same command again: it resumes from "
        "that step; the partial save is deleted when it starts.")
    raise self.failed from None


def make_manager(workdir: str, *, keep: int = 3, async_save: bool = True) -> Manager:
  """The run's checkpoint manager (create it in every process)."""
  return Manager(checkpoint_dir(workdir),
                 options=_manager_options(max(1, int(keep)), async_save),
                 item_names=("state", "loader"))


def _digest_name(process_index: int) -> str:
  return f"{DIGEST_PREFIX}{process_index}.json"


def _write_json(path: epath.Path, record: dict[str, Any]) -> None:
  """Written under a temporary name, then renamed: a digest file is whole or absent."""
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(json.dumps(record, sort_keys=True))
  tmp.replace(path)


def _one_line(error: BaseException, limit: int = 200) -> str:
  text = " ".join(str(error).split()) or "no message"
  text = text if len(text) <= limit else text[:limit - 3] + "..."
  return f"{type(error).__name__}: {text}"


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


def save(manager: Manager, step: int, host_state: state_lib.TrainState, loader_state: Any, *,
         force: bool = False, wait: bool = False) -> bool:
  """Starts an async save of a host (unreplicated) state in every process (a collective: all
  processes call it with the same step), its digest written once orbax has committed it.
  Returns whether a save started; False when `step` is already saved. `wait=True` returns only
  once the checkpoint and its digest are on disk (preemption saves)."""
  if step in manager.all_steps():
    if wait:
      manager.wait_until_finished()
    return False
  # orbax waits for the previous save before it starts this one; waiting here first names the
  # step a full disk failed (the previous one's error surfaces in this wait). It comes before
  # the loader-state allgather: the previous save's background commit synchronises the
  # processes too, and two collectives in flight at once (one per thread) break both.
  manager.wait_until_finished()
  tree = jax.tree.map(np.asarray, state_lib.to_checkpoint(host_state))
  loader = gather_loader_states(loader_state)
  try:
    started = manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), loader=ocp.args.JsonSave(loader)), force=force,
        custom_metadata={DIGEST_KEY: DIGEST_FORMAT})
  except Exception as e:  # pylint: disable=broad-except
    manager._raise_if_disk_full(e, step)  # pylint: disable=protected-access
    raise
  if started:
    manager.last_started = step
    manager.commit_later(step, tree, loader)
  if wait:
    manager.wait_until_finished()
  return bool(started)


def _has_complete_digest(path: epath.Path) -> bool:
  """Every process's digest file is there (process 0's names the process count)."""
  try:
    count = int(json.loads((path / _digest_name(0)).read_text())["process_count"])
  except (OSError, ValueError, KeyError, TypeError):
    return False
  return all((path / _digest_name(i)).exists() for i in range(1, count))


def verified_steps(manager: Manager, exclude: int | None = None) -> list[int]:
  """The steps on disk that are verified (committed with every digest, or verified on
  restore), oldest first, without waiting for a save in flight; `exclude` left out."""
  try:
    names = [p.name for p in manager.directory.iterdir()]
  except OSError:
    return sorted(manager.verified - {exclude})
  steps = {int(n) for n in names if n.isdigit()} - {exclude}
  return sorted(s for s in steps if s in manager.verified or
                _has_complete_digest(manager.directory / str(s)))


def last_good_step(manager: Manager) -> int | None:
  """The newest verified step: committed with its digest (by this run or an earlier one), or
  verified when this run resumed (waits for a save in flight)."""
  manager.wait_until_finished()
  good = [s for s in manager.all_steps()
          if s in manager.verified or _has_complete_digest(manager.directory / str(s))]
  return max(good, default=None)


def _expects_digest(manager: Manager, step: int) -> bool:
  """Whether the step was written with digests (orbax's step metadata says so, or a digest
  file is there); checkpoints from before verified checkpoints have neither."""
  path = manager.directory / str(step)
  if any(path.glob(DIGEST_PREFIX + "*")):
    return True
  try:
    return bool((manager.metadata(step).custom_metadata or {}).get(DIGEST_KEY))
  except Exception:  # pylint: disable=broad-except  (an unreadable step: restore says why)
    return False


def _read_digest(path: epath.Path) -> tuple[dict[str, Any] | None, str | None]:
  """(this process's digest record, None) or (None, why the step is not complete)."""
  if not _has_complete_digest(path):
    return None, ("incomplete: digest files missing (its save did not finish committing)")
  try:
    count = int(json.loads((path / _digest_name(0)).read_text())["process_count"])
    mine = jax.process_index() if jax.process_index() < count else 0
    return json.loads((path / _digest_name(mine)).read_text()), None
  except (OSError, ValueError, KeyError, TypeError) as e:
    return None, f"its digest file cannot be read ({_one_line(e)})"


def _restore_items(manager: Manager, step: int, tree: Any | None) -> dict[str, Any]:
  state = ocp.args.StandardRestore(tree) if tree is not None else ocp.args.StandardRestore()
  return manager.restore(step, args=ocp.args.Composite(state=state,
                                                       loader=ocp.args.JsonRestore()))


def _restore_verified(manager: Manager, step: int, tree: Any
                      ) -> tuple[dict[str, Any] | None, str | None]:
  """(restored items, None) when `step` reads back and matches its digest, else (None, the
  reason). Raises when the data reads fine but not into `tree` (the run's state has another
  structure: a config mismatch, not damage)."""
  record = None
  if _expects_digest(manager, step):
    record, reason = _read_digest(manager.directory / str(step))
    if reason:
      return None, reason
  try:
    restored = _restore_items(manager, step, tree)
  except Exception as e:  # pylint: disable=broad-except
    try:
      _restore_items(manager, step, None)
    except Exception:  # pylint: disable=broad-except
      return None, f"cannot be read ({_one_line(e)})"
    raise  # it reads without the run's structure: not damage, the error is the caller's
  if record is None:
    logging.warning("Checkpoint step %d in %s has no digest (written before auxskd-jax verified "
                    "checkpoints); resuming from it unverified.", step, manager.directory)
    return restored, None
  reason = digest_lib.first_mismatch(record.get("arrays", {}),
                                     digest_lib.tree_digests(restored["state"]))
  if reason is None and digest_lib.json_digest(restored["loader"]) != record.get("loader"):
    reason = "the loader state does not match its digest"
  return (None, reason) if reason else (restored, None)


def _set_aside(manager: Manager, step: int, reason: str) -> None:
  """Process 0 moves the step to `corrupt/<step>` (kept for inspection, never deleted); every
  process then re-reads the step list."""
  src = manager.directory / str(step)
  dst = manager.directory / CORRUPT_DIR / str(step)
  n = 1
  while dst.exists():  # the same step number set aside before
    dst = manager.directory / CORRUPT_DIR / f"{step}.{n}"
    n += 1
  logging.warning("Checkpoint step %d is unusable: %s; moved to %s.", step, reason, dst)
  if jax.process_index() == 0:
    dst.parent.mkdir(parents=True, exist_ok=True)
    src.rename(dst)
  distributed.allgather_bytes(b"")  # a barrier: the step is moved before anyone reloads
  manager.reload()


def restore_latest(manager: Manager, target: state_lib.TrainState
                   ) -> tuple[state_lib.TrainState, Any] | None:
  """The newest checkpoint that verifies, in `target`'s structure, plus this process's loader
  state (None: start the loader afresh); None if there is none. Every newer step that is
  incomplete, unreadable or does not match its digest is named in one line and moved to
  `checkpoints/corrupt/<step>`; all processes agree on each verdict (a collective)."""
  tree = jax.tree.map(np.asarray, state_lib.to_checkpoint(target))
  set_aside: list[int] = []
  for step in sorted(manager.all_steps(), reverse=True):
    restored, reason = _restore_verified(manager, step, tree)
    verdicts = [json.loads(b.decode()) for b in
                distributed.allgather_bytes(json.dumps(reason).encode())]
    bad = [(i, r) for i, r in enumerate(verdicts) if r]
    if not bad:
      manager.verified.add(step)
      if set_aside:
        logging.warning("Resuming from step %d, the newest checkpoint in %s that verifies.",
                        step, manager.directory)
      loader_state = loader_state_for_process(restored["loader"], jax.process_index(),
                                              jax.process_count())
      return state_lib.from_checkpoint(target, restored["state"]), loader_state
    i, reason = bad[0]
    _set_aside(manager, step, reason + (f" (process {i})" if len(verdicts) > 1 else ""))
    set_aside.append(step)
  if set_aside:
    logging.warning("No checkpoint in %s verifies (set aside: steps %s); starting from step 0.",
                    manager.directory, ", ".join(map(str, set_aside)))
  return None
