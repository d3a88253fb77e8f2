"""The loop stops on a NaN loss with a clear message and keeps the last good checkpoint."""

import os

import jax
import jax.numpy as jnp
import optax
import pytest

from auxskd_jax.config import base_config
from auxskd_jax.train import checkpoint as ckpt_lib
from auxskd_jax.train import loop
from auxskd_jax.train.state import TrainState


class _BlowsUp:
  """A one-parameter 'method' whose loss is finite until step `bad_from`, then NaN: it
  exercises the loop's NaN handling without compiling a network."""
  recipe = "clip"

  def __init__(self, bad_from: int):
    self.bad_from = bad_from

  def init_state(self, config, rng, tx, steps_per_epoch):
    del config, rng, tx, steps_per_epoch
    return TrainState.create(params={"encoder": {"w": jnp.ones(())}},
                             batch_stats={"encoder": {}}, tx=optax.sgd(0.1))

  def make_step(self, schedule):
    del schedule
    return self._step

  def _step(self, state, batch, key):
    del key
    x = jnp.mean(batch["windows"].astype(jnp.float32)) / 255.0

    def loss_fn(params):
      return (params["encoder"]["w"] * x) ** 2

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    loss = jnp.where(state.step + 1 >= self.bad_from, jnp.nan, loss)
    new_state = state.apply_gradients(jax.lax.pmean(grads, "batch"))
    return new_state, {"loss": jax.lax.pmean(loss, "batch")}


def _config(data):
  config = base_config()
  config.task = "finetune"
  config.data.data_dir, config.data.name = data
  config.clip.clip_len, config.clip.crop_size = 4, 8
  config.train.batch_size = 4
  config.train.num_steps = 12
  config.train.log_every = 2
  config.train.checkpoint_every = 4
  return config


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_prepared, tmp_path):
  workdir = str(tmp_path / "run")
  with pytest.raises(loop.NonFiniteLossError, match="NaN/inf.*last good checkpoint is step 4"):
    loop.fit(_BlowsUp(bad_from=7), _config(tiny_prepared), workdir)
  saved = sorted(int(s) for s in os.listdir(ckpt_lib.checkpoint_dir(workdir)) if s.isdigit())
  assert saved == [4]  # step 8 would have held the NaN state: never written


def test_finite_run_completes_and_saves_final(tiny_prepared, tmp_path):
  workdir = str(tmp_path / "run")
  state = loop.fit(_BlowsUp(bad_from=10**6), _config(tiny_prepared), workdir)
  assert int(state.step) == 12
  assert os.path.isfile(os.path.join(workdir, "config.json"))
  saved = sorted(int(s) for s in os.listdir(ckpt_lib.checkpoint_dir(workdir)) if s.isdigit())
  assert saved[-1] == 12
