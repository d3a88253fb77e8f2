"""VSPP: Video Segment Pace Prediction (SPEC section 4).

One clip per video plays at normal speed except one of S segments at speed r; two linear heads
on the pooled features predict the speed (`linear`, R classes) and the segment
(`linear_segment`, S classes); loss = CE(speed) + CE(segment). The encoder starts from an
auxSKD student encoder (`train.init_from`; every layer whose shape matches) or from scratch.
"""

from __future__ import annotations

import ml_collections

from auxskd_jax.config import require
from auxskd_jax.methods import base
from auxskd_jax.train import encoder as encoder_lib


class VSPP(base.Method):
  """The VSPP method (see `methods/base.py`)."""
  recipe = "vspp"
  name = "VSPP"

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.model = encoder_lib.build_encoder(
        config, heads={"linear": config.clip.max_speed,
                       "linear_segment": config.clip.num_segments},
        bn_axis_name=encoder_lib.student_bn_axis(config))


  def loss(self, params, state, clips, labels, keys):
    out, stats = encoder_lib.apply_train(self.model, params["encoder"],
                                         state.batch_stats["encoder"], clips[:, 0])
    ce_speed, acc_speed = encoder_lib.classification_loss(out["linear"], labels["speed"])
    ce_segment, acc_segment = encoder_lib.classification_loss(out["linear_segment"],
                                                              labels["segment"])
    metrics = {"loss_speed": ce_speed, "loss_segment": ce_segment,
               "accuracy_speed": acc_speed, "accuracy_segment": acc_segment}
    return ce_speed + ce_segment, {"batch_stats": {"encoder": stats}, "metrics": metrics}

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    require(config.clip.max_speed >= 2, "clip.max_speed",
            "VSPP predicts the speed: use at least 2 speeds (4 in the paper).")
    require(config.clip.num_segments >= 2, "clip.num_segments",
            "VSPP predicts the segment: use at least 2 segments (4 in the paper).")
