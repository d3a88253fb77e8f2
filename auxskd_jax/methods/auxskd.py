"""auxSKD: similarity-based knowledge distillation from an EMA teacher (SPEC section 3).

The student (encoder f_q with a 128-d head, then predictor g) matches the teacher's
similarity distribution over a queue of past teacher embeddings:
  q = normalize(g(f_q(x_q))), k = normalize(f_k(x_k)), s_q = q Q^T / 0.1, s_k = k Q^T / 0.02,
  loss = KL(softmax(s_k) || softmax(s_q)), then the global batch of k is enqueued.
The teacher, queue and EMA are `methods/momentum.py`'s: the EMA runs before the teacher's
forward, with the student before this step's update, as the authors' `train.py`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from auxskd_jax import models, weights
from auxskd_jax.config import require
from auxskd_jax.methods import base, momentum
from auxskd_jax.methods.momentum import normalize
from auxskd_jax.train import encoder as encoder_lib
from auxskd_jax.train.state import TrainState

TEACHER_BN = momentum.TEACHER_BN


class Predictor(nn.Module):
  """The student's predictor g: Linear(D->hidden), BN, ReLU, Linear(hidden->D)."""
  hidden: int = 1024
  features: int = 128
  bn_axis_name: str | None = None
  init_scheme: str = models.init.DEFAULT

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = models.init.Linear(self.hidden, init_scheme=self.init_scheme,
                           name="linear1")(x.astype(jnp.float32))
    x = models.norm.BatchNorm(use_running_average=not train,
                              axis_name=self.bn_axis_name if train else None, name="bn")(x)
    x = nn.relu(x)
    return models.init.Linear(self.features, init_scheme=self.init_scheme, name="linear2")(x)


def distillation_loss(s_q: jax.Array, s_k: jax.Array) -> jax.Array:
  """KL(softmax(s_k) || softmax(s_q)) per example ([B]); s_k carries no gradient."""
  log_p_k = jax.nn.log_softmax(s_k, axis=-1)
  log_p_q = jax.nn.log_softmax(s_q, axis=-1)
  return jnp.sum(jnp.exp(log_p_k) * (log_p_k - log_p_q), axis=-1)


def entropy(logits: jax.Array) -> jax.Array:
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


