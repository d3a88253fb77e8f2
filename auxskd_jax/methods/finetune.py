"""Fine-tuning as a method (SPEC section 8): encoder + a new `linear` head for the dataset's
classes, cross-entropy (optionally label-smoothed) on augmented 16-frame clips (recipe `clip`).

The task that runs it - periodic validation, the final multi-clip test, reports - is
`auxskd_jax/tasks/finetune.py`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from auxskd_jax import weights
from auxskd_jax.methods import base
from auxskd_jax.train import encoder as encoder_lib
from auxskd_jax.train.state import TrainState


class Finetune(base.Method):
  """Supervised training of encoder + linear head (see `methods/base.py`)."""
  recipe = "clip"
  name = "finetune"

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
    super().__init__(config)
    self.num_classes = int(num_classes)
    self.smoothing = float(config.finetune.get("label_smoothing", 0.0))
    self.model = encoder_lib.build_encoder(config, num_classes=self.num_classes,
                                           bn_axis_name=encoder_lib.student_bn_axis(config))

  def initial_variables(self, config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
    """Random init, then the encoder from train.init_from (if set; every encoder layer must
    load), new head unless `finetune.keep_head`."""
    variables = encoder_lib.init_variables(self.model, rng, encoder_lib.dummy_clip(config, 1))
    path = config.train.init_from
    if path:
      heads = ("linear",) if config.finetune.keep_head else ()
      variables, self.init_report = weights.load_encoder(
          path, variables, model_name=config.model.name, strict=True, heads=heads,
          flag="train.init_from", trust_pickle=weights.trust_pickle(config, "train.init_from"))
    else:
      logging.info("finetune: --config.train.init_from is empty; training from scratch.")
    return variables

  def create_state(self, config: ml_collections.ConfigDict, rng: jax.Array,
                   tx: Any) -> TrainState:
    variables = self.initial_variables(config, rng)
    return TrainState.create(params={"encoder": variables["params"]},
                             batch_stats={"encoder": variables["batch_stats"]}, tx=tx)

  def loss(self, params, state, clips, labels, keys):
    y = labels["label"]
    weight = labels["mask"].astype(jnp.float32) if "mask" in labels else jnp.ones(y.shape)
    logits, stats = encoder_lib.apply_train(self.model, params["encoder"],
                                            state.batch_stats["encoder"], clips[:, 0])
    targets = optax.smooth_labels(jax.nn.one_hot(y, self.num_classes), self.smoothing)
    denominator = jnp.maximum(jnp.sum(weight), 1.0)
    loss = jnp.sum(optax.softmax_cross_entropy(logits, targets) * weight) / denominator
    correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    return loss, {"batch_stats": {"encoder": stats},
                  "metrics": {"accuracy": jnp.sum(correct * weight) / denominator}}
