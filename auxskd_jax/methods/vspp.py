"""VSPP: Video Segment Pace Prediction (SPEC section 4).

One clip per video plays at normal speed except one of S segments at speed r; two linear heads
on the pooled features predict the speed (`linear`, R classes) and the segment
(`linear_segment`, S classes); loss = CE(speed) + CE(segment). The backbone starts from an
auxSKD student encoder (`train.init_from`; every layer whose shape matches) or from scratch.
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


def _accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))


class VSPP:
  """The VSPP method for `train.loop.fit` (see docs/DESIGN.md, "The loop's contract")."""
  task = "vspp"

  def __init__(self, config: ml_collections.ConfigDict,
               make_clips: Callable[..., tuple[jax.Array, dict]] | None = None):
    """`make_clips` defaults to `ops.make_clips`; tests may pass a deterministic one."""
    self.config = config
    make_clips = make_clips or ops.make_clips
    self.make_clips = make_clips
    self.model = encoder_lib.build_encoder(
        config, heads={"linear": config.clip.max_speed,
                       "linear_segment": config.clip.num_segments},
        bn_axis_name=encoder_lib.student_bn_axis(config))
    self.schedule: Callable[[Any], Any] | None = None
    self.init_report = None

  def init_state(self, config: ml_collections.ConfigDict, rng: jax.Array,
                 steps_per_epoch: int, total_steps: int | None = None) -> TrainState:
    """Fresh heads; the backbone from `config.train.init_from` when given."""
    state, self.init_report, self.schedule = encoder_lib.init_encoder_state(
        self.model, config, rng, steps_per_epoch, total_steps, "VSPP")
    return state

  def train_step(self, state: TrainState, batch: dict[str, jax.Array],
                 key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """One pmapped step (axis 'batch'); `key` is the run's base key, same on every device."""
    key = device_key(key, state.step, AXIS)
    clips, labels = self.make_clips("vspp", key, batch, self.config, train=True)
    x = clips[:, 0]

    def loss_fn(params: Any) -> tuple[jax.Array, Any]:
      out, updates = self.model.apply(
          {"params": params["encoder"], "batch_stats": state.batch_stats["encoder"]}, x,
          train=True, mutable=["batch_stats"])
      ce_speed = optax.softmax_cross_entropy_with_integer_labels(out["linear"], labels["speed"])
      ce_segment = optax.softmax_cross_entropy_with_integer_labels(
          out["linear_segment"], labels["segment"])
      loss = jnp.mean(ce_speed) + jnp.mean(ce_segment)
      return loss, (updates["batch_stats"], out, jnp.mean(ce_speed), jnp.mean(ce_segment))

    (loss, (stats, out, ce_speed, ce_segment)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    new_state = state.apply_mean_gradients(grads, {"encoder": stats}, AXIS)
    metrics = step_metrics({
        "loss": loss,
        "loss_speed": ce_speed,
        "loss_segment": ce_segment,
        "accuracy_speed": _accuracy(out["linear"], labels["speed"]),
        "accuracy_segment": _accuracy(out["linear_segment"], labels["segment"]),
    }, self.schedule, state.step, AXIS)
    return new_state, metrics


def validate(config: ml_collections.ConfigDict) -> None:
  """VSPP-specific checks (the shared ones run in `config.validate`)."""
  require(config.clip.max_speed >= 2, "clip.max_speed",
          "VSPP predicts the speed: use at least 2 speeds (4 in the paper).")
  require(config.clip.num_segments >= 2, "clip.num_segments",
          "VSPP predicts the segment: use at least 2 segments (4 in the paper).")
  from auxskd_jax.train import loop

  ops.validate("vspp", config)
  loop.validate(config)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The `vspp` task: pretrain (from `train.init_from` if set), checkpointing to `workdir`."""
  from auxskd_jax.train import loop

  validate(config)
  state = loop.fit(VSPP(config), config, workdir)
  return {"workdir": workdir, "step": int(state.step)}