class AuxSKD(momentum.MomentumTeacher, base.Method):
  """The auxSKD method (see `methods/base.py`)."""
  recipe = "auxskd"
  name = "auxSKD"

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.section = config.auxskd
    embed = config.model.embed_dim
    student_axis = encoder_lib.student_bn_axis(config)
    self.student = encoder_lib.build_encoder(config, num_classes=embed, bn_axis_name=student_axis)
    self.teacher = encoder_lib.build_encoder(
        config, num_classes=embed, bn_axis_name=momentum.teacher_bn_axis(self.section.teacher_bn))
    self.predictor = Predictor(hidden=config.model.predictor_hidden, features=embed,
                               bn_axis_name=student_axis,
                               init_scheme=encoder_lib.init_scheme(config))

  def create_state(self, config: ml_collections.ConfigDict, rng: jax.Array,
                   tx: Any) -> TrainState:
    """Student from `rng` (its encoder from `train.init_from` when that is one of our runs),
    teacher an exact copy, queue random-normal then normalised per column (as the authors); or, when `train.init_from` is
    the authors' auxSKD `.pth`, their whole distillation state, to continue their run."""
    if config.train.init_from.endswith(weights.TORCH_SUFFIXES):
      return self._continue_authors_run(config, tx)
    k_enc, k_pred, k_queue = jax.random.split(rng, 3)
    enc, self.init_report = encoder_lib.init_encoder(self.student, config, k_enc, self.name)
    pred = encoder_lib.init_variables(
        self.predictor, k_pred, jnp.zeros((2, config.model.embed_dim), jnp.float32))
    # The authors' initial queue: randn(K, 128) normalised along dim 0 (per column).
    queue = momentum.random_queue(k_queue, self.section.queue_size, config.model.embed_dim,
                                  axis=0)
    logging.info("auxSKD: student %s (%d params), queue %s", config.model.name,
                 sum(int(np.prod(p.shape)) for p in jax.tree.leaves(enc["params"])),
                 queue.shape)
    return TrainState.create(
        params={"encoder": enc["params"], "predictor": pred["params"]},
        batch_stats={"encoder": enc["batch_stats"], "predictor": pred["batch_stats"]},
        tx=tx, extras=momentum.momentum_extras(enc, queue))

  def _continue_authors_run(self, config: ml_collections.ConfigDict, tx: Any) -> TrainState:
    """Student, predictor, teacher, queue and pointer from the authors' checkpoint; the step
    is their finished epochs times this run's steps per epoch, and their SGD momentum buffers
    become the optimizer's trace (the data order starts afresh: their loader's state is not in
    the file)."""
    path = config.train.init_from
    st = weights.load_auxskd_torch_state(
        path, config.model.name, width=config.model.width,
        trust_pickle=weights.trust_pickle(config, "train.init_from"))
    size = int(st["queue"].shape[0])
    require(size == self.section.queue_size, "auxskd.queue_size",
            f"the checkpoint {path} holds a queue of {size} keys; set "
            f"--config.auxskd.queue_size={size} to continue it.")
    state = TrainState.create(
        params=st["params"], batch_stats=st["batch_stats"], tx=tx,
        extras={"teacher": st["teacher"], "queue": jnp.asarray(st["queue"], jnp.float32),
                "queue_ptr": jnp.asarray(st["queue_ptr"], jnp.int32)})
    step = int(st["epoch"] or 0) * int(self.steps_per_epoch or 0)
    opt_state = optax.tree_utils.tree_set(state.opt_state, count=jnp.asarray(step, jnp.int32))
    if st.get("momentum") is not None:
      opt_state = optax.tree_utils.tree_set(opt_state, trace=st["momentum"])
    logging.info("auxSKD: continuing the authors' run %s after epoch %s (step %d, queue "
                 "pointer %d).", path, st["epoch"], step, int(st["queue_ptr"]))
    state = state.replace(step=jnp.asarray(step, jnp.int32), opt_state=opt_state)
    return jax.device_put(state)  # (jnp.asarray per leaf would compile per shape)

  def loss(self, params, state, clips, labels, keys):
    s = self.section
    x_q, x_k = clips[:, 0], clips[:, 1]
    k, teacher_stats = momentum.teacher_forward(self.teacher, state.extras["teacher"], x_k,
                                                s.teacher_bn, keys.shared)
    k = jax.lax.stop_gradient(normalize(k))
    queue = state.extras["queue"]
    s_k = k @ queue.T / s.teacher_temp
    z, enc_stats = encoder_lib.apply_train(self.student, params["encoder"],
                                           state.batch_stats["encoder"], x_q)
    p, pred_stats = encoder_lib.apply_train(self.predictor, params["predictor"],
                                            state.batch_stats["predictor"], z)
    s_q = normalize(p) @ queue.T / s.student_temp
    loss = jnp.mean(distillation_loss(s_q, s_k))
    metrics = {
        "teacher_entropy": jnp.mean(entropy(s_k)),
        "student_entropy": jnp.mean(entropy(s_q)),
        "agreement": jnp.mean((jnp.argmax(s_q, -1) == jnp.argmax(s_k, -1)).astype(jnp.float32)),
    }
    return loss, {"batch_stats": {"encoder": enc_stats, "predictor": pred_stats},
                  "metrics": metrics, "teacher_stats": teacher_stats, "keys": k}

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    require("auxskd" in config, "auxskd",
            "an auxSKD config needs an `auxskd` section (see configs/auxskd_r21d_k100.py).")
    s = config.auxskd
    require(s.queue_size > 0, "auxskd.queue_size", "must be positive (15360 in the paper).")
    require(0.0 <= s.momentum < 1.0, "auxskd.momentum", "is the teacher's EMA in [0, 1).")
    require(s.student_temp > 0, "auxskd.student_temp", "must be positive (0.1).")
    require(s.teacher_temp > 0, "auxskd.teacher_temp", "must be positive (0.02).")
    require(s.teacher_bn in TEACHER_BN, "auxskd.teacher_bn", f"use one of {TEACHER_BN}.")
