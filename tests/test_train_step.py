"""The one training step: key streams that cannot collide, and a non-finite state (not only
loss) stops the loop before it is saved."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from auxskd_jax.config import base_config
from auxskd_jax.methods import base
from auxskd_jax.train import checkpoint as ckpt_lib
from auxskd_jax.train import loop
from auxskd_jax.train import step as step_lib
from auxskd_jax.train.state import TrainState


def test_no_two_random_streams_share_a_key():
  n_dev, steps = 4, 12
  base_key = jax.random.PRNGKey(0)

  def keys(step):
    k = step_lib.step_keys(base_key, step)
    return jax.random.key_data(k.clips), jax.random.key_data(k.method), \
        jax.random.key_data(k.shared)

  f = jax.pmap(keys, axis_name="batch", devices=jax.devices()[:n_dev])
  seen = {}
  for step in range(steps):
    clips, method, shared = (np.asarray(x) for x in f(jnp.full((n_dev,), step)))
    # the shared key is the same on every device, the others differ per device
    assert all(np.array_equal(shared[0], s) for s in shared)
    for name, arr in (("clips", clips), ("method", method), ("shared", shared[:1])):
      for d, key in enumerate(arr):
        seen.setdefault(key.tobytes(), []).append((name, step, d))
  collisions = {k: v for k, v in seen.items() if len(v) > 1}
  assert not collisions, collisions
  assert len(seen) == steps * (2 * n_dev + 1)


@jax.custom_vjp
def _spike(w):
  """0 going forward, an infinite gradient going back (where it is used at all)."""
  return jnp.zeros_like(w)


_spike.defvjp(lambda w: (_spike(w), None),
              lambda _, g: (jnp.where(g != 0, jnp.inf, 0.0).astype(g.dtype),))


class _InfiniteGradient(base.Method):
  """A one-parameter method: from step `bad_from` its loss stays finite while its gradient is
  infinite, so only a check of the state catches it."""
  recipe = "clip"
  name = "blows-up"

  def __init__(self, config, bad_from):
    super().__init__(config)
    self.bad_from = bad_from

  def make_step(self, schedule):
    return step_lib.make_train_step(self, schedule, make_clips=self._clips)

  @staticmethod
  def _clips(recipe, key, batch, config, *, train):
    del recipe, key, config, train
    return batch["windows"][:, :1].astype(jnp.float32) / 255.0, {}

  def create_state(self, config, rng, tx):
    return TrainState.create(params={"encoder": {"w": jnp.ones(())}},
                             batch_stats={"encoder": {}}, tx=optax.sgd(0.1))

  def loss(self, params, state, clips, labels, keys):
    w = params["encoder"]["w"]
    loss = (w * jnp.mean(clips)) ** 2 + jnp.where(state.step + 1 >= self.bad_from, _spike(w),
                                                    0.0)
    return loss, {"batch_stats": state.batch_stats, "metrics": {}}


def test_infinite_gradient_with_finite_loss_stops_before_saving(tiny_prepared, tmp_path):
  config = base_config()
  config.task = "finetune"
  config.data.data_dir, config.data.name = tiny_prepared
  config.clip.clip_len, config.clip.crop_size = 4, 8
  config.train.batch_size = 4
  config.train.num_steps = 12
  config.train.log_every = 2
  config.train.checkpoint_every = 4
  workdir = str(tmp_path / "run")
  with pytest.raises(loop.NonFiniteLossError, match="last good checkpoint is step 4"):
    loop.fit(_InfiniteGradient(config, bad_from=7), config, workdir)
  saved = sorted(int(s) for s in os.listdir(ckpt_lib.checkpoint_dir(workdir)) if s.isdigit())
  assert saved == [4]
  restored = ckpt_lib.restore_variables(workdir)
  assert np.isfinite(np.asarray(restored["params"]["encoder"]["w"]))
