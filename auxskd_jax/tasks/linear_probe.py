"""Linear probe (task `linear_probe`): a linear classifier on frozen encoder features.

Features come from `evaluators.SplitFeatures` (E uniformly spaced centre clips per video, layer
`eval.feature_layer`, default 'pool'), the code the retrieval task and the k-NN monitor use. With
`probe.per_clip=False` (default) the classifier sees one 10-clip-averaged feature per video;
with `per_clip=True` it trains on every clip's feature and tests by averaging the clips'
softmax per video (reporting clip-level accuracy too), like the fine-tuning test.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from absl import logging

from auxskd_jax.errors import require
from auxskd_jax.evaluate import evaluators, linear_classifier, report
from auxskd_jax.tasks import Task, common


def _probe_checks(config: ml_collections.ConfigDict) -> None:
  require("probe" in config, "probe",
          "the linear probe needs a probe section (auxskd_jax.defaults.probe).")
  require(config.probe.steps > 0, "probe.steps", "must be positive.")
  require(config.probe.learning_rate > 0, "probe.learning_rate", "must be positive.")
  require(config.probe.batch_size > 0, "probe.batch_size", "must be positive.")


def validate(config: ml_collections.ConfigDict) -> None:
  """The frozen-feature checks (tasks.common) and the probe's settings."""
  common.validate_feature_task(config, _probe_checks)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  chief, path, model, variables = common.start_feature_task(config, workdir)
  layer = str(config.eval.get("feature_layer", "pool"))
  splits = evaluators.feature_splits(
      config, model, data_dir=config.data.data_dir, name=config.data.name,
      gallery_split=config.data.train_split, query_split=config.data.test_split,
      feature_layer=layer, clip_mean=not config.probe.per_clip)
  train, test = splits(variables)
  metrics = linear_classifier.evaluate_probe(train, test, splits.num_classes, config.probe, seed=int(config.seed))
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


TASK = Task("linear_probe", validate, run)
