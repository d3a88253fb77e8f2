"""A linear classifier trained on fixed features, on device (the linear-probe protocol).

Features are standardised with the training set's mean and standard deviation (encoders'
pooled features have very different scales, and a probe should not depend on that), then a
single `Dense` layer is trained with AdamW on random minibatches inside one jitted
`lax.fori_loop`, so training thousands of steps costs one compilation.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from auxskd_jax.evaluate import features, multiclip


def _logits(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  z = (x - params["mean"]) / params["std"]
  return z @ params["w"] + params["b"]


def train_linear(features: np.ndarray, labels: np.ndarray, num_classes: int, *,
                 steps: int = 1000, learning_rate: float = 1e-3, weight_decay: float = 1e-4,
                 batch_size: int = 256, seed: int = 0) -> dict[str, Any]:
  """Trains softmax regression `features [N, D] -> labels [N]`; returns its parameters."""
  x = np.asarray(features, np.float32)
  y = np.asarray(labels, np.int32)
  if x.ndim != 2 or y.shape != (x.shape[0],):
    raise ValueError(f"train_linear: features must be [N, D] and labels [N]; got {x.shape} and "
                     f"{y.shape}.")
  if x.shape[0] == 0:
    raise ValueError("train_linear: no training examples.")
  if int(y.min()) < 0 or int(y.max()) >= num_classes:
    raise ValueError(f"train_linear: labels must lie in [0, {num_classes}); got "
                     f"{int(y.min())}..{int(y.max())}.")
  # The standardisation on the host, the training in one program: every array is an argument,
  # not a constant, so probes of equal shapes (every stage of a run) share one compilation.
  mean = x.mean(axis=0)
  std = np.maximum(x.std(axis=0), 1e-6)
  trained = _fit(x, y, mean, std, jax.random.PRNGKey(seed), num_classes=int(num_classes),
                 steps=int(steps), batch=min(int(batch_size), x.shape[0]),
                 learning_rate=float(learning_rate), weight_decay=float(weight_decay))
  return {"w": trained["w"], "b": trained["b"], "mean": jnp.asarray(mean),
          "std": jnp.asarray(std)}


@functools.partial(jax.jit, static_argnames=("num_classes", "steps", "batch", "learning_rate",
                                             "weight_decay"))
def _fit(x: jax.Array, y: jax.Array, mean: jax.Array, std: jax.Array, key: jax.Array, *,
         num_classes: int, steps: int, batch: int, learning_rate: float,
         weight_decay: float) -> dict[str, jax.Array]:
  """AdamW on minibatches drawn without replacement, from zero weights, in a `fori_loop`."""
  tx = optax.adamw(learning_rate, weight_decay=weight_decay)
  p = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}

  def loss_fn(p, xb, yb):
    logits = _logits(dict(p, mean=mean, std=std), xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def body(i, carry):
    p, opt_state = carry
    idx = jax.random.choice(jax.random.fold_in(key, i), x.shape[0], (batch,), replace=False)
    grads = jax.grad(loss_fn)(p, x[idx], y[idx])
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  p, _ = jax.lax.fori_loop(0, steps, body, (p, tx.init(p)))
  return p


def predict_logits(params: dict[str, Any], features: np.ndarray) -> np.ndarray:
  """Logits `[..., C]` of features `[..., D]` (any leading shape, e.g. `[N, E, D]`)."""
  return np.asarray(jax.device_get(jax.jit(_logits)(params, jnp.asarray(features, jnp.float32))))


def evaluate_probe(train: dict[str, np.ndarray], test: dict[str, np.ndarray], num_classes: int,
                   probe: ml_collections.ConfigDict, seed: int = 0) -> dict[str, float]:
  """Trains on `train` features (`[N, E, D]`) and scores `test`; the protocol's metrics."""
  kwargs = dict(steps=int(probe.steps), learning_rate=float(probe.learning_rate),
                weight_decay=float(probe.weight_decay), batch_size=int(probe.batch_size),
                seed=seed)
  if probe.per_clip:
    n, e, d = train["features"].shape
    params = train_linear(train["features"].reshape(n * e, d),
                                            np.repeat(train["labels"], e), num_classes, **kwargs)
    logits = predict_logits(params, test["features"])
    return multiclip.multiclip_accuracy(logits, test["labels"])
  params = train_linear(features.video_features(train), train["labels"],
                                          num_classes, **kwargs)
  logits = predict_logits(params, features.video_features(test))
  return multiclip.multiclip_accuracy(logits[:, None], test["labels"])
