"""VideoPace: pace prediction (Wang et al., ECCV 2020; SPEC section 5).

A whole clip is sampled at pace r in 1..R (stride r; `ops.make_clips('pace', ...)`), and one
linear head on the pooled features (`linear`, R classes) predicts r - 1 with cross-entropy.
The backbone starts from an auxSKD student encoder (`train.init_from`; every layer whose shape
matches, as VSPP does: "auxSKD + VideoPace") or from scratch.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from auxskd_jax import ops
from auxskd_jax.config import require
from auxskd_jax.train import encoder as encoder_lib
from auxskd_jax.train.state import TrainState, device_key, step_metrics

AXIS = "batch"


def pace_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean cross-entropy, accuracy) of pace logits `[B, R]` against 0-based paces `[B]`."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  return jnp.mean(ce), accuracy


class VideoPace:
  """The VideoPace method for `train.loop.fit` (see docs/DESIGN.md, "The loop's contract")."""
  task = "pace"

  def __init__(self, config: ml_collections.ConfigDict,
               make_clips: Callable[..., tuple[jax.Array, dict]] | None = None):
    """`make_clips` defaults to `ops.make_clips`; tests may pass a deterministic one."""
    self.config = config
    make_clips = make_clips or ops.make_clips
    self.make_clips = make_clips
    self.model = encoder_lib.build_encoder(config, num_classes=config.clip.max_speed,
                                           bn_axis_name=encoder_lib.student_bn_axis(config))
    self.schedule: Callable[[Any], Any] | None = None
    self.init_report = None

  def init_state(self, config: ml_collections.ConfigDict, rng: jax.Array,
                 steps_per_epoch: int, total_steps: int | None = None) -> TrainState:
    """A fresh pace head; the backbone from `config.train.init_from` when given."""
    state, self.init_report, self.schedule = encoder_lib.init_encoder_state(
        self.model, config, rng, steps_per_epoch, total_steps, "VideoPace")
    return state

  def train_step(self, state: TrainState, batch: dict[str, jax.Array],
                 key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """One pmapped step (axis 'batch'); `key` is the run's base key, same on every device."""
    key = device_key(key, state.step, AXIS)
    clips, labels = self.make_clips("pace", key, batch, self.config, train=True)

    def loss_fn(params: Any) -> tuple[jax.Array, Any]:
      logits, updates = self.model.apply(
          {"params": params["encoder"], "batch_stats": state.batch_stats["encoder"]},
          clips[:, 0], train=True, mutable=["batch_stats"])
      loss, accuracy = pace_loss(logits, labels["pace"])
      return loss, (updates["batch_stats"], accuracy)

    (loss, (stats, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_mean_gradients(grads, {"encoder": stats}, AXIS)
    return new_state, step_metrics({"loss": loss, "accuracy": accuracy}, self.schedule,
                                   state.step, AXIS)


def validate(config: ml_collections.ConfigDict) -> None:
  """VideoPace-specific checks (the shared ones run in `config.validate`)."""
  require(config.clip.max_speed >= 2, "clip.max_speed",
          "VideoPace predicts the pace: use at least 2 paces (4 in the paper).")
  from auxskd_jax.train import loop

  ops.validate("pace", config)
  loop.validate(config)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The `pace` task: pretrain (from `train.init_from` if set), checkpointing to `workdir`."""
  from auxskd_jax.train import loop

  validate(config)
  state = loop.fit(VideoPace(config), config, workdir)
  return {"workdir": workdir, "step": int(state.step)}
