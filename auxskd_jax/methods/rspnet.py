"""RSPNet: relative speed perception + appearance-focused video instance discrimination
(Chen et al., AAAI 2021; SPEC section 5), in the paper's formulation, compactly.

Clips (`ops.make_clips('rspnet', ...)`): per video a query c_q at speed s_a, a key c_k from
another start at the same speed, and c_o, the key's window at another speed s_b != s_a. The
encoder (with two linear heads on its pooled features, `linear_appearance` g_a and
`linear_speed` g_m, outputs L2-normalised) is trained; a momentum copy of it (EMA, as MoCo)
embeds the keys, and a queue holds past keys as negatives.

  RSP (relative speed perception), a margin ranking on speed similarities: the pair at the
  same speed must be more similar than the pair at different speeds,
    p+ = g_m(c_q).g_m'(c_k) / T,  p- = g_m(c_q).g_m'(c_o) / T,
    L_rsp = mean max(0, margin - (p+ - p-))
  A-VID (appearance-focused instance discrimination): both keys are positives whatever their
  speed, the queue Q holds the negatives,
    L_avid = CE([g_a(c_q).g_a'(c_k), g_a(c_q) Q^T] / T, 0) + CE([g_a(c_q).g_a'(c_o), ...] / T, 0)
  loss = weight_avid * L_avid + weight_rsp * L_rsp; then g_a'(c_o) of the global batch is
  enqueued (as the reference).

Settings follow the RSPNet reference (T 0.07, margin 2.0 on the T-scaled similarities,
queue 16384 initialised with unit-norm keys, EMA 0.999 run right before the key encoder's
forward with the encoder before this step's update, 128-d heads, speeds 1x and 2x).
Simplifications: speeds are drawn per example (the reference splits each batch in halves),
from 1..`clip.max_speed`; the momentum encoder's BN follows auxSKD's `teacher_bn` choices
(shuffled across devices by default, as the reference). The EMA, queue and shuffled-BN
helpers are `methods/momentum.py`'s.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from auxskd_jax.config import require
from auxskd_jax.methods import base, momentum
from auxskd_jax.methods.momentum import normalize
from auxskd_jax.train import encoder as encoder_lib
from auxskd_jax.train.state import TrainState

HEADS = ("linear_appearance", "linear_speed")


def rsp_loss(q_m: jax.Array, k_m: jax.Array, o_m: jax.Array, temperature: float,
             margin: float) -> tuple[jax.Array, jax.Array]:
  """(mean margin ranking loss, accuracy p+ > p-) of normalised speed embeddings `[B, D]`."""
  pos = jnp.sum(q_m * k_m, -1) / temperature
  neg = jnp.sum(q_m * o_m, -1) / temperature
  loss = jnp.mean(jnp.maximum(0.0, margin - (pos - neg)))
  return loss, jnp.mean((pos > neg).astype(jnp.float32))


def avid_loss(q_a: jax.Array, k_a: jax.Array, o_a: jax.Array, queue: jax.Array,
              temperature: float) -> tuple[jax.Array, jax.Array]:
  """(CE with the same-speed key + CE with the other-speed key, top-1 accuracy of the first)
  of normalised appearance embeddings `[B, D]` against the queue `[K, D]`."""
  negatives = q_a @ queue.T / temperature

  def logits(positive: jax.Array) -> jax.Array:
    return jnp.concatenate([jnp.sum(q_a * positive, -1, keepdims=True) / temperature,
                            negatives], -1)

  same, other = logits(k_a), logits(o_a)
  loss = (jnp.mean(-jax.nn.log_softmax(same, -1)[:, 0]) +
          jnp.mean(-jax.nn.log_softmax(other, -1)[:, 0]))
  return loss, jnp.mean((jnp.argmax(same, -1) == 0).astype(jnp.float32))


def _embed(out: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(appearance, speed) embeddings, L2-normalised."""
  return normalize(out[HEADS[0]]), normalize(out[HEADS[1]])


