"""Linear probe (task `linear_probe`): a linear classifier on frozen backbone features.

Features come from `evaluators.SplitFeatures` (E uniformly spaced centre clips per video, layer
`eval.feature_layer`, default 'pool'), the code the retrieval task and the k-NN monitor use. With
`probe.per_clip=False` (default) the classifier sees one 10-clip-averaged feature per video;
with `per_clip=True` it trains on every clip's feature and tests by averaging the clips'
softmax per video (reporting clip-level accuracy too), like the fine-tuning test.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from auxskd_jax import config as config_lib
from auxskd_jax.config import require
from auxskd_jax.evaluate import (backbone, evaluators, features, linear_classifier, multiclip,
                                  report)


def validate(config: ml_collections.ConfigDict) -> None:
  backbone.validate_data(config)
  require("probe" in config, "probe",
          "the linear probe needs a probe section (auxskd_jax.defaults.probe).")
  require(config.probe.steps > 0, "probe.steps", "must be positive.")
  require(config.probe.learning_rate > 0, "probe.learning_rate", "must be positive.")
  require(config.probe.batch_size > 0, "probe.batch_size", "must be positive.")
  evaluators.validate(config)  # eval.feature_layer: known, and not empty at this clip size
  path = config.eval.get("init_from", "")
  require(not path or os.path.exists(path), "eval.init_from",
          f"{path!r} does not exist; give a workdir / checkpoint dir / .pth, or '' for random init.")


def evaluate_probe(train: dict[str, np.ndarray], test: dict[str, np.ndarray], num_classes: int,
                   probe: ml_collections.ConfigDict, seed: int = 0) -> dict[str, float]:
  """Trains on `train` features (`[N, E, D]`) and scores `test`; the protocol's metrics."""
  kwargs = dict(steps=int(probe.steps), learning_rate=float(probe.learning_rate),
                weight_decay=float(probe.weight_decay), batch_size=int(probe.batch_size),
                seed=seed)
  if probe.per_clip:
    n, e, d = train["features"].shape
    params = linear_classifier.train_linear(train["features"].reshape(n * e, d),
                                            np.repeat(train["labels"], e), num_classes, **kwargs)
    logits = linear_classifier.predict_logits(params, test["features"])
    return multiclip.multiclip_accuracy(logits, test["labels"])
  params = linear_classifier.train_linear(features.video_features(train), train["labels"],
                                          num_classes, **kwargs)
  logits = linear_classifier.predict_logits(params, features.video_features(test))
  return multiclip.multiclip_accuracy(logits[:, None], test["labels"])


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  config_lib.ensure_valid(config, validate)
  chief = jax.process_index() == 0  # every process extracts its share; process 0 writes
  if chief:
    config_lib.save_config(config, workdir)
  path = config.eval.get("init_from", "")
  model, variables = backbone.frozen_backbone(config, path, "eval.init_from")
  layer = str(config.eval.get("feature_layer", "pool"))
  splits = evaluators.SplitFeatures(
      config, model, data_dir=config.data.data_dir, name=config.data.name,
      gallery_split=config.data.train_split, query_split=config.data.test_split,
      feature_layer=layer, clip_mean=not config.probe.per_clip)
  train, test = splits(variables)
  metrics = evaluate_probe(train, test, splits.num_classes, config.probe, seed=int(config.seed))
  if not config.probe.per_clip:
    metrics.pop("clip_top1")  # one averaged feature per video: clip level is not measured
  record = report.make_record(config, task="linear_probe", metrics=metrics, checkpoint=path,
                              extra={"per_clip": bool(config.probe.per_clip),
                                     "feature_layer": layer,
                                     "feature_dim": int(train["features"].shape[-1])})
  if chief:
    report.write_results(workdir, record)
  logging.info("linear_probe: %s", metrics)
  return record
