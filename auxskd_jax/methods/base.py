"""What every method shares, so a method file holds only what is specific to it.

A method subclasses `Method` and defines:
- `recipe`: the name of the clip recipe it trains on (`auxskd_jax.ops.RECIPES`);
- `create_state(config, rng, tx) -> TrainState`: its initial, unreplicated state (backbone
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
from auxskd_jax.train import loop, optim
from auxskd_jax.train import step as step_lib
from auxskd_jax.train.state import TrainState


class Method(abc.ABC):
  """Base class: the optimizer, the step and the task's validation, written once."""
  recipe: ClassVar[str] = ""
  name: ClassVar[str] = ""

  def __init__(self, config: ml_collections.ConfigDict,
               make_clips: step_lib.MakeClips | None = None):
    """`make_clips(recipe, key, batch, config, *, train)` replaces the recipe (tests pass a
    deterministic one)."""
    self.config = config
    self.make_clips = make_clips
    self.schedule: Callable[[Any], Any] | None = None
    self.init_report: Any = None
    self._step: Callable | None = None
    self.steps_per_epoch: int | None = None

  def create_state(self, config: ml_collections.ConfigDict, rng: jax.Array,
                   tx: Any) -> TrainState:
    """Default: the whole trainable state is `self.model` (backbone + heads), its backbone
    from `config.train.init_from` when set."""
    state, self.init_report = encoder_lib.encoder_state(self.model, config, rng, tx, self.name)
    return state

  @abc.abstractmethod
  def loss(self, params: Any, state: TrainState, clips: jax.Array,
           labels: dict[str, jax.Array], keys: step_lib.StepKeys) -> tuple[jax.Array, dict]:
    """(loss, aux) on this device's clips; `train/step.py` says what `aux` holds."""

  def init_state(self, config: ml_collections.ConfigDict, rng: jax.Array,
                 steps_per_epoch: int, total_steps: int | None = None) -> TrainState:
    """The optimizer and schedule from the config, then the method's initial state."""
    total_steps = total_steps or steps_per_epoch * int(config.train.num_epochs)
    self.steps_per_epoch = steps_per_epoch
    tx, self.schedule = optim.make_optimizer(config, steps_per_epoch, total_steps)
    return self.create_state(config, rng, tx)

  @property
  def train_step(self) -> Callable:
    """The pure step for `jax.pmap(..., axis_name='batch')` (one function object per method,
    so jax's compilation cache recognises it across `fit` calls)."""
    if self._step is None:
      self._step = step_lib.make_train_step(self, self.schedule, make_clips=self.make_clips)
    return self._step

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
