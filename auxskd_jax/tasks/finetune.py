"""Fine-tuning on action recognition (task `finetune`), SPEC section 8.

The encoder starts from `--config.train.init_from` (any of our checkpoints, a reference
PyTorch `.pth`, or '' for training from scratch) with a new `linear` head for the dataset's
classes, and is trained by the shared loop on augmented 16-frame clips (recipe `clip`,
`methods/finetune.py`) with cross-entropy. Every `eval.every_epochs` epochs the loop runs the clip-level validation
(`evaluators.FinetuneValidation`, logged as `val/clip_top1`, `val/loss`); at the end the test
split is scored the standard way: E = 10 uniformly spaced centre clips per video, softmax
averaged per video (video top-1/top-5), plus clip-level top-1.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
from absl import logging

from auxskd_jax import data, ops
from auxskd_jax.data import checks as data_checks
from auxskd_jax.errors import require
from auxskd_jax.evaluate import evaluators, features, multiclip, report
from auxskd_jax.methods import finetune as finetune_method
from auxskd_jax.tasks import Task, common
from auxskd_jax.train import encoder as encoder_lib
from auxskd_jax.train import loop


def validate(config: ml_collections.ConfigDict) -> None:
  """The components' checks, both splits readable, fine-tuning's own settings, the loop's and
  the evaluators'; then every encoder layer of `train.init_from` fits."""
  common.check_experiment(config, splits=(config.data.train_split, config.data.test_split))
  common.check_evaluation(config)
  require("finetune" in config, "finetune",
          "fine-tuning needs a finetune section (auxskd_jax.defaults.finetune).")
  require(config.finetune.val_clips >= 1, "finetune.val_clips", "needs at least one clip.")
  require(0.0 <= config.finetune.label_smoothing < 1.0, "finetune.label_smoothing",
          "must lie in [0, 1).")
  require(config.eval.every_epochs > 0, "eval.every_epochs", "must be positive.")
  ops.validate(finetune_method.Finetune.recipe, config)
  evaluators.validate(config)
  loop.validate(config)
  for key in common.INIT_KEYS:
    common.check_init_fits(config, key, strict=True)


def evaluator_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """`config.evaluators` with the clip-level validation `val` added (finetune.validate) or
  removed."""
  names = [n for n in config.get("evaluators", ()) if n != "val"]
  return tuple(names + ["val"]) if config.finetune.validate else tuple(names)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Fine-tunes (the loop validates every eval.every_epochs epochs), then tests with E clips
  per video; writes results.json/.md and the training curves."""
  train_src = data.open_split(config.data.data_dir, config.data.name, config.data.train_split)
  test_src = data.open_split(config.data.data_dir, config.data.name, config.data.test_split)
  num_classes = data_checks.require_labels(train_src,
                                           f"{config.data.name}:{config.data.train_split}")
  data_checks.require_labels(test_src, f"{config.data.name}:{config.data.test_split}")
  steps_per_epoch, total_steps = loop.schedule_lengths(config, len(train_src))
  method = finetune_method.Finetune(config, num_classes)
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


TASK = Task("finetune", validate, run)
