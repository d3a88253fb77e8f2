"""RSPNet: both losses against NumPy, the three clips' frames and speeds, a pmapped step on 4
devices (EMA, queue, loss falling on a fixed batch); the task end to end is
tests/test_pace.py::test_task_runs_end_to_end[rspnet]."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from auxskd_jax import ops
from auxskd_jax.config import ConfigError
from auxskd_jax.methods import rspnet
from test_pace import log_softmax

import tiny



def tiny_config():
  config = tiny.tiny_config("rspnet_r21d_k100")
  config.rspnet.embed_dim = 16
  config.rspnet.queue_size = 12
  config.rspnet.momentum = 0.9
  config.rspnet.teacher_bn = "shuffle"
  return config


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_losses_match_numpy():
  rng = np.random.default_rng(0)
  q, k, o = (unit(rng.normal(size=(5, 8))) for _ in range(3))
  queue = unit(rng.normal(size=(7, 8)))
  t, margin = 0.07, 2.0
  pos, neg = np.sum(q * k, -1) / t, np.sum(q * o, -1) / t
  want_rsp = np.mean(np.maximum(0.0, margin - (pos - neg)))
  got, acc = rspnet.rsp_loss(*(jnp.asarray(a, jnp.float32) for a in (q, k, o)), t, margin)
  np.testing.assert_allclose(float(got), want_rsp, rtol=1e-4)
  assert float(acc) == pytest.approx(np.mean(pos > neg))
  # A-VID: both keys are positives against the same queue negatives
  want = 0.0
  for positive in (k, o):
    logits = np.concatenate([np.sum(q * positive, -1, keepdims=True), q @ queue.T], -1) / t
    want += -np.mean(log_softmax(logits)[:, 0])
  got, acc = rspnet.avid_loss(*(jnp.asarray(a, jnp.float32) for a in (q, k, o, queue)), t)
  np.testing.assert_allclose(float(got), want, rtol=1e-4)
  same = np.concatenate([np.sum(q * k, -1, keepdims=True), q @ queue.T], -1)
  assert float(acc) == pytest.approx(np.mean(same.argmax(-1) == 0))
  # a planted easy case: same-speed pair identical, other pair orthogonal -> no ranking loss
  e = np.eye(8)[:2]
  zero, acc = rspnet.rsp_loss(jnp.asarray(e), jnp.asarray(e), jnp.asarray(e[::-1]), t, margin)
  assert float(zero) == 0.0 and float(acc) == 1.0


def test_clips_frames_and_speeds():
  config = tiny_config()
  config.clip.max_speed = 3
  config.augment.jitter_prob = 0.0
  config.augment.input_convention = "rgb"
  w = ops.window_len("rspnet", config)
  assert w == (8 - 1) * 3 + 1 and ops.num_views("rspnet", config) == 2
  # frame j of window v is a flat grey of value 100 * v + j
  values = np.arange(w)[None, :] + 100 * np.arange(2)[:, None]
  windows = np.broadcast_to(values[None, :, :, None, None, None], (16, 2, w, 20, 24, 3))
  windows = windows.astype(np.uint8)
  clips, labels = jax.jit(lambda k, b: ops.make_clips("rspnet", k, b, config, train=False))(
      jax.random.PRNGKey(3), {"windows": windows})
  assert clips.shape == (16, 3, 8, 16, 16, 3)
  speed = np.asarray(labels["speed"]) + 1
  assert (speed[:, 0] == speed[:, 1]).all() and (speed[:, 0] != speed[:, 2]).all()
  assert set(speed[:, 2]) <= {1, 2, 3} and len(set(speed[:, 0])) > 1
  pixels = np.asarray(ops.from_convention(clips, "rgb"))
  for b in range(4):
    for n, (view, s) in enumerate([(0, speed[b, 0]), (1, speed[b, 1]), (1, speed[b, 2])]):
      got = [int(np.round(f.mean() * 255)) for f in pixels[b, n]]
      assert got == [100 * view + s * i for i in range(8)], (b, n)


def fixed_clips(task, key, batch, config, *, train):
  """Key-independent clips: query window 0, keys window 1 at stride 1 and stride 2."""
  del key, train
  assert task == "rspnet"
  c = config.clip
  w = batch["windows"][..., :c.crop_size, :c.crop_size, :].astype(jnp.float32) / 255.0
  clips = jnp.stack([w[:, 0, :c.clip_len], w[:, 1, :c.clip_len],
                     w[:, 1, :2 * c.clip_len:2]], 1)
  return clips, {}


def test_pmapped_steps_ema_queue_and_loss():
  config = tiny_config()
  # The 1/T-scaled losses give a width-8 network large gradients: a small rate keeps 3 steps
  # on the descending side.
  config.optim.learning_rate = 1e-5
  # Shuffled BN over 2 clips a device changes the keys from step to step far more than 3
  # small steps change the encoder; sync BN makes the keys depend on the weights alone.
  config.rspnet.teacher_bn = "sync"
  method = rspnet.RSPNet(config)
  state, train_step = tiny.state_and_step(method, config, steps_per_epoch=10, total_steps=20, seed=0, 
                                          make_clips=fixed_clips)
  assert set(state.params["encoder"]) >= set(rspnet.HEADS)
  rng = np.random.default_rng(0)
  base = rng.integers(0, 256, (8, 1, 16, 16, 16, 3))
  # the key window repeats the query window plus noise: a fixed batch the loss can fit
  noisy = np.clip(base + rng.integers(-20, 21, base.shape), 0, 255)
  batch = {"windows": np.concatenate([base, noisy], 1).astype(np.uint8).reshape(
      4, 2, 2, 16, 16, 16, 3)}
  rep = tiny.host_replicas(state, 4)
  step = jax.pmap(train_step, axis_name="batch", devices=jax.devices()[:4])
  key = tiny.host_replicas(jax.random.PRNGKey(1), 4)
  initial = rep.extras
  history, losses = [rep], []
  for _ in range(3):
    # This batch's keys come back from the queue as negatives at the next step; with the queue
    # held at its initial value, only the weights change, so the loss must fall.
    rep = rep.replace(extras={**rep.extras, "queue": initial["queue"],
                              "queue_ptr": initial["queue_ptr"]})
    rep, metrics = step(rep, batch, key)
    history.append(jax.device_get(rep))  # on the host: indexing device arrays compiles
    metrics = jax.device_get(metrics)
    losses.append(float(metrics["loss"][0]))
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
  np.testing.assert_allclose(float(metrics["loss"][0]),
                             float(metrics["loss_avid"][0] + metrics["loss_rsp"][0]), rtol=1e-5)
  before, after = history[0], history[1]
  m = config.rspnet.momentum
  # The reference's order: the EMA towards the encoder before this step's update, then the key
  # encoder's forward; step 1's EMA is a no-op (the key encoder starts as a copy).
  for t0, t1, t2, s1 in zip(*(jax.tree.leaves(h.extras["teacher"]["params"])
                              for h in history[:3]),
                            jax.tree.leaves(after.params["encoder"])):
    np.testing.assert_allclose(t1[0], t0[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(t2[0] - t1[0], (1 - m) * (s1[0] - t1[0]), rtol=1e-4, atol=1e-6)
  # a step writes the global batch's 8 unit keys over the oldest rows of the queue of 12
  assert int(after.extras["queue_ptr"][0]) == 8
  queue, start = np.asarray(after.extras["queue"][0]), np.asarray(before.extras["queue"][0])
  # RSPNet's initial queue has unit keys (its randn(dim, K) normalised along dim 0, a key a
  # column), unlike auxSKD's
  np.testing.assert_allclose(np.linalg.norm(start, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(queue, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(queue[8:], start[8:])
  assert not np.isclose(queue[:8], start[:8]).all(axis=1).any()
  for leaf in jax.tree.leaves(history[-1].extras) + jax.tree.leaves(history[-1].params):
    np.testing.assert_array_equal(leaf[3], leaf[0])


def test_validate_names_bad_keys():
  config = tiny_config()
  config.clip.max_speed = 1
  with pytest.raises(ConfigError, match="clip.max_speed"):
    rspnet.RSPNet.validate(config)
  config = tiny_config()
  config.rspnet.teacher_bn = "bogus"
  with pytest.raises(ConfigError, match="rspnet.teacher_bn"):
    rspnet.RSPNet.validate(config)
  del config["rspnet"]
  with pytest.raises(ConfigError, match="rspnet"):
    rspnet.RSPNet.validate(config)

