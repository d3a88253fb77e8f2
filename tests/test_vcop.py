"""VCOP: the head's shape and order of operations, the 6 orders, the loss against NumPy, a
pmapped step on 4 devices that learns a fixed batch; the task end to end is
tests/test_pace.py::test_task_runs_end_to_end[vcop]."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from auxskd_jax import ops
from auxskd_jax.config import ConfigError
from auxskd_jax.methods import vcop
from auxskd_jax.train import encoder as encoder_lib
from test_pace import log_softmax

import tiny



def tiny_config():
  config = tiny.tiny_config("vcop_r21d_ucf101")
  config.clip.vcop_gap = 4
  config.vcop.hidden = 16
  return config


def test_six_orders_and_pairs():
  table = ops.vcop_permutations(3)
  assert table.shape == (6, 3)
  assert len({tuple(r) for r in table}) == 6
  assert [tuple(r) for r in table] == [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1),
                                       (2, 1, 0)]
  assert vcop.pairs(3) == [(0, 1), (0, 2), (1, 2)]


def test_head_shape_and_numpy_forward():
  head = vcop.VCOPHead(num_clips=3, hidden=5, dropout=0.5)
  feats = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 7))
  variables = head.init(jax.random.PRNGKey(1), feats, train=False)
  p = jax.tree.map(np.asarray, variables["params"])
  assert p["fc7"]["kernel"].shape == (14, 5)  # 2 * D -> hidden, shared by the pairs
  assert p["fc8"]["kernel"].shape == (15, 6)  # 3 pairs * hidden -> 3! orders
  out = head.apply(variables, feats, train=False)
  assert out.shape == (4, 6)
  f = np.asarray(feats)
  pair = [np.maximum(np.concatenate([f[:, i], f[:, j]], -1) @ p["fc7"]["kernel"]
                     + p["fc7"]["bias"], 0) for i, j in [(0, 1), (0, 2), (1, 2)]]
  expected = np.concatenate(pair, -1) @ p["fc8"]["kernel"] + p["fc8"]["bias"]
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)
  # training mode drops units (dropout after the concatenation), eval mode is deterministic
  train_out = head.apply(variables, feats, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  assert train_out.shape == (4, 6)
  assert not np.allclose(np.asarray(train_out), expected)


def test_order_loss_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(5, 6)).astype(np.float32) * 2
  order = np.array([0, 5, 2, 3, 1], np.int32)
  logits[2, 2] = 30.0
  loss, acc = encoder_lib.classification_loss(jnp.asarray(logits), jnp.asarray(order))
  expected = -np.mean(log_softmax(logits.astype(np.float64))[np.arange(5), order])
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert float(acc) == pytest.approx(np.mean(logits.argmax(-1) == order))


def fixed_clips(task, key, batch, config, *, train):
  """Key-independent clips: the 3 clips of the window in the planted order."""
  del key, train
  assert task == "vcop"
  c = config.clip
  table = jnp.asarray(ops.vcop_permutations(c.vcop_clips))
  base = ops.vcop_offsets(c.clip_len, c.vcop_gap, c.vcop_clips)
  offsets = base[table[batch["label"]]]
  frames = ops.gather_frames(batch["windows"], (0,) * c.vcop_clips, offsets)
  frames = frames[..., :c.crop_size, :c.crop_size, :].astype(jnp.float32)
  return frames / 255.0, {"order": batch["label"]}


def test_pmapped_steps_reduce_loss_on_fixed_batch():
  config = tiny_config()
  config.vcop.dropout = 0.0  # a fixed batch's loss then falls step after step
  method = vcop.VCOP(config)
  state, train_step = tiny.state_and_step(method, config, steps_per_epoch=10, total_steps=20, seed=0, 
                                          make_clips=fixed_clips)
  assert set(state.params) == {"encoder", "vcop_head"}
  assert "linear" not in state.params["encoder"]  # the encoder has no head of its own
  w = ops.window_len("vcop", config)
  rng = np.random.default_rng(0)
  batch = {"windows": rng.integers(0, 256, (4, 2, 1, w, 16, 16, 3), dtype=np.uint8),
           "label": rng.integers(0, 6, (4, 2)).astype(np.int32)}
  rep = tiny.host_replicas(state, 4)
  step = jax.pmap(train_step, axis_name="batch", devices=jax.devices()[:4])
  key = tiny.host_replicas(jax.random.PRNGKey(1), 4)
  losses = []
  for _ in range(4):
    rep, metrics = step(rep, batch, key)
    losses.append(float(metrics["loss"][0]))
  assert 1.0 < losses[0] < 3.5  # near log(6) at init
  assert losses[-1] < losses[0], losses
  for leaf in jax.tree.leaves(jax.device_get(rep.params)):
    np.testing.assert_array_equal(leaf[2], leaf[0])


def test_validate_names_bad_keys():
  config = tiny_config()
  config.clip.vcop_clips = 6
  with pytest.raises(ConfigError, match="clip.vcop_clips"):
    vcop.VCOP.validate(config)
  config = tiny_config()
  config.vcop.dropout = 1.0
  with pytest.raises(ConfigError, match="vcop.dropout"):
    vcop.VCOP.validate(config)

