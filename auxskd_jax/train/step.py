"""The one training step every method shares (flax `examples/imagenet`'s `train_step`,
big_vision's `update_fn`): keys -> clips -> the method's `before_loss` -> value_and_grad of the
method's loss -> reduce over devices -> optimizer update -> the method's `after_update` ->
metrics.

A method (see `auxskd_jax/methods/base.py`) supplies only what is specific to it:
`loss(params, state, clips, labels, keys) -> (loss, aux)` and optionally
`before_loss(state) -> state` (the momentum teachers' EMA, which the references run right before
the teacher's forward) and `after_update(old_state, new_state, aux) -> new_state` (their queue
and teacher BN statistics). The state `before_loss` returns is the one the loss reads and the
optimizer updates. `aux` is a dict: `batch_stats` (the new BN statistics, same tree as
`state.batch_stats`), `metrics` (scalars to log), and anything `after_update` needs.

Random keys. Every key of a step is reached by its own path from the run's base key, so no two
streams can share one (the old `fold_in(step_key, 1)` shuffle key was device 1's clip key):

    step_key = fold_in(base, step)
    device   = fold_in(fold_in(step_key, DEVICE_STREAM), global device index)
        clips, method = split(device)      # the clips; the method's own draws (dropout, ...)
    shared   = fold_in(step_key, SHARED_STREAM)   # the same on every device (shuffled BN)

`axis_index('batch')` under a multi-process pmap is the global device index, so a 2 x 2 run
draws exactly what a 1 x 4 run draws. Nothing random is stored: resume is exact.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from auxskd_jax import ops
from auxskd_jax.train.state import TrainState

AXIS = "batch"
DEVICE_STREAM = 0
SHARED_STREAM = 1

MakeClips = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


class StepKeys(NamedTuple):
  clips: jax.Array  # this device's: sampling and augmentation
  method: jax.Array  # this device's: the method's own draws (dropout, ...)
  shared: jax.Array  # identical on every device (e.g. shuffled BN's permutation)


def step_keys(base_key: jax.Array, step: jax.Array, axis_name: str = AXIS) -> StepKeys:
  """This step's keys on this device (see the module docstring)."""
  step_key = jax.random.fold_in(base_key, step)
  device = jax.random.fold_in(jax.random.fold_in(step_key, DEVICE_STREAM),
                              jax.lax.axis_index(axis_name))
  clips, method = jax.random.split(device)
  return StepKeys(clips=clips, method=method,
                  shared=jax.random.fold_in(step_key, SHARED_STREAM))


def all_finite(tree: Any) -> jax.Array:
  """True when every floating-point leaf of `tree` is finite (a bool scalar)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def make_train_step(method: Any, schedule: Callable[[Any], Any] | None = None, *,
                    make_clips: MakeClips | None = None, axis_name: str = AXIS
                    ) -> Callable[[TrainState, dict[str, jax.Array], jax.Array],
                                  tuple[TrainState, dict[str, jax.Array]]]:
  """The pure step `(state, batch, base_key) -> (state, metrics)` to pmap over `axis_name`.

  `make_clips(recipe, key, batch, config, *, train)` defaults to the method's registered
  recipe; tests pass a deterministic one. Metrics come back averaged over the devices, with
  `learning_rate` (when `schedule` is given) and `state_finite` (1.0 when every parameter,
  optimizer and extra array of the new state is finite: the loop never saves a state without
  it).
  """
  if make_clips is None:
    recipe = ops.get_recipe(method.recipe, method.config)
    clips_fn = lambda key, batch: recipe(key, batch, train=True)
  else:
    clips_fn = lambda key, batch: make_clips(method.recipe, key, batch, method.config,
                                             train=True)
  before_loss = getattr(method, "before_loss", None)
  after_update = getattr(method, "after_update", None)

  def train_step(state: TrainState, batch: dict[str, jax.Array],
                 base_key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    keys = step_keys(base_key, state.step, axis_name)
    if before_loss is not None:
      state = before_loss(state)
    clips, labels = clips_fn(keys.clips, batch)
    if "mask" in batch:  # padding rows of a final partial batch count for nothing
      labels = dict(labels, mask=batch["mask"])
    (loss, aux), grads = jax.value_and_grad(method.loss, has_aux=True)(
        state.params, state, clips, labels, keys)
    grads = jax.lax.pmean(grads, axis_name)
    # A no-op for synchronised BN; keeps per-device BN replicas identical, so replica 0 is the
    # whole state.
    batch_stats = jax.lax.pmean(aux["batch_stats"], axis_name)
    new_state = state.apply_gradients(grads, batch_stats=batch_stats)
    if after_update is not None:
      new_state = after_update(state, new_state, aux)
    metrics = jax.lax.pmean({"loss": loss, **aux.get("metrics", {})}, axis_name)
    if schedule is not None:
      metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
    metrics["state_finite"] = all_finite(
        (new_state.params, new_state.opt_state, new_state.extras)).astype(jnp.float32)
    return new_state, metrics

  return train_step
