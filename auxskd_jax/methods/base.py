"""What every method shares, so a method file holds only what is specific to it.

A method subclasses `Method` and defines:
- `recipe`: the name of the clip recipe it trains on (`auxskd_jax.ops.RECIPES`);
- `create_state(config, rng, tx) -> TrainState`: its initial, unreplicated state (encoder
  under `params['encoder']`, extra trained parts beside it, untrained parts in `extras`);
- `loss(params, state, clips, labels, keys) -> (loss, aux)`: see `train/step.py`;
- optionally `before_loss(state) -> state`, `after_update(old_state, new_state, aux) ->
  new_state` and `check(config)`.
The one training step (`train.step.make_train_step`) and the loop (`train.loop.fit`) do the
rest; the file is a pretraining task as it is (`auxskd_jax.tasks.pretrain`).
"""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar

import jax
import ml_collections

from auxskd_jax import ops
from auxskd_jax.train import encoder as encoder_lib
from auxskd_jax.train import loop
from auxskd_jax.train import step as step_lib
from auxskd_jax.train.state import TrainState


class Method(abc.ABC):
  """Base class: the optimizer, the step and the task's validation, written once."""
  recipe: ClassVar[str] = ""
  name: ClassVar[str] = ""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.init_report: Any = None  # what create_state loaded from train.init_from, if anything
    self.steps_per_epoch: int | None = None

  def create_state(self, config: ml_collections.ConfigDict, rng: jax.Array,
                   tx: Any) -> TrainState:
    """Default: the whole trainable state is `self.model` (encoder + heads), its encoder
    from `config.train.init_from` when set."""
    state, self.init_report = encoder_lib.encoder_state(self.model, config, rng, tx, self.name)
    return state

  @abc.abstractmethod
  def loss(self, params: Any, state: TrainState, clips: jax.Array,
           labels: dict[str, jax.Array], keys: step_lib.StepKeys) -> tuple[jax.Array, dict]:
    """(loss, aux) on this device's clips; `train/step.py` says what `aux` holds."""

  def init_state(self, config: ml_collections.ConfigDict, rng: jax.Array, tx: Any,
                 steps_per_epoch: int) -> TrainState:
    """The loop's entry point: the initial state for optimizer `tx` (the loop builds it and
    the schedule from the config). `steps_per_epoch` lets a method place a checkpoint's
    finished epochs on this run's step axis (auxSKD continuing the authors' run)."""
    self.steps_per_epoch = int(steps_per_epoch)
    return self.create_state(config, rng, tx)

  def make_step(self, schedule: Callable[[Any], Any] | None = None) -> Callable:
    """The pure step for `jax.pmap(..., axis_name=train.devices.AXIS)`; `schedule` only
    reports the learning rate (the optimizer already holds it)."""
    return step_lib.make_train_step(self, schedule)

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    """Method-specific config checks (raise ConfigError); the recipe's and the loop's run in
    `validate`."""

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    """The method's, its recipe's and the loop's checks (the task adds the data's)."""
    cls.check(config)
    ops.validate(cls.recipe, config)
    loop.validate(config)