class RSPNet(momentum.MomentumTeacher, base.Method):
  """The RSPNet method (see `methods/base.py`)."""
  recipe = "rspnet"
  name = "RSPNet"

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.section = config.rspnet
    heads = {name: self.section.embed_dim for name in HEADS}
    self.model = encoder_lib.build_encoder(config, heads=heads,
                                           bn_axis_name=encoder_lib.student_bn_axis(config))
    self.teacher = encoder_lib.build_encoder(
        config, heads=heads, bn_axis_name=momentum.teacher_bn_axis(self.section.teacher_bn))

  def create_state(self, config: ml_collections.ConfigDict, rng: jax.Array,
                   tx: Any) -> TrainState:
    """Encoder (from `train.init_from` when set), its momentum copy, a random
    normalised queue."""
    k_enc, k_queue = jax.random.split(rng)
    enc, self.init_report = encoder_lib.init_encoder(self.model, config, k_enc, self.name)
    queue = momentum.random_queue(k_queue, self.section.queue_size, self.section.embed_dim)
    logging.info("RSPNet: encoder %s (%d params), queue %s", config.model.name,
                 sum(int(np.prod(p.shape)) for p in jax.tree.leaves(enc["params"])), queue.shape)
    return TrainState.create(
        params={"encoder": enc["params"]}, batch_stats={"encoder": enc["batch_stats"]}, tx=tx,
        extras=momentum.momentum_extras(enc, queue))

  def _keys(self, teacher: dict[str, Any], x: jax.Array,
            shared_key: jax.Array) -> tuple[tuple[jax.Array, jax.Array], Any]:
    """Momentum-encoder embeddings (appearance, speed) of `x`, and its new BN statistics."""
    out, stats = momentum.teacher_forward(self.teacher, teacher, x, self.section.teacher_bn,
                                          shared_key)
    a, m = _embed(out)
    return (jax.lax.stop_gradient(a), jax.lax.stop_gradient(m)), stats

  def loss(self, params, state, clips, labels, keys):
    s = self.section
    x_q, x_k, x_o = clips[:, 0], clips[:, 1], clips[:, 2]
    # The other-speed key first, then the key, as the reference's forwards (BN statistics);
    # each forward shuffles with its own shared key.
    k_other, k_same = jax.random.split(keys.shared)
    teacher = state.extras["teacher"]
    (o_a, o_m), stats_o = self._keys(teacher, x_o, k_other)
    (k_a, k_m), teacher_stats = self._keys(
        {"params": teacher["params"], "batch_stats": stats_o}, x_k, k_same)
    out, stats = encoder_lib.apply_train(self.model, params["encoder"],
                                         state.batch_stats["encoder"], x_q)
    q_a, q_m = _embed(out)
    l_avid, acc_avid = avid_loss(q_a, k_a, o_a, state.extras["queue"], s.temperature)
    l_rsp, acc_rsp = rsp_loss(q_m, k_m, o_m, s.temperature, s.margin)
    metrics = {"loss_avid": l_avid, "loss_rsp": l_rsp, "accuracy_avid": acc_avid,
               "accuracy_rsp": acc_rsp}
    return s.weight_avid * l_avid + s.weight_rsp * l_rsp, {
        "batch_stats": {"encoder": stats}, "metrics": metrics,
        "teacher_stats": teacher_stats, "keys": o_a}

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    require("rspnet" in config, "rspnet",
            "an RSPNet config needs an `rspnet` section (see configs/rspnet_r21d_k100.py).")
    s = config.rspnet
    require(s.embed_dim > 0, "rspnet.embed_dim", "must be positive (128 in the paper).")
    require(s.queue_size > 0, "rspnet.queue_size", "must be positive (16384 in the paper).")
    require(0.0 <= s.momentum < 1.0, "rspnet.momentum", "is the key encoder's EMA in [0, 1).")
    require(s.temperature > 0, "rspnet.temperature", "must be positive (0.07).")
    require(s.margin >= 0, "rspnet.margin", "must be 0 or more (2.0 on similarities / T).")
    require(s.weight_avid >= 0 and s.weight_rsp >= 0 and s.weight_avid + s.weight_rsp > 0,
            "rspnet.weight_avid", "loss weights must be >= 0 and not both 0 (1.0 and 1.0).")
    require(s.teacher_bn in momentum.TEACHER_BN, "rspnet.teacher_bn",
            f"use one of {momentum.TEACHER_BN}.")
