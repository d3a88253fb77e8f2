"""Evaluators run inside the loop: k-NN on planted features (exact), the k-NN monitor end to
end (compiled once), fine-tuning's validation against the old segmented validation's formula,
the registry, and retrieval recording its feature layer."""

import json

import jax
import numpy as np
import pytest

from auxskd_jax import config as config_lib
from auxskd_jax import defaults, tasks
from auxskd_jax.config import ConfigError
from auxskd_jax.evaluate import evaluators, features, multiclip
from auxskd_jax.evaluate.topk import knn_accuracy


def _unit(deg):
  rad = np.deg2rad(np.asarray(deg, np.float64))
  return np.stack([np.cos(rad), np.sin(rad)], axis=-1).astype(np.float32)


def test_knn_weighted_and_majority_votes_planted():
  gallery = _unit([0, 10, 20, 90, 100, 180])
  labels = np.array([0, 1, 1, 2, 2, 0])
  # At 1 degree, class 0, the 3 nearest are 0 (c0, cos 0.99985), 10 (c1, 0.98769) and 20 (c1,
  # 0.94552). Majority: c1 (wrong). exp(cos / 0.07): c0 e^14.284 < c1 e^14.110 + e^13.507
  # (wrong). exp(cos / 0.01): c0 e^99.98 > c1 e^98.77 + e^94.55 (right).
  q, ql = _unit([1]) * 3.0, np.array([0])  # the norm does not matter (cosine)
  assert knn_accuracy(q, ql, gallery, labels, k=3, temperature=0) == 0.0
  assert knn_accuracy(q, ql, gallery, labels, k=3, temperature=0.07) == 0.0
  assert knn_accuracy(q, ql, gallery, labels, k=3, temperature=0.01) == 1.0
  assert knn_accuracy(q, ql, gallery, labels, k=1) == 1.0
  # At 95 degrees both class-2 items are nearest: right for any k <= 3 and either vote.
  # k=2 at 5 degrees: c0 and c1 tie in a majority vote -> the lower class (0) wins.
  queries = _unit([95, 5, 185])
  q_labels = np.array([2, 0, 0])
  assert knn_accuracy(queries, q_labels, gallery, labels, k=2, temperature=0) == 1.0
  assert knn_accuracy(queries, np.array([2, 1, 0]), gallery, labels, k=2,
                      temperature=0) == pytest.approx(2 / 3)
  # k above the gallery size is clipped: every item votes, majority c0/c1/c2 tie 2-2-2 -> c0.
  assert knn_accuracy(queries, np.array([0, 0, 0]), gallery, labels, k=50,
                      temperature=0) == 1.0
  # Chunking (one compilation for several padded chunks) gives the same answer.
  many = _unit(np.linspace(0, 359, 37))
  many_labels = np.arange(37) % 3
  whole = knn_accuracy(many, many_labels, gallery, labels, k=3)
  assert knn_accuracy(many, many_labels, gallery, labels, k=3, chunk_size=8) == whole
  with pytest.raises(ValueError, match="k >= 1"):
    knn_accuracy(q, ql, gallery, labels, k=0)


def _config(data_dir, name, **eval_overrides):
  c = config_lib.base_config()
  c.model.name, c.model.width = "r3d_10", 4
  c.clip.clip_len, c.clip.crop_size, c.clip.eval_clips = 8, 16, 2
  c.data.data_dir, c.data.name = data_dir, name
  c.eval.batch_size = 4
  for k, v in eval_overrides.items():
    c.eval[k] = v
  return c


def _variables(config, num_classes=None, seed=0):
  from auxskd_jax.train import encoder as encoder_lib

  model = encoder_lib.build_encoder(config, num_classes=num_classes)
  return encoder_lib.init_variables(model, jax.random.PRNGKey(seed),
                                    encoder_lib.dummy_clip(config, 1))


def test_knn_monitor_end_to_end_compiles_once(tiny_prepared, monkeypatch):
  data_dir, name = tiny_prepared
  config = _config(data_dir, name)
  config.evaluators = ("knn",)
  config.eval.knn = defaults.knn()
  config.eval.knn.k = 3
  config.eval.knn.max_videos = 8  # of the 12 train videos; all 6 test videos
  config.eval.knn.every_steps = 7
  traces = []
  make_clips = features.ops.make_clips
  monkeypatch.setattr(features.ops, "make_clips",
                      lambda *a, **k: traces.append(1) or make_clips(*a, **k))
  (monitor,) = evaluators.build_evaluators(config)
  assert monitor.name == "knn" and monitor.every_steps == 7
  assert len(monitor.splits.gallery) == 8 and len(monitor.splits.queries) == 6
  # The variables of a pretraining encoder carry heads; the monitor ignores them.
  variables = _variables(config, num_classes=5)
  first = monitor(variables, 7)
  assert set(first) == {"top1", "retrieval_top1"}
  assert all(0.0 <= v <= 1.0 for v in first.values()), first
  assert monitor(variables, 14) == first  # deterministic: centre crops, fixed clips
  assert len(traces) == 1  # gallery, queries, both calls: one compiled forward


