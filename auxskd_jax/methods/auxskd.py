"""auxSKD: similarity-based knowledge distillation from an EMA teacher (SPEC section 3).

The student (encoder f_q with a 128-d head, then predictor g) matches the teacher's
similarity distribution over a queue of past teacher embeddings:
  q = normalize(g(f_q(x_q))), k = normalize(f_k(x_k)), s_q = q Q^T / 0.1, s_k = k Q^T / 0.02,
  loss = KL(softmax(s_k) || softmax(s_q)), then the global batch of k is enqueued.

Choices where the SPEC is silent: the EMA update runs after the optimizer step,
theta_k <- m theta_k + (1 - m) theta_q(new) (so one step moves the teacher by (1 - m) of the
difference); batch statistics of per-device BN are averaged over devices after each step so
replicas stay identical and a checkpoint of replica 0 is the whole state.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from auxskd_jax import ops
from auxskd_jax.config import require
from auxskd_jax.train import encoder as encoder_lib
from auxskd_jax.train.state import TrainState

AXIS = "batch"
TEACHER_BN = ("shuffle", "sync", "local")


def config_section() -> ml_collections.ConfigDict:
  """`config.auxskd` defaults: the reference's values."""
  c = ml_collections.ConfigDict()
  c.queue_size = 15360  # K
  c.momentum = 0.999  # EMA of the teacher
  c.student_temp = 0.1
  c.teacher_temp = 0.02
  # Teacher BN: 'shuffle' (reference: shuffled across devices), 'sync' or 'local'.
  c.teacher_bn = "shuffle"
  return c


class Predictor(nn.Module):
  """The student's predictor g: Linear(D->hidden), BN, ReLU, Linear(hidden->D)."""
  hidden: int = 1024
  features: int = 128
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Dense(self.hidden, name="linear1")(x.astype(jnp.float32))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     axis_name=self.bn_axis_name if train else None, name="bn")(x)
    x = nn.relu(x)
    return nn.Dense(self.features, name="linear2")(x)


def normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """L2 normalisation along the last axis, as torch.nn.functional.normalize."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def distillation_loss(s_q: jax.Array, s_k: jax.Array) -> jax.Array:
  """KL(softmax(s_k) || softmax(s_q)) per example ([B]); s_k carries no gradient."""
  log_p_k = jax.nn.log_softmax(s_k, axis=-1)
  log_p_q = jax.nn.log_softmax(s_q, axis=-1)
  return jnp.sum(jnp.exp(log_p_k) * (log_p_k - log_p_q), axis=-1)


def entropy(logits: jax.Array) -> jax.Array:
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


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
  so each device gets back the outputs of its own examples."""
  n = x.shape[0]
  everything = jax.lax.all_gather(x, axis_name, tiled=True)
  perm = jax.random.permutation(key, everything.shape[0])
  i = jax.lax.axis_index(axis_name)
  mine = jax.lax.dynamic_slice_in_dim(everything[perm], i * n, n)
  out, extra = apply(mine)
  outs = jax.lax.all_gather(out, axis_name, tiled=True)
  unpermuted = jnp.zeros_like(outs).at[perm].set(outs)
  return jax.lax.dynamic_slice_in_dim(unpermuted, i * n, n), extra


def _pmean_tree(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.lax.pmean(x, AXIS), tree)


