"""The training loop every method shares: `fit(method, config, workdir, evaluators=...)`.

A method (`methods/base.py`) gives an unreplicated initial state, the name of its clip recipe
and a pure step `(state, batch, key) -> (state, metrics)` (`train/step.py`); the loop owns
devices, data, the pmapped step with donated state, checkpoints (resumed automatically from
`workdir`), logs, the evaluators the config lists, and stops on a non-finite loss or state.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterator, Protocol, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from auxskd_jax import config as config_lib
from auxskd_jax import data, ops
from auxskd_jax.config import ConfigError, require
from auxskd_jax.train import checkpoint as ckpt_lib
from auxskd_jax.train import devices, optim, preemption
from auxskd_jax.train import step as step_lib
from auxskd_jax.train.logging import MetricLogger, make_trackers
from auxskd_jax.train.state import TrainState


class Method(Protocol):
  recipe: str  # the clip recipe it trains on (`ops.RECIPES`): the loader ships its windows

  def init_state(self, config: ml_collections.ConfigDict, rng: jax.Array, tx: Any,
                 steps_per_epoch: int) -> TrainState:
    ...

  def make_step(self, schedule: Any) -> Callable[[TrainState, dict[str, jax.Array], jax.Array],
                                                 tuple[TrainState, dict[str, jax.Array]]]:
    ...


class Evaluator(Protocol):
  """Run every `every_steps` steps (and after the last) on every process; process 0 logs the
  returned scalars under `name` (`auxskd_jax/evaluate/evaluators.py`)."""
  name: str
  every_steps: int

  def __call__(self, variables: dict[str, Any], step: int) -> dict[str, float]:
    ...


class NonFiniteLossError(FloatingPointError):
  """The loss or the state became NaN or inf; the run stopped without saving the bad state."""


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the loop needs: a batch that splits evenly over every device of every host."""
  require(config.train.batch_size > 0, "train.batch_size", "must be positive.")
  require(config.train.bn in step_lib.BN_MODES, "train.bn",
          f"use one of {', '.join(repr(m) for m in step_lib.BN_MODES)}.")
  n = jax.device_count()
  b = config.train.batch_size
  if b % n:
    raise ConfigError(
        f"--config.train.batch_size={b} does not divide over the {n} devices "
        f"({jax.process_count()} host(s)); use a multiple of {n}, e.g. {max(n, b // n * n)} "
        f"or {(b // n + 1) * n}.")
  require(config.train.log_every > 0, "train.log_every", "must be positive.")
  require(config.train.checkpoint_every > 0, "train.checkpoint_every", "must be positive.")
  require(config.train.num_steps > 0 or config.train.num_epochs > 0, "train.num_epochs",
          "needs to be positive (or set train.num_steps).")


def schedule_lengths(config: ml_collections.ConfigDict, num_videos: int) -> tuple[int, int]:
  """(steps_per_epoch, total_steps); an epoch visits every video `repeats_per_epoch` times."""
  t = config.train
  if t.steps_per_epoch > 0:
    steps_per_epoch = int(t.steps_per_epoch)
  else:
    steps_per_epoch = num_videos * int(t.repeats_per_epoch) // int(t.batch_size)
    if steps_per_epoch < 1:
      raise ConfigError(
          f"--config.train.batch_size={t.batch_size} is larger than an epoch "
          f"({num_videos} videos x {t.repeats_per_epoch} repeats); lower it or set "
          "train.steps_per_epoch.")
  total = int(t.num_steps) if t.num_steps > 0 else int(t.num_epochs) * steps_per_epoch
  return steps_per_epoch, total


class _DevicePrefetcher:
  """Puts the next `size` batches on the devices ahead of time, each paired with the loader
  state right after it, so a checkpoint stores the state of what was actually consumed."""

  def __init__(self, loader: Any, size: int):
    self._loader = loader
    self._iter = iter(loader)
    self._queue: collections.deque = collections.deque()
    self._size = max(1, int(size))

  def _state(self) -> Any:
    get_state = getattr(self._loader, "get_state", None) or getattr(self._iter, "get_state")
    return get_state()

  def _fill(self) -> None:
    while len(self._queue) < self._size:
      try:
        batch = next(self._iter)
      except StopIteration:
        return
      arrays = {k: v for k, v in batch.items()
                if isinstance(v, np.ndarray) and (v.dtype.kind in "biuf")}
      self._queue.append((devices.shard_batch(arrays), self._state()))

  def __iter__(self) -> Iterator[tuple[dict[str, jax.Array], Any]]:
    return self

  def __next__(self) -> tuple[dict[str, jax.Array], Any]:
    self._fill()
    if not self._queue:
      raise StopIteration
    return self._queue.popleft()


def make_train_loader(recipe: str, config: ml_collections.ConfigDict, source: Any) -> Any:
  """The training iterator: random window starts, shuffled, endless; one shard per process,
  with the windows `recipe` needs."""
  clips = ops.get_recipe(recipe, config)
  return data.make_loader(
      source, batch_size=config.train.batch_size // jax.process_count(),
      views=clips.num_views(), window_len=clips.window_len(),
      start_mode="random", seed=int(config.seed), shuffle=True, num_epochs=None,
      drop_remainder=True, shard_index=jax.process_index(), shard_count=jax.process_count(),
      workers=int(config.data.workers))


def open_train_source(config: ml_collections.ConfigDict) -> Any:
  return data.open_split(config.data.data_dir, config.data.name, config.data.train_split)