def test_knn_settings_fail_clearly(tiny_prepared):
  data_dir, name = tiny_prepared
  config = _config(data_dir, name)
  config.evaluators = ("knn",)
  config.eval.knn = defaults.knn()
  config.eval.knn.k = 0
  with pytest.raises(ConfigError, match="eval.knn.k"):
    evaluators.validate(config)
  config.eval.knn.k = 20
  config.eval.knn.feature_layer = "conv4"
  with pytest.raises(ConfigError, match="eval.knn.feature_layer"):
    evaluators.build_evaluators(config)
  with config.eval.knn.unlocked():
    config.eval.knn.neighbours = 5
  with pytest.raises(ConfigError, match="eval.knn.neighbours"):
    evaluators.knn_config(config)
  config.evaluators = ("linear_probe",)
  with pytest.raises(ConfigError, match="evaluators.*not an evaluator"):
    evaluators.validate(config)


def test_finetune_validation_matches_the_segmented_validation(tiny_prepared):
  from auxskd_jax import data
  from auxskd_jax import defaults

  data_dir, name = tiny_prepared
  config = _config(data_dir, name, every_epochs=2)
  config.finetune = defaults.finetune()
  config.finetune.val_clips = 2
  (val,) = evaluators.build_evaluators(config, names=("val",), num_classes=3,
                                       steps_per_epoch=5)
  assert val.name == "val" and val.every_steps == 10
  variables = _variables(config, num_classes=3, seed=1)
  got = val(variables, 10)
  # What evaluate/finetune.py computed between its fit() segments and appended as
  # val_clip_top1 / val_loss, on the same extractor (same compiled forward).
  old = val.extractor(variables, data.open_split(data_dir, name, "test"), num_clips=2)
  logp = jax.nn.log_softmax(jax.numpy.asarray(old["logits"]), -1)
  nll = -float(jax.numpy.take_along_axis(logp, jax.numpy.asarray(old["labels"])[:, None, None],
                                         -1).mean())
  expected = {"clip_top1": multiclip.multiclip_accuracy(old["logits"], old["labels"],
                                                        ks=(1,))["clip_top1"], "loss": nll}
  assert got.keys() == expected.keys()
  assert got["clip_top1"] == expected["clip_top1"]
  assert got["loss"] == pytest.approx(expected["loss"], rel=1e-6)
  assert old["logits"].shape == (6, 2, 3)
  with pytest.raises(ValueError, match="steps_per_epoch"):
    evaluators.build_evaluators(config, names=("val",), num_classes=3)


def test_retrieval_records_its_feature_layer(tiny_prepared, tmp_path):
  from auxskd_jax import models
  from auxskd_jax.tasks import retrieval

  data_dir, name = tiny_prepared
  try:
    dim = models.feature_dim("r3d_10", 4, layer="conv5_maxpool", clip_len=8, crop_size=32)
  except TypeError:
    pytest.skip("models.feature_dim has no feature layers yet")
  config = _config(data_dir, name, feature_layer="conv5_maxpool", init_from="",
                   topk=(1, 5))
  config.task = "retrieval"
  config.clip.crop_size = 32  # conv5 is 2x2 at 32 pixels: max-pooled to 1x1
  config.augment.input_convention = "rgb"
  tasks.get(config.task).validate(config)
  record = retrieval.run(config, str(tmp_path))
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["feature_layer"] == record["feature_layer"] == "conv5_maxpool"
  assert saved["feature_dim"] == dim == 32  # 32 channels x 1 x 1 x 1 at width 4
  assert saved["num_queries"] == 6 and saved["num_gallery"] == 12
  assert 0.0 <= saved["metrics"]["top1"] <= saved["metrics"]["top5"] <= 1.0
  config.eval.feature_layer = "conv6"
  with pytest.raises(ConfigError, match="eval.feature_layer"):
    tasks.get(config.task).validate(config)
