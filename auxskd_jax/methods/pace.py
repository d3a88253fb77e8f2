"""VideoPace: pace prediction (Wang et al., ECCV 2020; SPEC section 5).

A whole clip is sampled at pace r in 1..R (stride r; recipe `pace`), and one linear head on
the pooled features (`linear`, R classes) predicts r - 1 with cross-entropy. The encoder starts
from an auxSKD student encoder (`train.init_from`, as VSPP: "auxSKD + VideoPace") or from
scratch.
"""

from __future__ import annotations

import ml_collections

from auxskd_jax.config import require
from auxskd_jax.methods import base
from auxskd_jax.train import encoder as encoder_lib


# (mean cross-entropy, accuracy) of pace logits `[B, R]` against 0-based paces `[B]`.


class VideoPace(base.Method):
  """The VideoPace method (see `methods/base.py`)."""
  recipe = "pace"
  name = "VideoPace"

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.model = encoder_lib.build_encoder(config, num_classes=config.clip.max_speed,
                                           bn_axis_name=encoder_lib.student_bn_axis(config))


  def loss(self, params, state, clips, labels, keys):
    logits, stats = encoder_lib.apply_train(self.model, params["encoder"],
                                            state.batch_stats["encoder"], clips[:, 0])
    loss, accuracy = encoder_lib.classification_loss(logits, labels["pace"])
    return loss, {"batch_stats": {"encoder": stats}, "metrics": {"accuracy": accuracy}}

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    require(config.clip.max_speed >= 2, "clip.max_speed",
            "VideoPace predicts the pace: use at least 2 paces (4 in the paper).")
