"""Verified checkpoints (issue 23): a damaged newest step (truncated array file, emptied folder,
truncated loader JSON, bytes flipped at unchanged size, missing digest) is named in one line,
moved to checkpoints/corrupt/<step>, and the run resumes from the newest step that verifies;
across 2 processes too; a run resumed past a bit flip continues exactly."""

import errno
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from auxskd_jax.config import base_config
from auxskd_jax.train import checkpoint as ckpt_lib
from auxskd_jax.train import digest as digest_lib
from auxskd_jax.train import loop
from auxskd_jax.train.state import TrainState
from tests import multiproc


def _state(seed: int) -> TrainState:
  """Random values: they do not compress, so a data file holds them as raw bytes."""
  rng = np.random.default_rng(seed)
  return TrainState.create(params={"w": rng.standard_normal(4096).astype(np.float32)},
                           batch_stats={"m": rng.standard_normal(3).astype(np.float32)},
                           tx=optax.sgd(0.1, momentum=0.9)).replace(step=np.int32(seed))


def _largest_state_file(step_dir: str) -> str:
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs]
  return max(files, key=os.path.getsize)


def _flip(path: str, n: int = 400) -> None:
  """Inverts `n` bytes in the middle of `path`; its size stays the same."""
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(size // 2 - n // 2)
    data = f.read(n)
    f.seek(size // 2 - n // 2)
    f.write(bytes(b ^ 0xFF for b in data))
  assert os.path.getsize(path) == size


def _damage(kind: str, step_dir: str) -> None:
  if kind == "truncated":
    path = _largest_state_file(step_dir)
    os.truncate(path, os.path.getsize(path) // 2)
  elif kind == "empty":
    shutil.rmtree(step_dir)
    os.makedirs(step_dir)
  elif kind == "loader_json":
    path = os.path.join(step_dir, "loader", "metadata")
    json.loads(open(path).read())  # the loader item's JSON file
    os.truncate(path, os.path.getsize(path) // 2)
  elif kind == "flipped":
    _flip(_largest_state_file(step_dir))
  elif kind == "no_digest":
    os.remove(os.path.join(step_dir, "_DIGEST.process_0.json"))


def _save(workdir: str, steps=(8, 10)) -> None:
  manager = ckpt_lib.make_manager(workdir)
  for step in steps:
    assert ckpt_lib.save(manager, step, _state(step), {"next_index": step})
  assert ckpt_lib.last_good_step(manager) == steps[-1]
  manager.close()


def _steps(workdir: str) -> list[str]:
  return sorted(os.listdir(ckpt_lib.checkpoint_dir(workdir)))


@pytest.mark.parametrize("kind,reason", [
    ("truncated", "cannot be read (ValueError"),
    ("empty", "cannot be read"),
    ("loader_json", "cannot be read"),
    ("flipped", "array ['params']['w'] does not match its digest"),
    ("no_digest", "incomplete: digest files missing"),
])
def test_damaged_newest_step_is_set_aside_and_the_good_one_restored(kind, reason, tmp_path,
                                                                     caplog):
  workdir = str(tmp_path)
  _save(workdir)
  step_dir = os.path.join(ckpt_lib.checkpoint_dir(workdir), "10")
  _damage(kind, step_dir)
  manager = ckpt_lib.make_manager(workdir)
  with caplog.at_level("WARNING"):
    state, loader_state = ckpt_lib.restore_latest(manager, _state(0))
  lines = [r.getMessage() for r in caplog.records if "step 10" in r.getMessage()]
  assert len(lines) == 1 and "\n" not in lines[0], lines
  assert lines[0].startswith(f"Checkpoint step 10 is unusable: {reason}"), lines[0]
  assert lines[0].endswith(f"moved to {ckpt_lib.checkpoint_dir(workdir)}/corrupt/10.")
  assert any(r.getMessage().startswith("Resuming from step 8, the newest checkpoint")
             for r in caplog.records)
  # The good step's state exactly, its loader position; the damaged one kept, set aside.
  assert int(state.step) == 8 and loader_state == {"next_index": 8}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(_state(8))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert _steps(workdir) == ["8", "corrupt"]
  assert os.listdir(os.path.join(ckpt_lib.checkpoint_dir(workdir), "corrupt")) == ["10"]
  assert ckpt_lib.last_good_step(manager) == 8
  # The run saves step 10 again; a second damage of it is set aside next to the first.
  assert ckpt_lib.save(manager, 10, _state(10), {"next_index": 10}, wait=True)
  manager.close()
  if kind == "flipped":
    _damage(kind, step_dir)
    manager = ckpt_lib.make_manager(workdir)
    assert int(ckpt_lib.restore_latest(manager, _state(0))[0].step) == 8
    manager.close()
    assert sorted(os.listdir(os.path.join(ckpt_lib.checkpoint_dir(workdir), "corrupt"))) == [
        "10", "10.1"]


def test_no_step_verifies_starts_afresh(tmp_path, caplog):
  workdir = str(tmp_path)
  _save(workdir, steps=(8,))
  _damage("flipped", os.path.join(ckpt_lib.checkpoint_dir(workdir), "8"))
  manager = ckpt_lib.make_manager(workdir)
  with caplog.at_level("WARNING"):
    assert ckpt_lib.restore_latest(manager, _state(0)) is None
  assert ckpt_lib.last_good_step(manager) is None
  manager.close()
  assert "No checkpoint in" in caplog.text and "starting from step 0" in caplog.text
  assert _steps(workdir) == ["corrupt"]


def test_checkpoint_without_digest_from_older_versions_is_used_with_a_warning(tmp_path, caplog):
  """Steps saved before digests existed (no digest, no digest mark in orbax's metadata)."""
  workdir = str(tmp_path)
  manager = ckpt_lib.make_manager(workdir)
  tree = jax.tree.map(np.asarray, ckpt_lib.state_lib.to_checkpoint(_state(5)))
  loader = ckpt_lib.gather_loader_states({"next_index": 5})
  ocp.CheckpointManager.save(manager, 5, args=ocp.args.Composite(
      state=ocp.args.StandardSave(tree), loader=ocp.args.JsonSave(loader)))
  manager.close()
  manager = ckpt_lib.make_manager(workdir)
  with caplog.at_level("WARNING"):
    state, loader_state = ckpt_lib.restore_latest(manager, _state(0))
  assert int(state.step) == 5 and loader_state == {"next_index": 5}
  assert "step 5" in caplog.text and "has no digest" in caplog.text
  assert ckpt_lib.last_good_step(manager) == 5  # it is what this run resumed from
  manager.close()
  assert _steps(workdir) == ["5"]


def test_another_state_structure_is_an_error_not_damage(tmp_path):
  """A checkpoint that reads fine but not into the run's state (another config): the error
  propagates and nothing is set aside."""
  workdir = str(tmp_path)
  _save(workdir)
  other = _state(0).replace(params={"w": np.zeros(4096, np.float32), "v": np.zeros(2)})
  manager = ckpt_lib.make_manager(workdir)
  with pytest.raises(Exception):
    ckpt_lib.restore_latest(manager, other)
  manager.close()
  assert _steps(workdir) == ["10", "8"]


def test_digests_cover_dtype_shape_and_bytes():
  x = np.arange(6, dtype=np.float32)
  assert digest_lib.array_digest(x) == digest_lib.array_digest(x.copy())
  assert digest_lib.array_digest(x) != digest_lib.array_digest(x.reshape(2, 3))
  assert digest_lib.array_digest(x) != digest_lib.array_digest(x.view(np.int32))
  y = x.copy()
  y[3] = np.nextafter(y[3], np.inf)
  assert digest_lib.array_digest(x) != digest_lib.array_digest(y)
  assert digest_lib.array_digest(jnp.ones((2,), jnp.bfloat16))  # ml_dtypes hash too
  tree = {"a": x, "b": {"c": y}}
  d = digest_lib.tree_digests(tree)
  assert d == digest_lib.tree_digests(tree, workers=1) and set(d) == {"['a']", "['b']['c']"}
  assert digest_lib.first_mismatch(d, d) is None
  assert "does not match" in digest_lib.first_mismatch(d, {**d, "['a']": "0"})
  assert "missing" in digest_lib.first_mismatch(d, {"['a']": d["['a']"]})
  assert digest_lib.json_digest({"a": 1, "b": 2}) == digest_lib.json_digest({"b": 2, "a": 1})


class _Quadratic:
  """A one-array 'method' (no network to compile) whose state changes every step, with
  random, incompressible values so bit flips land in raw bytes."""
  recipe = "clip"

  def init_state(self, config, rng, tx, steps_per_epoch):
    del config, tx, steps_per_epoch
    return TrainState.create(params={"encoder": {"w": jax.random.normal(rng, (4096,))}},
                             batch_stats={"encoder": {}}, tx=optax.sgd(0.1, momentum=0.9))

  def make_step(self, schedule):
    del schedule
    return self._step

  def _step(self, state, batch, key):
    del key
    x = jnp.mean(batch["windows"].astype(jnp.float32)) / 255.0

    def loss_fn(params):
      return jnp.mean((params["encoder"]["w"] * x) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    new_state = state.apply_gradients(jax.lax.pmean(grads, "batch"))
    return new_state, {"loss": jax.lax.pmean(loss, "batch")}


def _config(data, steps: int):
  config = base_config()
  config.task = "finetune"
  config.data.data_dir, config.data.name = data
  config.clip.clip_len, config.clip.crop_size = 4, 8
  config.train.batch_size = 4
  config.train.num_steps = steps
  config.train.log_every = 2
  config.train.checkpoint_every = 4
  return config


def test_fit_resumes_past_a_bit_flip_to_the_uninterrupted_state(tiny_prepared, tmp_path,
                                                                caplog):
  straight, damaged = str(tmp_path / "straight"), str(tmp_path / "damaged")
  final = loop.fit(_Quadratic(), _config(tiny_prepared, 12), straight)
  loop.fit(_Quadratic(), _config(tiny_prepared, 8), damaged)
  _flip(_largest_state_file(os.path.join(ckpt_lib.checkpoint_dir(damaged), "8")))
  with caplog.at_level("WARNING"):
    resumed = loop.fit(_Quadratic(), _config(tiny_prepared, 12), damaged)
  # Where the flipped bytes land depends on how OCDBT laid the file out (it differs between
  # machines): in array data they fail the digest, in a b-tree node they fail the read.
  # Either way the step is refused, set aside, and the run resumes exactly.
  assert re.search(r"Checkpoint step 8 is unusable: (array \['(params|opt_state)'\]"
                   r".* does not match its digest|cannot be read)", caplog.text), caplog.text
  assert "Resuming from step 4" in caplog.text
  assert os.path.isdir(os.path.join(ckpt_lib.checkpoint_dir(damaged), "corrupt", "8"))
  for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


_JOB = r"""
import json, os, sys
import numpy as np, optax
from tests import multiproc
multiproc.init_from_env(60)
import jax
from auxskd_jax import distributed
from auxskd_jax.train import checkpoint as ckpt_lib
from auxskd_jax.train.state import TrainState
from tests.test_checkpoint_verify import _state, _flip, _largest_state_file

pid = jax.process_index()
manager = ckpt_lib.make_manager(sys.argv[1])
for step in (1, 2, 3):
  ckpt_lib.save(manager, step, _state(step), {"next_index": step, "p": pid}, wait=True)
manager.close()
root = ckpt_lib.checkpoint_dir(sys.argv[1])
names = sorted(os.listdir(os.path.join(root, "3")))
distributed.allgather_bytes(b"")
if pid == 0:  # step 3: bytes flipped; step 2: process 1's digest lost
  _flip(_largest_state_file(os.path.join(root, "3")))
  os.remove(os.path.join(root, "2", "_DIGEST.process_1.json"))
distributed.allgather_bytes(b"")
manager = ckpt_lib.make_manager(sys.argv[1])
state, loader_state = ckpt_lib.restore_latest(manager, _state(0))
print("RESULT " + json.dumps({"step": int(state.step), "loader": loader_state, "names": names,
      "equal": bool(np.array_equal(state.params["w"], _state(1).params["w"])),
      "good": ckpt_lib.last_good_step(manager)}), flush=True)
manager.close()
"""


def test_two_processes_agree_on_the_step_to_resume_from(tmp_path):
  workdir = str(tmp_path)
  results = multiproc.run(_JOB, 2, devices=1, args=[workdir], timeout=240)
  outs = []
  for r in results:
    lines = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    assert r.returncode == 0 and lines, str(r)
    outs.append(json.loads(lines[-1][len("RESULT "):]))
    assert "Checkpoint step 3 is unusable: array ['params']['w'] does not match" in r.stderr
    assert "Checkpoint step 2 is unusable: incomplete: digest files missing" in r.stderr
  assert [o["loader"] for o in outs] == [{"next_index": 1, "p": 0}, {"next_index": 1, "p": 1}]
  assert all(o["step"] == 1 and o["equal"] and o["good"] == 1 for o in outs)
  assert {"_DIGEST.process_0.json", "_DIGEST.process_1.json"} <= set(outs[0]["names"])
  assert _steps(workdir) == ["1", "corrupt"]
  assert sorted(os.listdir(os.path.join(ckpt_lib.checkpoint_dir(workdir), "corrupt"))) == [
      "2", "3"]


_TENSORSTORE_FULL = ('RESOURCE_EXHAUSTED: Error writing local file "{d}/10.orbax-checkpoint-tmp-3/'
                     'state/d/1f2e": No space left on device [source locations=\'...\']\n'
                     'tensorstore_spec=\'{{"driver": "zarr3"}}\'')


@pytest.mark.parametrize("where", ["in_flight", "at_start", "digest"])
def test_a_disk_that_fills_during_a_save_is_one_line_naming_the_last_verified_step(
    tmp_path, monkeypatch, caplog, where):
  """orbax surfaces a full disk in its background thread's error (tensorstore's
  RESOURCE_EXHAUSTED text) at the next wait, or as an OSError from the save call itself."""
  workdir = str(tmp_path / "run")
  manager = ckpt_lib.make_manager(workdir)
  assert ckpt_lib.save(manager, 8, _state(8), {"next_index": 8}, wait=True)
  directory = ckpt_lib.checkpoint_dir(workdir)
  full = ValueError(_TENSORSTORE_FULL.format(d=directory))
  if where == "in_flight":  # the async write of step 10 fails: every thread's wait raises it
    real_wait = ocp.CheckpointManager.wait_until_finished

    def wait(self):
      if self.last_started != 10:
        return real_wait(self)
      raise full
    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", wait)
    assert ckpt_lib.save(manager, 10, _state(10), {"next_index": 10})
    failing = lambda: manager.wait_until_finished()  # noqa: E731
  elif where == "digest":  # orbax wrote step 10; its digest file does not fit
    def write_json(path, record):
      raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(ckpt_lib, "_write_json", write_json)
    failing = lambda: ckpt_lib.save(manager, 10, _state(10), {"next_index": 10},  # noqa: E731
                                    wait=True)
  else:  # the save call itself: orbax wraps the OSError it met
    def save(self, step, *args, **kwargs):
      try:
        raise OSError(errno.ENOSPC, "No space left on device", f"{directory}/10")
      except OSError as e:
        raise RuntimeError("Checkpoint save failed") from e
    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    failing = lambda: ckpt_lib.save(manager, 10, _state(10), {"next_index": 10})  # noqa: E731
  with pytest.raises(ckpt_lib.DiskFullError) as e:
    failing()
  message = str(e.value)
  assert "\n" not in message and len(message) < 800, message
  assert "while saving checkpoint step 10" in message
  assert ("RESOURCE_EXHAUSTED" if where == "in_flight" else "No space left") in message
  assert "the last verified checkpoint is step 8" in message
  assert isinstance(e.value, ckpt_lib.UserError)  # main.py: this line alone, status 2
  manager.close()  # quiet: the error is already on its way
  assert not [r for r in caplog.records if r.levelname == "WARNING" and
              "Could not write the digest" in r.getMessage()]  # the one line says it
  monkeypatch.undo()
  assert ckpt_lib.verified_steps(ckpt_lib.make_manager(workdir)) == [8]
