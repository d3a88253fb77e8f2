"""Checkpoints: every process's loader state saved and given back to that process, across
process counts; temporary directories of a killed save cleaned up; the last N kept."""

import json
import os

import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from auxskd_jax.train import checkpoint as ckpt_lib
from auxskd_jax.train.state import TrainState
from tests import multiproc


def _state(value: float = 1.0) -> TrainState:
  return TrainState.create(params={"w": np.full((3,), value, np.float32)},
                           batch_stats={"m": np.zeros((2,), np.float32)}, tx=optax.sgd(0.1))


def test_loader_state_layouts_and_process_counts(caplog):
  pick = ckpt_lib.loader_state_for_process
  old = {"kind": "json", "value": {"next_index": 4}}  # a checkpoint from before format 2
  assert pick(old, 0, 1) == {"next_index": 4}
  assert pick(old, 1, 2) == {"next_index": 4}  # one state: every process continues from it
  assert pick({"kind": "none"}, 0, 1) is None and pick(None, 0, 1) is None
  two = {"format": 2, "process_count": 2, "states": [
      {"kind": "json", "value": {"next_index": 4, "p": 0}},
      {"kind": "bytes", "value": "AXAx"}]}
  assert pick(two, 0, 2) == {"next_index": 4, "p": 0}
  assert pick(two, 1, 2) == b"\x01p1"
  with caplog.at_level("WARNING"):
    assert pick(two, 0, 1) is None  # positions differ and the count changed: start afresh
  same = {"format": 2, "process_count": 2,
          "states": [{"kind": "json", "value": {"next_index": 9}}] * 2}
  assert pick(same, 0, 1) == {"next_index": 9}
  assert pick(same, 3, 4) == {"next_index": 9}


def test_save_restore_keep_and_tmp_cleanup(tmp_path):
  workdir = str(tmp_path)
  # What a save killed mid-write leaves behind: orbax's temporary step directory.
  stale = os.path.join(ckpt_lib.checkpoint_dir(workdir), "7.orbax-checkpoint-tmp-1234")
  os.makedirs(os.path.join(stale, "state"))
  manager = ckpt_lib.make_manager(workdir, keep=2)
  for step in (1, 2, 3):
    assert ckpt_lib.save(manager, step, _state(step), {"next_index": step})
  assert not ckpt_lib.save(manager, 3, _state(3), None)  # already saved: no error, no save
  assert ckpt_lib.last_good_step(manager) == 3
  manager.close()
  assert not os.path.exists(stale)
  assert sorted(int(s) for s in os.listdir(ckpt_lib.checkpoint_dir(workdir))
                if s.isdigit()) == [2, 3]
  manager = ckpt_lib.make_manager(workdir, keep=2)
  state, loader_state = ckpt_lib.restore_latest(manager, _state(0))
  manager.close()
  np.testing.assert_array_equal(state.params["w"], np.full((3,), 3.0))
  assert loader_state == {"next_index": 3}
  assert float(ckpt_lib.restore_variables(workdir)["params"]["w"][0]) == 3.0


_JOB = r"""
import json, sys
import numpy as np, optax
from tests import multiproc
multiproc.init_from_env(60)
import jax
from auxskd_jax.train import checkpoint as ckpt_lib
from auxskd_jax.train.state import TrainState

pid = jax.process_index()
state = TrainState.create(params={"w": np.arange(3, dtype=np.float32)},
                          batch_stats={"m": np.ones((2,), np.float32)}, tx=optax.sgd(0.1))
manager = ckpt_lib.make_manager(sys.argv[1], keep=3)
ckpt_lib.save(manager, 1, state, {"next_index": 8})  # the same in both processes
ckpt_lib.save(manager, 2, state, {"next_index": 9, "p": pid} if pid == 0 else b"\x01p1",
              wait=True)
restored, loader_state = ckpt_lib.restore_latest(manager, state)
manager.close()
print("RESULT " + json.dumps({"step": ckpt_lib.last_good_step(manager),
      "w": np.asarray(restored.params["w"]).tolist(), "loader": repr(loader_state)}), flush=True)
"""


def test_two_process_checkpoint_restores_per_process_and_in_one_process(tmp_path, caplog):
  workdir = str(tmp_path)
  results = multiproc.run(_JOB, 2, devices=2, args=[workdir], timeout=240)
  outs = []
  for r in results:
    lines = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    assert r.returncode == 0 and lines, str(r)
    outs.append(json.loads(lines[-1][len("RESULT "):]))
  assert [o["loader"] for o in outs] == [repr({"next_index": 9, "p": 0}), repr(b"\x01p1")]
  assert all(o["step"] == 2 and o["w"] == [0.0, 1.0, 2.0] for o in outs)

  # One process restores the 2-process checkpoint: the train state exactly; the loader
  # afresh at step 2 (the two positions differ), continuing at step 1 (they are the same).
  manager = ckpt_lib.make_manager(workdir)
  with caplog.at_level("WARNING"):
    state, loader_state = ckpt_lib.restore_latest(manager, _state(0))
  assert loader_state is None and "data loader starts afresh" in caplog.text
  np.testing.assert_array_equal(state.params["w"], [0.0, 1.0, 2.0])
  item = manager.restore(1, args=ocp.args.Composite(loader=ocp.args.JsonRestore()))["loader"]
  manager.close()
  assert item["process_count"] == 2
  assert ckpt_lib.loader_state_for_process(item, 0, 1) == {"next_index": 8}
  assert ckpt_lib.restore_variables(workdir)["params"]["w"].tolist() == [0.0, 1.0, 2.0]