class AuxSKD:
  """The auxSKD method for `train.loop.fit` (see docs/DESIGN.md, "The loop's contract")."""
  task = "auxskd"

  def __init__(self, config: ml_collections.ConfigDict,
               make_clips: Callable[..., tuple[jax.Array, dict]] | None = None):
    """`make_clips` defaults to `ops.make_clips`; tests pass a deterministic one."""
    self.config = config
    self.section = config.auxskd
    make_clips = make_clips or ops.make_clips
    self.make_clips = make_clips
    embed = config.model.embed_dim
    self.student = encoder_lib.build_encoder(
        config, num_classes=embed, bn_axis_name=encoder_lib.student_bn_axis(config))
    teacher_axis = AXIS if self.section.teacher_bn == "sync" else None
    self.teacher = encoder_lib.build_encoder(config, num_classes=embed,
                                             bn_axis_name=teacher_axis)
    self.predictor = Predictor(hidden=config.model.predictor_hidden, features=embed,
                               bn_axis_name=encoder_lib.student_bn_axis(config))
    self.schedule: Callable[[Any], Any] | None = None

  def init_state(self, config: ml_collections.ConfigDict, rng: jax.Array,
                 steps_per_epoch: int, total_steps: int | None = None) -> TrainState:
    """Student from `rng`, teacher an exact copy, queue random-normal then normalised."""
    from auxskd_jax.train import optim

    total_steps = total_steps or steps_per_epoch * config.train.num_epochs
    k_enc, k_pred, k_queue = jax.random.split(rng, 3)
    enc = encoder_lib.init_variables(self.student, k_enc, encoder_lib.dummy_clip(config))
    pred = encoder_lib.init_variables(
        self.predictor, k_pred, jnp.zeros((2, config.model.embed_dim), jnp.float32))
    queue = normalize(jax.random.normal(
        k_queue, (self.section.queue_size, config.model.embed_dim), jnp.float32))
    tx, self.schedule = optim.make_optimizer(config, steps_per_epoch, total_steps)
    teacher = jax.tree.map(jnp.array, enc)  # a copy, not an alias: donation frees buffers
    logging.info("auxSKD: student %s (%d params), queue %s", config.model.name,
                 sum(int(np.prod(p.shape)) for p in jax.tree.leaves(enc["params"])),
                 queue.shape)
    return TrainState.create(
        params={"encoder": enc["params"], "predictor": pred["params"]},
        batch_stats={"encoder": enc["batch_stats"], "predictor": pred["batch_stats"]},
        tx=tx,
        extras={"teacher": teacher, "queue": queue, "queue_ptr": jnp.zeros((), jnp.int32)})

  def _teacher_embed(self, teacher: dict[str, Any], x_k: jax.Array,
                     shuffle_key: jax.Array) -> tuple[jax.Array, Any]:
    def apply(x: jax.Array) -> tuple[jax.Array, Any]:
      out, updates = self.teacher.apply(teacher, x, train=True, mutable=["batch_stats"])
      return out, updates["batch_stats"]

    if self.section.teacher_bn == "shuffle":
      k, stats = shuffled_apply(apply, x_k, shuffle_key)
    else:
      k, stats = apply(x_k)
    return jax.lax.stop_gradient(normalize(k)), stats

  def train_step(self, state: TrainState, batch: dict[str, jax.Array],
                 key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """One pmapped step (axis 'batch'); `key` is the run's base key, same on every device."""
    s = self.section
    step_key = jax.random.fold_in(key, state.step)
    device_key = jax.random.fold_in(step_key, jax.lax.axis_index(AXIS))
    clips, _ = self.make_clips("auxskd", device_key, batch, self.config, train=True)
    x_q, x_k = clips[:, 0], clips[:, 1]
    k, teacher_stats = self._teacher_embed(state.extras["teacher"], x_k,
                                           jax.random.fold_in(step_key, 1))
    queue = state.extras["queue"]
    s_k = k @ queue.T / s.teacher_temp

    def loss_fn(params: Any) -> tuple[jax.Array, Any]:
      z, enc_up = self.student.apply(
          {"params": params["encoder"], "batch_stats": state.batch_stats["encoder"]}, x_q,
          train=True, mutable=["batch_stats"])
      p, pred_up = self.predictor.apply(
          {"params": params["predictor"], "batch_stats": state.batch_stats["predictor"]}, z,
          train=True, mutable=["batch_stats"])
      s_q = normalize(p) @ queue.T / s.student_temp
      loss = jnp.mean(distillation_loss(s_q, s_k))
      stats = {"encoder": enc_up["batch_stats"], "predictor": pred_up["batch_stats"]}
      return loss, (stats, s_q)

    (loss, (stats, s_q)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_mean_gradients(grads, stats, AXIS)
    teacher = {"params": ema(state.extras["teacher"]["params"], new_state.params["encoder"],
                             s.momentum),
               "batch_stats": _pmean_tree(teacher_stats)}
    queue, ptr = enqueue(queue, state.extras["queue_ptr"],
                         jax.lax.all_gather(k, AXIS, tiled=True))
    new_state = new_state.replace(extras={"teacher": teacher, "queue": queue, "queue_ptr": ptr})
    metrics = {
        "loss": loss,
        "teacher_entropy": jnp.mean(entropy(s_k)),
        "student_entropy": jnp.mean(entropy(s_q)),
        "agreement": jnp.mean((jnp.argmax(s_q, -1) == jnp.argmax(s_k, -1)).astype(jnp.float32)),
    }
    metrics = jax.lax.pmean(metrics, AXIS)
    if self.schedule is not None:
      metrics["learning_rate"] = jnp.asarray(self.schedule(state.step), jnp.float32)
    return new_state, metrics


def validate(config: ml_collections.ConfigDict) -> None:
  """auxSKD-specific checks (the shared ones run in `config.validate`)."""
  require("auxskd" in config, "auxskd",
          "an auxSKD config needs an `auxskd` section (see configs/auxskd_r21d_k100.py).")
  s = config.auxskd
  require(s.queue_size > 0, "auxskd.queue_size", "must be positive (15360 in the paper).")
  require(0.0 <= s.momentum < 1.0, "auxskd.momentum", "is the teacher's EMA in [0, 1).")
  require(s.student_temp > 0, "auxskd.student_temp", "must be positive (0.1).")
  require(s.teacher_temp > 0, "auxskd.teacher_temp", "must be positive (0.02).")
  require(s.teacher_bn in TEACHER_BN, "auxskd.teacher_bn", f"use one of {TEACHER_BN}.")
  require(config.clip.max_speed >= 2 and config.clip.num_segments >= 2, "clip.max_speed",
          "auxSKD's two clips must differ in speed and segment: max_speed and num_segments "
          "both need to be at least 2.")
  from auxskd_jax.train import loop

  ops.validate("auxskd", config)
  loop.validate(config)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The `auxskd` task: pretrain, checkpointing to `workdir` (resumes if it has checkpoints)."""
  from auxskd_jax.train import loop

  validate(config)
  state = loop.fit(AuxSKD(config), config, workdir)
  return {"workdir": workdir, "step": int(state.step)}