def encoder_variables(r_state: TrainState) -> dict[str, Any]:
  """The encoder (with its heads) of a replicated state, on the host, for evaluators."""
  return devices.unreplicate({"params": r_state.params["encoder"],
                              "batch_stats": r_state.batch_stats["encoder"]})


def fit(method: Method, config: ml_collections.ConfigDict, workdir: str, *,
        evaluators: Sequence[Evaluator] = ()) -> TrainState:
  """Trains `method` to the configured length; resumes from `workdir`'s latest checkpoint.

  Every evaluator runs each `every_steps` steps and after the last step; its scalars go to the
  same TensorBoard / metrics.jsonl under its name. Returns the final state, unreplicated, on
  the host.
  """
  validate(config)
  is_chief = jax.process_index() == 0
  if is_chief:
    config_lib.save_config(config, workdir)
  source = open_train_source(config)
  steps_per_epoch, total_steps = schedule_lengths(config, len(source))
  init_rng, train_key = jax.random.split(jax.random.PRNGKey(int(config.seed)))
  # The loop builds the optimizer and schedule and hands them over: no call order is hidden.
  tx, schedule = optim.make_optimizer(config, steps_per_epoch, total_steps)
  state = method.init_state(config, init_rng, tx, steps_per_epoch)

  manager = ckpt_lib.make_manager(workdir, keep=config.train.keep_checkpoints)
  loader = make_train_loader(method.recipe, config, source)
  restored = ckpt_lib.restore_latest(manager, state)
  if restored is not None:
    state, loader_state = restored
    if loader_state is not None:
      loader.set_state(loader_state)
    logging.info("Resumed from %s at step %d.", ckpt_lib.checkpoint_dir(workdir), int(state.step))
  start = int(state.step)
  logging.info("%s: %d devices, global batch %d, %d steps/epoch, %d steps.", method.recipe,
               jax.device_count(), config.train.batch_size, steps_per_epoch, total_steps)
  if start >= total_steps:
    manager.close()
    return state

  p_step = jax.pmap(method.make_step(schedule), axis_name=devices.AXIS, donate_argnums=(0,))
  r_state = devices.replicate(state)
  r_key = devices.replicate(train_key)
  del state
  logger = MetricLogger(workdir, total_steps=total_steps, clips_per_step=config.train.batch_size,
                        start_step=start, enabled=is_chief,
                        trackers=make_trackers(config, workdir) if is_chief else ())
  batches = _DevicePrefetcher(loader, config.data.prefetch)
  bad = jnp.zeros((), bool)
  window: list[dict[str, jax.Array]] = []

  def stop_if_not_finite(step: int) -> None:
    if bool(bad):
      raise NonFiniteLossError(
          f"the training loss or state became NaN/inf at or before step {step}; stopped "
          f"without saving. The last good checkpoint is step {ckpt_lib.last_good_step(manager)} "
          f"in {ckpt_lib.checkpoint_dir(workdir)}. Lower --config.optim.learning_rate or check "
          "the input data.")

  try:
    with preemption.PreemptionGuard(sync_every=int(config.train.log_every)) as guard:
      for step in range(start + 1, total_steps + 1):
        try:
          batch, loader_state = next(batches)
        except StopIteration:
          raise RuntimeError(
              f"the training loader ran out of batches at step {step} of {total_steps}; it "
              "must repeat endlessly (num_epochs=None).") from None
        r_state, metrics = p_step(r_state, batch, r_key)
        if step == start + 1:  # keep compilation out of the throughput figures
          jax.block_until_ready(metrics)
          logger.reset_timer(step)
        # Async, no host sync: the loss, and every array of the new state (an infinite
        # gradient with a finite loss still writes NaN parameters).
        finite = jnp.all(jnp.isfinite(metrics["loss"]))
        if "state_finite" in metrics:
          finite = jnp.logical_and(finite, jnp.all(metrics["state_finite"] > 0))
        bad = jnp.logical_or(bad, ~finite)
        window.append(metrics)
        log_now = step % config.train.log_every == 0 or step == total_steps
        save_now = step % config.train.checkpoint_every == 0 or step == total_steps
        if log_now or save_now:
          stop_if_not_finite(step)
        if log_now:
          host = jax.device_get(window)
          row = {k: float(np.mean([np.mean(m[k]) for m in host])) for k in host[0]}
          row["epoch"] = step / steps_per_epoch
          logger.write(step, row)
          window = []
        if save_now:
          ckpt_lib.save(manager, step, devices.unreplicate(r_state), loader_state,
                        force=step == total_steps)
        for ev in evaluators:
          if (ev.every_steps > 0 and step % ev.every_steps == 0) or step == total_steps:
            results = ev(encoder_variables(r_state), step)
            logger.write(step, results, prefix=ev.name)
            logger.reset_timer(step)
        if step < total_steps and guard.should_stop(step):
          # Every process agreed on this step: save it (and wait until it is on disk), stop.
          stop_if_not_finite(step)
          ckpt_lib.save(manager, step, devices.unreplicate(r_state), loader_state, force=True,
                        wait=True)
          logging.warning("Saved step %d in %s; stopping (%s).", step,
                          ckpt_lib.checkpoint_dir(workdir), guard.reason or "asked to stop")
          raise preemption.Preempted(step, guard.reason)
      manager.wait_until_finished()  # under the guard: a SIGTERM must not cut the last save
  finally:
    manager.close()
    logger.close()
  return jax.tree.map(np.asarray, devices.unreplicate(r_state))
