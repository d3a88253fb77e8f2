"""RSPNet: relative speed perception + appearance-focused video instance discrimination
(Chen et al., AAAI 2021; SPEC section 5), in the paper's formulation, compactly.

Clips (`ops.make_clips('rspnet', ...)`): per video a query c_q at speed s_a, a key c_k from
another start at the same speed, and c_o, the key's window at another speed s_b != s_a. The
encoder (backbone + two linear heads on the pooled features, `linear_appearance` g_a and
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
queue 16384, EMA 0.999, 128-d heads, speeds 1x and 2x). Simplifications: speeds are drawn per
example (the reference splits each batch in halves), from 1..`clip.max_speed`; the EMA is
applied after the optimizer step with the new weights, which is the reference's
before-the-forward update one step later, the same sequence of teacher weights; the momentum
encoder's BN follows auxSKD's `teacher_bn` choices (shuffled across devices by default, as the
reference). The EMA, queue and shuffled-BN helpers are `methods.auxskd`'s.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from auxskd_jax import ops
from auxskd_jax.config import require
from auxskd_jax.methods import auxskd as auxskd_lib
from auxskd_jax.train import encoder as encoder_lib
from auxskd_jax.train.state import TrainState

AXIS = "batch"
HEADS = ("linear_appearance", "linear_speed")


def config_section() -> ml_collections.ConfigDict:
  """`config.rspnet` defaults: the RSPNet reference's values."""
  c = ml_collections.ConfigDict()
  c.embed_dim = 128
  c.queue_size = 16384
  c.momentum = 0.999
  c.temperature = 0.07
  c.margin = 2.0  # on similarities divided by the temperature, as the reference
  c.weight_avid = 1.0
  c.weight_rsp = 1.0
  c.teacher_bn = "shuffle"  # momentum encoder's BN: 'shuffle', 'sync' or 'local'
  return c


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
  return auxskd_lib.normalize(out[HEADS[0]]), auxskd_lib.normalize(out[HEADS[1]])


def _pmean_tree(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.lax.pmean(x, AXIS), tree)


