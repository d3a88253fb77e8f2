"""Building, initialising and applying encoders the way every training method needs them."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from auxskd_jax import errors, models, weights
from auxskd_jax.models import layers
from auxskd_jax.train import devices
from auxskd_jax.train.state import TrainState

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_encoder(config: ml_collections.ConfigDict, *, num_classes: int | None = None,
                  heads: dict[str, int] | None = None,
                  bn_axis_name: str | None = None) -> nn.Module:
  """`models.build` with the config's encoder name, width and compute dtype; applies
  `model.conv_lowering` (see `models.layers.conv3d`) for the traces to come."""
  lowering = str(config.model.get("conv_lowering", "auto"))
  errors.require(lowering in layers.CONV_LOWERINGS, "model.conv_lowering",
                 f"{lowering!r} is not a lowering; choose one of {list(layers.CONV_LOWERINGS)}.")
  layers.set_conv_lowering(lowering)
  return models.build(config.model.name, num_classes=num_classes, heads=heads,
                      dtype=DTYPES[config.model.dtype], bn_axis_name=bn_axis_name,
                      width=config.model.width, init=init_scheme(config))


def init_scheme(config: ml_collections.ConfigDict) -> str:
  """`model.init`: 'torch' (PyTorch's defaults, as the authors) or 'kaiming'."""
  return str(config.model.get("init", models.init.DEFAULT))


def student_bn_axis(config: ml_collections.ConfigDict) -> str | None:
  """'sync' BN averages statistics over the pmap axis; 'local' and 'dataparallel' keep them per
  device (they differ in the running statistics kept, `train.step.reduce_running_stats`)."""
  return devices.AXIS if config.train.bn == "sync" else None


def dummy_clip(config: ml_collections.ConfigDict, batch: int = 2) -> jax.Array:
  c = config.clip
  return jnp.zeros((batch, c.clip_len, c.crop_size, c.crop_size, 3), jnp.float32)


def init_variables(module: nn.Module, rng: jax.Array, x: jax.Array) -> dict[str, Any]:
  """`{'params', 'batch_stats'}` of `module` (batch_stats empty if it has no BN)."""
  variables = jax.jit(lambda r, v: module.init(r, v, train=False))(rng, x)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def build_and_init(config: ml_collections.ConfigDict, *, num_classes: int | None = None,
                   bn_axis_name: str | None = None, seed: int | None = None,
                   random: bool = True) -> tuple[Any, dict]:
  """The configured encoder (with a `linear` head of `num_classes` if given) and its variables.

  `random=False` gives zeros of the right shapes from `jax.eval_shape`, without compiling the
  initialiser: enough when every layer is about to be loaded from a checkpoint.
  """
  model = build_encoder(config, num_classes=num_classes, bn_axis_name=bn_axis_name)
  x = dummy_clip(config, batch=1)
  if not random:
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    return model, {"params": zeros["params"], "batch_stats": zeros.get("batch_stats", {})}
  rng = jax.random.PRNGKey(int(config.seed if seed is None else seed))
  return model, init_variables(model, rng, x)


def apply_train(module: nn.Module, params: Any, batch_stats: Any, x: jax.Array,
                **kwargs: Any) -> tuple[Any, Any]:
  """A training-mode forward: (outputs, new BN statistics)."""
  out, updates = module.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                              mutable=["batch_stats"], **kwargs)
  return out, updates["batch_stats"]


def init_encoder(model: Any, config: ml_collections.ConfigDict, rng: jax.Array,
                 name: str) -> tuple[dict[str, Any], Any]:
  """Fresh variables of `model`, with the encoder from `config.train.init_from` when set.

  Returns (variables, load report or None). Shared by the pretext methods that start from an
  auxSKD student (VSPP, VideoPace, VCOP, RSPNet).
  """
  variables = init_variables(model, rng, dummy_clip(config))
  if not config.train.init_from:
    logging.info("%s: encoder %s from scratch.", name, config.model.name)
    return variables, None
  return weights.load_encoder(
      config.train.init_from, variables, model_name=config.model.name, strict=False,
      trust_pickle=weights.trust_pickle(config, "train.init_from"))


def encoder_state(model: nn.Module, config: ml_collections.ConfigDict, rng: jax.Array, tx: Any,
                  name: str) -> tuple[TrainState, Any]:
  """(TrainState, load report or None) for methods whose whole trainable state is the encoder
  with its heads (VSPP, VideoPace, fine-tuning)."""
  variables, report = init_encoder(model, config, rng, name)
  state = TrainState.create(params={"encoder": variables["params"]},
                            batch_stats={"encoder": variables["batch_stats"]}, tx=tx)
  return state, report


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Top-1 accuracy of logits `[B, C]` against integer labels `[B]`."""
  return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))


def classification_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean cross-entropy, top-1 accuracy) of logits `[B, C]` against integer labels `[B]`."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.mean(ce), accuracy(logits, labels)
