"""SGD with momentum and PyTorch-style (coupled) weight decay, and the learning-rate schedules.

The reference uses `torch.optim.SGD(lr, momentum, weight_decay)`, which adds `wd * param` to the
gradient before momentum; `add_decayed_weights` before `sgd` is exactly that. Schedules count
optimizer steps, converted from epochs with `steps_per_epoch`.
"""

from __future__ import annotations

import ml_collections
import optax

from auxskd_jax.errors import require


def validate(config: ml_collections.ConfigDict) -> None:
  """ConfigError for an `optim` section the schedules cannot build."""
  require(config.optim.schedule in ("step", "cosine", "constant"), "optim.schedule",
          "use 'step', 'cosine' or 'constant'.")
  require(config.optim.learning_rate > 0, "optim.learning_rate", "must be positive.")


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                  total_steps: int) -> optax.Schedule:
  """`config.optim.schedule`: 'step' (x decay_factor every decay_epochs), 'cosine', 'constant'."""
  o = config.optim
  lr = float(o.learning_rate)
  warmup = int(round(float(o.get("warmup_epochs", 0.0)) * steps_per_epoch))
  if o.schedule == "step":
    main = optax.exponential_decay(
        lr, transition_steps=max(1, int(round(o.decay_epochs * steps_per_epoch))),
        decay_rate=float(o.decay_factor), staircase=True)
  elif o.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps=max(1, total_steps - warmup))
  elif o.schedule == "constant":
    main = optax.constant_schedule(lr)
  else:
    raise ValueError(f"--config.optim.schedule={o.schedule!r}: use 'step', 'cosine' or "
                     "'constant'.")
  if warmup <= 0:
    return main
  ramp = optax.linear_schedule(0.0, lr, warmup)
  return optax.join_schedules([ramp, main], boundaries=[warmup])


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The reference's SGD; returns (transformation, schedule) so steps can log the rate."""
  o = config.optim
  if o.name != "sgd":
    raise ValueError(f"--config.optim.name={o.name!r}: only 'sgd' (the reference's) is built.")
  schedule = make_schedule(config, steps_per_epoch, total_steps)
  tx = optax.chain(optax.add_decayed_weights(float(o.weight_decay)),
                   optax.sgd(schedule, momentum=float(o.momentum) or None))
  return tx, schedule
