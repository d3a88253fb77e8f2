"""Fine-tuning on action recognition (task `finetune`), SPEC section 8.

The backbone starts from `--config.train.init_from` (any of our checkpoints, a reference
PyTorch `.pth`, or '' for training from scratch) with a new `linear` head for the dataset's
classes, and is trained by the shared loop on augmented 16-frame clips (`ops` task `clip`) with
cross-entropy. Every `eval.every_epochs` epochs the loop runs the clip-level validation
(`evaluators.FinetuneValidation`, logged as `val/clip_top1`, `val/loss`); at the end the test
split is scored the standard way: E = 10 uniformly spaced centre clips per video, softmax
averaged per video (video top-1/top-5), plus clip-level top-1.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from auxskd_jax import data, ops
from auxskd_jax.config import require
from auxskd_jax.evaluate import backbone, evaluators, features, multiclip, report
from auxskd_jax.methods import finetune as finetune_method
from auxskd_jax.train import encoder as encoder_lib
from auxskd_jax.train import loop
from auxskd_jax.train.state import TrainState, device_key

AXIS = "batch"


def finetune_section() -> ml_collections.ConfigDict:
  """Defaults of `config.finetune`."""
  f = ml_collections.ConfigDict()
  f.keep_head = False  # True: also take the checkpoint's `linear` head when its shape fits
  f.validate = True  # clip-level validation every eval.every_epochs epochs
  f.val_split = ""  # '' = data.test_split (UCF101/HMDB51 have no separate validation split)
  f.val_clips = 1  # clips per video for the periodic validation (1 = the centre clip)
  f.label_smoothing = 0.0
  return f


class Finetune:
  """Supervised training of backbone + linear head, as a Method for `train.loop.fit`."""
  task = "clip"

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int, *,
               total_steps: int | None = None,
               make_clips: Callable[..., tuple[jax.Array, dict]] | None = None):
    """`total_steps` fixes the schedule's length when the loop is run in segments."""
    from auxskd_jax.train import encoder as encoder_lib

    make_clips = make_clips or ops.make_clips
    self.config = config
    self.num_classes = int(num_classes)
    self.total_steps = total_steps
    self.model = encoder_lib.build_encoder(config, num_classes=self.num_classes,
                                           bn_axis_name=encoder_lib.student_bn_axis(config))
    self.schedule: Callable[[Any], Any] | None = None
    self.init_report: Any = None
    self._initial: TrainState | None = None
    # A stable function object: the loop pmaps it afresh per fit() call, and jax's compilation
    # cache is keyed on the function, so segments after the first do not recompile.
    self.train_step = self._make_step(make_clips)

  def initial_variables(self, config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
    """Random init, then the backbone from train.init_from (if set), new head unless keep_head."""
    from auxskd_jax.train import encoder as encoder_lib

    variables = encoder_lib.init_variables(self.model, rng, encoder_lib.dummy_clip(config, 1))
    path = config.train.init_from
    if path:
      heads = ("linear",) if config.finetune.keep_head else ()
      variables, self.init_report = backbone.load_backbone(
          path, variables, key="train.init_from", model_name=config.model.name, heads=heads)
    else:
      logging.info("finetune: --config.train.init_from is empty; training from scratch.")
    return variables

  def init_state(self, config: ml_collections.ConfigDict, rng: jax.Array, steps_per_epoch: int,
                 total_steps: int | None = None) -> TrainState:
    from auxskd_jax.train import optim

    if self._initial is None:
      total = self.total_steps or total_steps or steps_per_epoch * config.train.num_epochs
      variables = self.initial_variables(config, rng)
      tx, self.schedule = optim.make_optimizer(config, steps_per_epoch, total)
      self._initial = TrainState.create(params={"encoder": variables["params"]},
                                        batch_stats={"encoder": variables["batch_stats"]}, tx=tx)
    return self._initial

  def _make_step(self, make_clips: Callable) -> Callable:
    model, config = self.model, self.config
    smoothing = float(config.finetune.get("label_smoothing", 0.0))
    num_classes = self.num_classes

    def train_step(state: TrainState, batch: dict[str, jax.Array],
                   key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
      """One pmapped step (axis 'batch'); `key` is the run's base key."""
      dkey = device_key(key, state.step, AXIS)
      clips, labels = make_clips("clip", dkey, batch, config, train=True)
      x, y = clips[:, 0], labels["label"]
      weight = batch["mask"].astype(jnp.float32) if "mask" in batch else jnp.ones(y.shape)
      targets = optax.smooth_labels(jax.nn.one_hot(y, num_classes), smoothing)

      def loss_fn(params: Any) -> tuple[jax.Array, Any]:
        logits, updates = model.apply(
            {"params": params["encoder"], "batch_stats": state.batch_stats["encoder"]}, x,
            train=True, mutable=["batch_stats"])
        ce = optax.softmax_cross_entropy(logits, targets)
        loss = jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1.0)
        return loss, (updates["batch_stats"], logits)

      (loss, (stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      new_state = state.apply_mean_gradients(grads, {"encoder": stats}, AXIS)
      correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
      metrics = {"loss": jax.lax.pmean(loss, AXIS),
                 "accuracy": jax.lax.pmean(jnp.sum(correct * weight) /
                                           jnp.maximum(jnp.sum(weight), 1.0), AXIS)}
      if self.schedule is not None:
        metrics["learning_rate"] = self.schedule(state.step)
      return new_state, metrics

    return train_step


def validate(config: ml_collections.ConfigDict) -> None:
  backbone.validate_data(config)
  require("finetune" in config, "finetune",
          "fine-tuning needs a finetune section (auxskd_jax.evaluate.finetune.finetune_section).")
  require(config.finetune.val_clips >= 1, "finetune.val_clips", "needs at least one clip.")
  require(0.0 <= config.finetune.label_smoothing < 1.0, "finetune.label_smoothing",
          "must lie in [0, 1).")
  require(config.eval.every_epochs > 0, "eval.every_epochs", "must be positive.")
  path = config.train.init_from
  require(not path or os.path.exists(path), "train.init_from",
          f"{path!r} does not exist; give a workdir / checkpoint dir / .pth, or '' to train from "
          "scratch.")
  evaluators.validate(config)
  loop.validate(config)


def evaluator_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """`config.evaluators` with the clip-level validation `val` added (finetune.validate) or
  removed."""
  names = [n for n in config.get("evaluators", ()) if n != "val"]
  return tuple(names + ["val"]) if config.finetune.validate else tuple(names)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Fine-tunes (the loop validates every eval.every_epochs epochs), then tests with E clips
  per video; writes results.json/.md and the training curves."""
  validate(config)
  train_src = data.open_split(config.data.data_dir, config.data.name, config.data.train_split)
  test_src = data.open_split(config.data.data_dir, config.data.name, config.data.test_split)
  num_classes = backbone.require_labels(train_src, f"{config.data.name}:{config.data.train_split}")
  backbone.require_labels(test_src, f"{config.data.name}:{config.data.test_split}")
  steps_per_epoch, total_steps = loop.schedule_lengths(config, len(train_src))
  method = finetune_method.Finetune(config, num_classes, total_steps=total_steps)
  # One extractor (one compiled forward) for the periodic validation and the final test.
  extract = features.Extractor(encoder_lib.build_encoder(config, num_classes=num_classes),
                               config, with_logits=True)
  evals = evaluators.build_evaluators(config, names=evaluator_names(config),
                                      num_classes=num_classes, steps_per_epoch=steps_per_epoch,
                                      extractor=extract)
  state = loop.fit(method, config, workdir, evaluators=evals)
  variables = {"params": state.params["encoder"], "batch_stats": state.batch_stats["encoder"]}
  test = extract(variables, test_src)
  metrics = multiclip.multiclip_accuracy(test["logits"], test["labels"], ks=(1, 5))
  record = report.make_record(
      config, task="finetune", metrics=metrics, checkpoint=config.train.init_from,
      extra={"num_test_videos": int(len(test["labels"])), "num_classes": num_classes,
             "clips_per_video": int(config.clip.eval_clips), "steps": int(total_steps)})
  if jax.process_index() == 0:
    report.write_results(workdir, record)
    report.plot_training_curves(os.path.join(workdir, "metrics.jsonl"),
                                os.path.join(workdir, "training_curves.png"))
  logging.info("finetune test: video top-1 %.2f%%, top-5 %.2f%%, clip top-1 %.2f%%",
               100 * metrics["video_top1"], 100 * metrics["video_top5"],
               100 * metrics["clip_top1"])
  return record
