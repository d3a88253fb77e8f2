"""Momentum-contrast pieces shared by auxSKD and RSPNet: L2 normalisation, a random normalised
queue, ring-buffer enqueue, the EMA teacher, and shuffled BN across devices.

The EMA runs as both references run it (auxSKD's `train.py`, RSPNet's MoCo builder): at the
start of step t, before the teacher's forward, theta_k <- m theta_k + (1 - m) theta_q with the
student's current parameters (those before step t's update; parameters only, the teacher's BN
statistics come from its own forward). The teacher starts as a copy of the student, so the
first EMA is a no-op on equal parameters; a stored teacher has had one EMA per completed step
and equals the authors' at the same step, and continuing their checkpoint applies exactly
their next EMA. Where the references are silent: the teacher's new batch statistics are
made one set after each step so replicas stay identical: the devices' mean, or device 0's as
theirs under `train.bn='dataparallel'`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from auxskd_jax.train import devices
from auxskd_jax.train.state import TrainState
from auxskd_jax.train.step import reduce_running_stats

AXIS = devices.AXIS
TEACHER_BN = ("shuffle", "sync", "local")


def normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """L2 normalisation along the last axis, as torch.nn.functional.normalize."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def random_queue(key: jax.Array, size: int, dim: int, axis: int = -1) -> jax.Array:
  """The initial queue `[size, dim]` of standard normal draws, L2-normalised along `axis`.

  `axis=-1`: every key has unit norm (RSPNet: its `randn(dim, K)` normalised along dim 0, one
  key a column). `axis=0`: every one of the `dim` columns has unit norm over the `size` keys,
  as auxSKD's `randn(K, 128)` normalised along dim 0 (its initial keys have norm about
  sqrt(dim / size), so the first similarities are small until real keys arrive)."""
  x = jax.random.normal(key, (size, dim), jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def enqueue(queue: jax.Array, ptr: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Writes `keys` [G, D] over the oldest entries of `queue` [K, D], ring-buffer style.

  Write indices are modular, so K need not be a multiple of G; if G > K only the newest K
  keys can be kept, exactly as writing them one by one would leave the queue.
  """
  size, count = queue.shape[0], keys.shape[0]
  if count > size:
    ptr = (ptr + count - size) % size
    keys = keys[count - size:]
    count = size
  idx = (ptr + jnp.arange(count)) % size
  queue = queue.at[idx].set(keys.astype(queue.dtype))
  return queue, ((ptr + count) % size).astype(jnp.int32)


def ema(teacher: Any, student: Any, momentum: float) -> Any:
  return jax.tree.map(lambda t, s: momentum * t + (1.0 - momentum) * s, teacher, student)


def shuffled_apply(apply: Callable[[jax.Array], tuple[jax.Array, Any]], x: jax.Array,
                   key: jax.Array, axis_name: str = AXIS) -> tuple[jax.Array, Any]:
  """Shuffled BN across devices: gather the global batch, permute it with a key every device
  shares, run this device's slice (its BN sees a random subset), then gather and un-permute
  so each device gets back the outputs (an array or a tree of them) of its own examples. Over several processes the gather
  spans every device of every process, so the permutation is of the global batch."""
  n = x.shape[0]
  everything = jax.lax.all_gather(x, axis_name, tiled=True)
  perm = jax.random.permutation(key, everything.shape[0])
  i = jax.lax.axis_index(axis_name)
  mine = jax.lax.dynamic_slice_in_dim(everything[perm], i * n, n)
  out, extra = apply(mine)

  def own_examples(o: jax.Array) -> jax.Array:
    everyone = jax.lax.all_gather(o, axis_name, tiled=True)
    unpermuted = jnp.zeros_like(everyone).at[perm].set(everyone)
    return jax.lax.dynamic_slice_in_dim(unpermuted, i * n, n)

  return jax.tree.map(own_examples, out), extra


def teacher_bn_axis(mode: str) -> str | None:
  """The BN axis of a teacher network: only 'sync' averages statistics over devices."""
  return AXIS if mode == "sync" else None


def teacher_forward(module: nn.Module, variables: dict[str, Any], x: jax.Array, mode: str,
                    shared_key: jax.Array) -> tuple[Any, Any]:
  """The teacher's training-mode forward (outputs, new BN statistics) with its BN `mode`:
  'shuffle' (across devices, keyed by `shared_key`), 'sync' or 'local'."""
  def apply(v: jax.Array) -> tuple[Any, Any]:
    out, updates = module.apply(variables, v, train=True, mutable=["batch_stats"])
    return out, updates["batch_stats"]

  if mode == "shuffle":
    return shuffled_apply(apply, x, shared_key)
  return apply(x)


def ema_teacher(state: TrainState, momentum: float) -> TrainState:
  """Before the loss: the teacher's parameters EMA'd towards the student's current ones
  (`state.params['encoder']`, before this step's update), as the references do right before
  the teacher's forward."""
  teacher = state.extras["teacher"]
  teacher = dict(teacher, params=ema(teacher["params"], state.params["encoder"], momentum))
  return state.replace(extras=dict(state.extras, teacher=teacher))


def update_teacher_and_queue(state: TrainState, teacher_stats: Any, keys: jax.Array,
                             bn_mode: str = "sync") -> TrainState:
  """After the optimizer step: the teacher's new BN statistics made one set for every replica
  (device 0's under `train.bn='dataparallel'`, the devices' mean otherwise), and the global
  batch of `keys` enqueued (identical on every device). The teacher's parameters were EMA'd
  before the loss (`ema_teacher`)."""
  extras = state.extras
  teacher = {"params": extras["teacher"]["params"],
             "batch_stats": reduce_running_stats(teacher_stats, bn_mode, AXIS)}
  queue, ptr = enqueue(extras["queue"], extras["queue_ptr"],
                       jax.lax.all_gather(keys, AXIS, tiled=True))
  return state.replace(extras=dict(extras, teacher=teacher, queue=queue, queue_ptr=ptr))


class MomentumTeacher:
  """Mixin for methods with an EMA teacher and a queue (`self.section.momentum`): the EMA runs
  before the loss (`before_loss`), which reads the teacher from `state.extras['teacher']` and
  returns the teacher's new BN statistics as `aux['teacher_stats']` and the embeddings to
  enqueue as `aux['keys']`."""

  def before_loss(self, state: TrainState) -> TrainState:
    return ema_teacher(state, self.section.momentum)

  def after_update(self, old_state: TrainState, new_state: TrainState,
                   aux: dict[str, Any]) -> TrainState:
    del old_state
    return update_teacher_and_queue(new_state, aux["teacher_stats"], aux["keys"],
                                    str(self.config.train.bn))


def momentum_extras(encoder: dict[str, Any], queue: jax.Array) -> dict[str, Any]:
  """`extras` of a momentum method: the teacher as an exact copy of the encoder (a copy, not
  an alias: donation frees buffers), the queue and its pointer."""
  return {"teacher": _copy_tree(encoder), "queue": queue, "queue_ptr": jnp.zeros((), jnp.int32)}


@jax.jit
def _copy_tree(tree: Any) -> Any:
  """A copy of every leaf in one program (eager copies compile one program per leaf shape)."""
  return jax.tree.map(jnp.copy, tree)
