"""VCOP: video clip order prediction (Xu et al., CVPR 2019; SPEC section 5).

n = 3 clips of L = 16 frames, 8-frame gaps between them, are shuffled (recipe `vcop`); the
shared encoder gives each clip's pooled features (`features_only`, 512 at width 64), and the
VCOPN head predicts which of the n! = 6 orders they came in, in the VCOP paper's order of
operations:

  for every pair i < j (itertools order): fc7(concat(f_i, f_j)) -> ReLU     (512*2 -> 512)
  concat the n(n-1)/2 pair outputs -> dropout(0.5) -> fc8 -> n! logits

The head lives beside the encoder (`params['vcop_head']`, modules `fc7`, `fc8` as the
reference's), so the encoder checkpoint stays loadable by every other method.

Choice where the VCOP code differs: the reference runs the encoder once per clip position
(BatchNorm statistics per position); here the n clips of a batch go through it as one batch of
B*n clips (one set of statistics, one running-average update a step). Positions hold shuffled
clips, so their statistics come from the same distribution.
"""

from __future__ import annotations

import itertools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from auxskd_jax import defaults, models
from auxskd_jax.config import require
from auxskd_jax.methods import base
from auxskd_jax.train import encoder as encoder_lib
from auxskd_jax.train.state import TrainState


def pairs(num_clips: int) -> list[tuple[int, int]]:
  """Clip pairs i < j in the order the head concatenates them."""
  return list(itertools.combinations(range(num_clips), 2))


class VCOPHead(nn.Module):
  """VCOPN's pairwise head: features `[B, n, D]` -> order logits `[B, n!]` (float32)."""
  num_clips: int = 3
  hidden: int = 512
  dropout: float = 0.5
  init_scheme: str = models.init.DEFAULT

  @nn.compact
  def __call__(self, features: jax.Array, train: bool) -> jax.Array:
    features = features.astype(jnp.float32)
    fc7 = models.init.Linear(self.hidden, init_scheme=self.init_scheme, name="fc7")
    pair_out = [nn.relu(fc7(jnp.concatenate([features[:, i], features[:, j]], -1)))
                for i, j in pairs(self.num_clips)]
    h = jnp.concatenate(pair_out, -1)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    num_orders = len(list(itertools.permutations(range(self.num_clips))))
    return models.init.Linear(num_orders, init_scheme=self.init_scheme, name="fc8")(h)


# (mean cross-entropy, accuracy) of order logits `[B, n!]` against order labels `[B]`.


class VCOP(base.Method):
  """The VCOP method (see `methods/base.py`)."""
  recipe = "vcop"
  name = "VCOP"

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    section = config.get("vcop", None) or defaults.vcop()
    self.model = encoder_lib.build_encoder(config,
                                           bn_axis_name=encoder_lib.student_bn_axis(config))
    self.head = VCOPHead(num_clips=config.clip.vcop_clips, hidden=section.hidden,
                         dropout=section.dropout, init_scheme=encoder_lib.init_scheme(config))

  def create_state(self, config: ml_collections.ConfigDict, rng: jax.Array,
                   tx: Any) -> TrainState:
    """A fresh head; the encoder from `config.train.init_from` when given."""
    k_enc, k_head = jax.random.split(rng)
    variables, self.init_report = encoder_lib.init_encoder(self.model, config, k_enc, self.name)
    dim = models.feature_dim(config.model.name, config.model.width)
    head = self.head.init(k_head, jnp.zeros((2, config.clip.vcop_clips, dim), jnp.float32),
                          train=False)
    return TrainState.create(
        params={"encoder": variables["params"], "vcop_head": head["params"]},
        batch_stats={"encoder": variables["batch_stats"]}, tx=tx)

  def logits(self, params: Any, batch_stats: Any, clips: jax.Array, *, train: bool,
             dropout_key: jax.Array | None = None) -> tuple[jax.Array, Any]:
    """Order logits `[B, n!]` of clips `[B, n, L, H, W, 3]`, and the encoder's new BN stats
    (the input ones when `train=False`)."""
    b, n = clips.shape[:2]
    flat = clips.reshape(b * n, *clips.shape[2:])
    if train:
      feats, stats = encoder_lib.apply_train(self.model, params["encoder"],
                                             batch_stats["encoder"], flat, features_only=True)
    else:
      stats = batch_stats["encoder"]
      feats = self.model.apply({"params": params["encoder"], "batch_stats": stats}, flat,
                               features_only=True)
    rngs = {"dropout": dropout_key} if train else {}
    out = self.head.apply({"params": params["vcop_head"]}, feats.reshape(b, n, -1),
                          train=train, rngs=rngs)
    return out, stats

  def loss(self, params, state, clips, labels, keys):
    logits, stats = self.logits(params, state.batch_stats, clips, train=True,
                                dropout_key=keys.method)
    loss, accuracy = encoder_lib.classification_loss(logits, labels["order"])
    return loss, {"batch_stats": {"encoder": stats}, "metrics": {"accuracy": accuracy}}

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    if "vcop" in config:
      require(config.vcop.hidden > 0, "vcop.hidden", "must be positive (512 in the paper).")
      require(0.0 <= config.vcop.dropout < 1.0, "vcop.dropout", "is a rate in [0, 1) (0.5).")