class RSPNet:
  """The RSPNet method for `train.loop.fit` (see docs/DESIGN.md, "The loop's contract")."""
  task = "rspnet"

  def __init__(self, config: ml_collections.ConfigDict,
               make_clips: Callable[..., tuple[jax.Array, dict]] | None = None):
    """`make_clips` defaults to `ops.make_clips`; tests pass a deterministic one."""
    self.config = config
    self.section = config.rspnet
    make_clips = make_clips or ops.make_clips
    self.make_clips = make_clips
    heads = {name: self.section.embed_dim for name in HEADS}
    self.model = encoder_lib.build_encoder(config, heads=heads,
                                           bn_axis_name=encoder_lib.student_bn_axis(config))
    teacher_axis = AXIS if self.section.teacher_bn == "sync" else None
    self.teacher = encoder_lib.build_encoder(config, heads=heads, bn_axis_name=teacher_axis)
    self.schedule: Callable[[Any], Any] | None = None
    self.init_report = None

  def init_state(self, config: ml_collections.ConfigDict, rng: jax.Array,
                 steps_per_epoch: int, total_steps: int | None = None) -> TrainState:
    """Encoder (backbone from `train.init_from` when set), its momentum copy, a random
    normalised queue."""
    from auxskd_jax.train import optim

    total_steps = total_steps or steps_per_epoch * config.train.num_epochs
    k_enc, k_queue = jax.random.split(rng)
    enc, self.init_report = encoder_lib.init_encoder(self.model, config, k_enc, "RSPNet")
    queue = auxskd_lib.normalize(jax.random.normal(
        k_queue, (self.section.queue_size, self.section.embed_dim), jnp.float32))
    tx, self.schedule = optim.make_optimizer(config, steps_per_epoch, total_steps)
    teacher = jax.tree.map(jnp.array, enc)  # a copy, not an alias: donation frees buffers
    logging.info("RSPNet: encoder %s (%d params), queue %s", config.model.name,
                 sum(int(np.prod(p.shape)) for p in jax.tree.leaves(enc["params"])), queue.shape)
    return TrainState.create(
        params={"encoder": enc["params"]}, batch_stats={"encoder": enc["batch_stats"]}, tx=tx,
        extras={"teacher": teacher, "queue": queue, "queue_ptr": jnp.zeros((), jnp.int32)})

  def _keys(self, teacher: dict[str, Any], x: jax.Array,
            shuffle_key: jax.Array) -> tuple[tuple[jax.Array, jax.Array], Any]:
    """Momentum-encoder embeddings (appearance, speed) of `x`, and its new BN statistics."""
    def apply(v: jax.Array) -> tuple[jax.Array, Any]:
      out, updates = self.teacher.apply(teacher, v, train=True, mutable=["batch_stats"])
      return jnp.concatenate([out[HEADS[0]], out[HEADS[1]]], -1), updates["batch_stats"]

    if self.section.teacher_bn == "shuffle":
      both, stats = auxskd_lib.shuffled_apply(apply, x, shuffle_key)
    else:
      both, stats = apply(x)
    d = self.section.embed_dim
    a, m = both[:, :d], both[:, d:]
    return (jax.lax.stop_gradient(auxskd_lib.normalize(a)),
            jax.lax.stop_gradient(auxskd_lib.normalize(m))), stats

  def train_step(self, state: TrainState, batch: dict[str, jax.Array],
                 key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """One pmapped step (axis 'batch'); `key` is the run's base key, same on every device."""
    s = self.section
    step_key = jax.random.fold_in(key, state.step)
    device_key = jax.random.fold_in(step_key, jax.lax.axis_index(AXIS))
    clips, _ = self.make_clips("rspnet", device_key, batch, self.config, train=True)
    x_q, x_k, x_o = clips[:, 0], clips[:, 1], clips[:, 2]
    # The other-speed key first, then the key, as the reference's forwards (BN statistics).
    teacher = state.extras["teacher"]
    (o_a, o_m), stats_o = self._keys(teacher, x_o, jax.random.fold_in(step_key, 1))
    (k_a, k_m), teacher_stats = self._keys({"params": teacher["params"], "batch_stats": stats_o},
                                           x_k, jax.random.fold_in(step_key, 2))
    queue = state.extras["queue"]

    def loss_fn(params: Any) -> tuple[jax.Array, Any]:
      out, updates = self.model.apply(
          {"params": params["encoder"], "batch_stats": state.batch_stats["encoder"]}, x_q,
          train=True, mutable=["batch_stats"])
      q_a, q_m = _embed(out)
      l_avid, acc_avid = avid_loss(q_a, k_a, o_a, queue, s.temperature)
      l_rsp, acc_rsp = rsp_loss(q_m, k_m, o_m, s.temperature, s.margin)
      loss = s.weight_avid * l_avid + s.weight_rsp * l_rsp
      return loss, (updates["batch_stats"], l_avid, l_rsp, acc_avid, acc_rsp)

    (loss, (stats, l_avid, l_rsp, acc_avid, acc_rsp)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    new_state = state.apply_mean_gradients(grads, {"encoder": stats}, AXIS)
    teacher = {"params": auxskd_lib.ema(teacher["params"], new_state.params["encoder"],
                                        s.momentum),
               "batch_stats": _pmean_tree(teacher_stats)}
    queue, ptr = auxskd_lib.enqueue(queue, state.extras["queue_ptr"],
                                    jax.lax.all_gather(o_a, AXIS, tiled=True))
    new_state = new_state.replace(extras={"teacher": teacher, "queue": queue, "queue_ptr": ptr})
    metrics = jax.lax.pmean({"loss": loss, "loss_avid": l_avid, "loss_rsp": l_rsp,
                             "accuracy_avid": acc_avid, "accuracy_rsp": acc_rsp}, AXIS)
    if self.schedule is not None:
      metrics["learning_rate"] = jnp.asarray(self.schedule(state.step), jnp.float32)
    return new_state, metrics


def validate(config: ml_collections.ConfigDict) -> None:
  """RSPNet-specific checks (the shared ones run in `config.validate`)."""
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
  require(s.teacher_bn in auxskd_lib.TEACHER_BN, "rspnet.teacher_bn",
          f"use one of {auxskd_lib.TEACHER_BN}.")
  from auxskd_jax.train import loop

  ops.validate("rspnet", config)
  loop.validate(config)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The `rspnet` task: pretrain (from `train.init_from` if set), checkpointing to `workdir`."""
  from auxskd_jax.train import loop

  validate(config)
  state = loop.fit(RSPNet(config), config, workdir)
  return {"workdir": workdir, "step": int(state.step)}
