"""VideoPace: the loss against NumPy, a pmapped step on 4 devices that learns a fixed batch,
and the task end to end through main.py; the VCOP and RSPNet tasks end to end too (in-process,
one parametrised test)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from auxskd_jax.config import ConfigError
from auxskd_jax.methods import pace
from auxskd_jax.train import devices
from auxskd_jax.train import encoder as encoder_lib

import tiny

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config():
  config = tiny.tiny_config("pace_r21d_k100")
  return config


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_pace_loss_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 4)).astype(np.float32) * 3
  labels = np.array([0, 1, 2, 3, 3, 1], np.int32)
  logits[0, 0] = 20.0  # planted: example 0 is surely right, example 1 surely wrong
  logits[1, 3] = 20.0
  loss, acc = encoder_lib.classification_loss(jnp.asarray(logits), jnp.asarray(labels))
  expected = -np.mean(log_softmax(logits.astype(np.float64))[np.arange(6), labels])
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert float(acc) == pytest.approx(np.mean(logits.argmax(-1) == labels))


def fixed_clips(task, key, batch, config, *, train):
  """Key-independent clips (first frames, top-left crop) and the batch's planted paces."""
  del key, train
  assert task == "pace"
  c = config.clip
  w = batch["windows"][:, :1, :c.clip_len, :c.crop_size, :c.crop_size].astype(jnp.float32)
  return w / 255.0, {"pace": batch["label"]}


def test_pmapped_steps_reduce_loss_on_fixed_batch():
  config = tiny_config()
  method = pace.VideoPace(config)
  state, train_step = tiny.state_and_step(method, config, steps_per_epoch=10, total_steps=20,
                                          seed=0, make_clips=fixed_clips)
  rng = np.random.default_rng(0)
  batch = {"windows": rng.integers(0, 256, (4, 2, 1, 8, 16, 16, 3), dtype=np.uint8),
           "label": rng.integers(0, 4, (4, 2)).astype(np.int32)}
  # Replicated as the loop does (devices.replicate): the state fed back from the first step then
  # looks the same to pmap, which compiles the step once, not twice.
  rep = devices.replicate(state)
  step = jax.pmap(train_step, axis_name="batch", devices=jax.devices()[:4])
  key = devices.replicate(jax.random.PRNGKey(1))
  losses = []
  for _ in range(4):
    rep, metrics = step(rep, batch, key)
    loss = np.asarray(metrics["loss"])
    losses.append(float(loss[0]))
    np.testing.assert_allclose(loss, losses[-1], rtol=1e-6)
  assert np.isfinite(losses).all()
  assert 0.5 < losses[0] < 3.0  # near log(4) at init
  assert losses[-1] < losses[0], losses
  assert {"accuracy", "learning_rate"} <= set(metrics)
  assert int(rep.step[0]) == 4
  for leaf in jax.tree.leaves(jax.device_get(rep.params)):  # replicas stay identical
    np.testing.assert_array_equal(leaf[3], leaf[0])


def test_validate_names_bad_keys():
  config = tiny_config()
  config.clip.max_speed = 1
  with pytest.raises(ConfigError, match="clip.max_speed"):
    pace.VideoPace.validate(config)
  config = tiny_config()
  config.train.batch_size = 6
  with pytest.raises(ConfigError, match="train.batch_size"):
    pace.VideoPace.validate(config)


# The end-to-end runs' settings: what they test is the task (data, recipe, loop, checkpoint,
# metrics), so the encoder is the quickest to compile (R3D-10, width 8) on 8-frame 16x16
# clips, for 2 steps.
E2E = {"train.init_from": "", "model.name": "r3d_10", "model.width": 8, "clip.clip_len": 8,
       "clip.crop_size": 16, "train.batch_size": 4, "train.num_steps": 2, "train.log_every": 1,
       "train.checkpoint_every": 2}
# Per method: its extra settings, and whether it runs through main.py (one does, for the
# command line: flags, runtime settings, exit status) or in-process through the task API
# (what main.py calls: validate, the resume rule, config.json, run; no interpreter start).
METHODS = {
    "pace": ("pace_r21d_k100", {}, True),
    "vcop": ("vcop_r21d_ucf101", {"clip.vcop_gap": 2, "vcop.hidden": 16}, False),
    "rspnet": ("rspnet_r21d_k100", {"rspnet.queue_size": 16, "rspnet.embed_dim": 16}, False),
}


def run_task(config_name, workdir, data, overrides, *, via_main):
  """Runs the task of `configs/<config_name>.py` on the tiny prepared dataset with `E2E` and
  `overrides`, through main.py or in-process; returns the metrics rows."""
  data_dir, name = data
  settings = {"data.data_dir": data_dir, "data.name": name, **E2E, **overrides}
  if via_main:
    args = [sys.executable, "main.py", f"--config=configs/{config_name}.py",
            f"--workdir={workdir}",
            # the session's compilation cache, not the user's ~/.cache (the config's default)
            f"--config.compilation_cache_dir={os.environ['JAX_COMPILATION_CACHE_DIR']}",
            *(f"--config.{k}={v}" for k, v in settings.items())]
    out = subprocess.run(args, cwd=_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
  else:
    from auxskd_jax import tasks

    config = tiny.load_config(config_name)
    config.update_from_flattened_dict(settings)
    task = tasks.of(config)
    task.validate(config)
    tasks.check_workdir(task, config, workdir)
    tasks.claim_workdir(task, config, workdir)
    assert task.run(config, workdir)["step"] == 2
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  assert os.path.isfile(os.path.join(workdir, "config.json"))
  assert os.path.isdir(os.path.join(workdir, "checkpoints"))
  return rows


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_task_runs_end_to_end(method, tiny_prepared, tmp_path):
  """Each method's task trains 2 steps on prepared data, logs and checkpoints."""
  config_name, overrides, via_main = METHODS[method]
  rows = run_task(config_name, str(tmp_path / "run"), tiny_prepared, overrides,
                  via_main=via_main)
  assert [r["step"] for r in rows] == [1, 2]
  accuracy = "accuracy_rsp" if method == "rspnet" else "accuracy"
  assert all(np.isfinite(r["loss"]) and 0.0 <= r[accuracy] <= 1.0 for r in rows)
