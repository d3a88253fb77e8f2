"""Evaluations built from the config and run inside the training loop (as big_vision does).

An evaluator is built once, before training (datasets opened, labels checked, the feature
extractor's pmapped forward built, so it compiles on its first call only), and is called by
`train.loop.fit(..., evaluators=[...])` every `every_steps` steps and at the last step:

    metrics = evaluator(variables, step)   # on every process; process 0 logs them

with `variables = {'params', 'batch_stats'}` of the encoder with its heads (host numpy,
unreplicated). Metrics are logged under the evaluator's `name` (TensorBoard `knn/top1`,
metrics.jsonl rows `{"step", "split": "knn", "top1", ...}`).

Registered evaluators (`config.evaluators = ('knn',)` lists them; `build_evaluators` builds them):
- `val` (`FinetuneValidation`): fine-tuning's clip-level validation, `clip_top1` and `loss`.
- `knn` (`KnnMonitor`): during pretraining, k-NN top-1 on frozen features of a labelled set
  (`config.eval.knn`, defaults `defaults.knn()`), the curve that shows pretraining is working.
- `retrieval` (`Retrieval`): the retrieval protocol's top-k (the stand-alone `retrieval` task
  runs the same code).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from auxskd_jax import data, defaults, models
from auxskd_jax.data import checks as data_checks
from auxskd_jax.errors import ConfigError, require
from auxskd_jax.evaluate import features, multiclip
from auxskd_jax.evaluate.topk import DEFAULT_KS, knn_accuracy, topk_accuracy
from auxskd_jax.train import encoder as encoder_lib
from auxskd_jax.train.loop import Evaluator  # the interface the loop calls


def knn_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`defaults.knn()` overridden by the config's `eval.knn` (unknown keys are an error)."""
  merged = defaults.knn()
  given = config.get("eval", ml_collections.ConfigDict()).get("knn", None)
  for key, value in (given.items() if given is not None else ()):
    require(key in merged, f"eval.knn.{key}",
            f"is not a k-NN monitor setting; use one of {sorted(merged)}.")
    merged[key] = value
  return merged


def open_labelled(data_dir: str, name: str, split: str, key: str) -> Any:
  """A labelled split; a ConfigError naming the config key `key` if it has no labels."""
  source = data.open_split(data_dir, name, split)
  data_checks.require_labels(source, f"{name}:{split} (--config.{key})")
  return source


def clip_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Clip-level `clip_top1` and mean cross-entropy `loss` of per-clip logits `[N, E, C]`."""
  acc = multiclip.multiclip_accuracy(logits, labels, ks=(1,))
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), -1)
  nll = -jnp.take_along_axis(logp, jnp.asarray(labels, jnp.int32)[:, None, None], -1).mean()
  return {"clip_top1": acc["clip_top1"], "loss": float(nll)}


class SplitFeatures:
  """Features of a labelled gallery split and query split from one Extractor (compiled once).

  Shared by the k-NN monitor, retrieval and the linear probe: `__call__(variables)` returns
  the Extractor's dicts `(gallery, queries)`. Built by `feature_splits` from a config.
  """

  def __init__(self, extractor: features.Extractor, gallery: Any, queries: Any, *,
               num_clips: int | None = None, batch_size: int | None = None):
    self.extractor, self.gallery, self.queries = extractor, gallery, queries
    self.num_classes = int(gallery.num_classes)
    self.num_clips, self.batch_size = num_clips, batch_size
    self.feature_layer = extractor.feature_layer

  def __call__(self, variables: dict[str, Any]) -> tuple[dict[str, np.ndarray],
                                                          dict[str, np.ndarray]]:
    kwargs = dict(num_clips=self.num_clips, batch_size=self.batch_size)
    return (self.extractor(variables, self.gallery, **kwargs),
            self.extractor(variables, self.queries, **kwargs))


def feature_splits(config: ml_collections.ConfigDict, model: Any, *, data_dir: str, name: str,
                   gallery_split: str, query_split: str, key: str = "data.name",
                   feature_layer: str = "pool", clip_mean: bool = True,
                   num_clips: int | None = None, batch_size: int | None = None,
                   max_videos: int = 0) -> SplitFeatures:
  """`SplitFeatures` of two labelled splits of `name` (at most `max_videos` each); `key` is
  the config key named when a split has no labels."""
  return SplitFeatures(
      features.Extractor(model, config, feature_layer=feature_layer, clip_mean=clip_mean),
      features.subset(open_labelled(data_dir, name, gallery_split, key), max_videos),
      features.subset(open_labelled(data_dir, name, query_split, key), max_videos),
      num_clips=num_clips, batch_size=batch_size)


class FinetuneValidation:
  """Fine-tuning's periodic clip-level validation: `num_clips` centre clips per video of
  `source`, every `every_steps` steps (`_make_val` reads them from the config)."""
  name = "val"

  def __init__(self, extractor: features.Extractor, source: Any, *, every_steps: int,
               num_clips: int):
    """`extractor`: made `with_logits` for the model with its `linear` head."""
    self.extractor, self.source = extractor, source
    self.every_steps, self.num_clips = int(every_steps), int(num_clips)

  def __call__(self, variables: dict[str, Any], step: int) -> dict[str, float]:
    val = self.extractor(variables, self.source, num_clips=self.num_clips)
    return clip_metrics(val["logits"], val["labels"])


class KnnMonitor:
  """k-NN top-1 on frozen encoder features of a labelled set, for watching pretraining.

  Cosine similarity between the queries' and the gallery's clip-averaged features; a weighted
  vote of the `k` nearest (`temperature`). Metrics: `top1` (the k-NN classifier) and
  `retrieval_top1` (the nearest neighbour shares the query's class: retrieval top-1).
  `_make_knn` builds it from `config.eval.knn` (defaults `defaults.knn`).
  """
  name = "knn"

  def __init__(self, splits: SplitFeatures, *, k: int, temperature: float, every_steps: int):
    self.splits = splits
    self.k, self.temperature, self.every_steps = int(k), float(temperature), int(every_steps)

  def __call__(self, variables: dict[str, Any], step: int) -> dict[str, float]:
    gallery, queries = self.splits(variables)
    args = (features.video_features(queries), queries["labels"],
            features.video_features(gallery), gallery["labels"])
    return {"top1": knn_accuracy(*args, k=self.k, temperature=self.temperature),
            "retrieval_top1": topk_accuracy(*args, ks=(1,))[1]}


class Retrieval:
  """The retrieval protocol: the query videos search the gallery videos by cosine similarity
  of their clip-averaged features; a hit when any of the top k shares the query's class.

  Metrics `top{k}` for k in `ks`. After a call, `num_gallery`, `num_queries` and
  `feature_dim` describe what was measured. `every_steps=0`: only at the end of training.
  `retrieval_from_config` builds the protocol's (test searches train of data.name,
  `clip.eval_clips` clips, layer `eval.feature_layer`, `eval.topk`).
  """
  name = "retrieval"

  def __init__(self, splits: SplitFeatures, *, ks: tuple[int, ...] = DEFAULT_KS,
               every_steps: int = 0):
    self.splits, self.ks, self.every_steps = splits, tuple(int(k) for k in ks), int(every_steps)
    self.feature_layer = splits.feature_layer
    self.num_gallery = self.num_queries = self.feature_dim = 0

  def scores(self, variables: dict[str, Any]) -> dict[int, float]:
    """`{k: top-k accuracy}`."""
    gallery, queries = self.splits(variables)
    self.num_gallery, self.num_queries = len(gallery["labels"]), len(queries["labels"])
    self.feature_dim = int(gallery["features"].shape[-1])
    return topk_accuracy(features.video_features(queries), queries["labels"],
                         features.video_features(gallery), gallery["labels"], ks=self.ks)

  def __call__(self, variables: dict[str, Any], step: int) -> dict[str, float]:
    return {f"top{k}": v for k, v in self.scores(variables).items()}


def retrieval_from_config(config: ml_collections.ConfigDict, model: Any = None, *,
                          every_steps: int = 0) -> Retrieval:
  """The retrieval protocol as the config sets it (the `retrieval` task and evaluator)."""
  splits = feature_splits(
      config, model if model is not None else encoder_lib.build_encoder(config),
      data_dir=config.data.data_dir, name=config.data.name,
      gallery_split=config.data.train_split, query_split=config.data.test_split,
      feature_layer=str(config.eval.get("feature_layer", "pool")))
  return Retrieval(splits, ks=tuple(config.eval.get("topk", DEFAULT_KS)),
                   every_steps=every_steps)


def _make_val(config: ml_collections.ConfigDict, *, num_classes: int | None = None,
              steps_per_epoch: int | None = None, extractor: Any = None,
              **_: Any) -> FinetuneValidation:
  """`finetune.val_clips` centre clips per video of `finetune.val_split` ('' = the test
  split), every `eval.every_epochs` epochs; `extractor`: fine-tuning's test extractor (one
  compile), else one is built for a `num_classes` head."""
  if num_classes is None or steps_per_epoch is None:
    raise ValueError("the 'val' evaluator needs num_classes and steps_per_epoch (fine-tuning's "
                     "run passes them to build_evaluators).")
  split = config.finetune.val_split or config.data.test_split
  source = open_labelled(config.data.data_dir, config.data.name, split, "finetune.val_split")
  extractor = extractor or features.Extractor(
      encoder_lib.build_encoder(config, num_classes=num_classes), config, with_logits=True)
  return FinetuneValidation(
      extractor, source, every_steps=max(1, int(round(config.eval.every_epochs * steps_per_epoch))),
      num_clips=int(config.finetune.val_clips))


def _make_knn(config: ml_collections.ConfigDict, **_: Any) -> KnnMonitor:
  """Gallery `eval.knn.train_split`, queries `eval.knn.test_split` of `eval.knn.data_name`
  (default data.name), at most `max_videos` each, `num_clips` centre clips averaged."""
  validate_knn(config)
  kc = knn_config(config)
  splits = feature_splits(
      config, encoder_lib.build_encoder(config),
      data_dir=kc.data_dir or config.data.data_dir, name=kc.data_name or config.data.name,
      gallery_split=kc.train_split, query_split=kc.test_split, key="eval.knn.data_name",
      feature_layer=kc.feature_layer, num_clips=int(kc.num_clips),
      batch_size=int(kc.batch_size) or None, max_videos=int(kc.max_videos))
  return KnnMonitor(splits, k=int(kc.k), temperature=float(kc.temperature),
                    every_steps=int(kc.every_steps))


def _make_retrieval(config: ml_collections.ConfigDict, **_: Any) -> Retrieval:
  return retrieval_from_config(config,
                               every_steps=int(config.eval.get("retrieval_every_steps", 0)))


# name -> factory(config, **context) -> Evaluator: the factories are the only code here that
# reads the config. Context keys a factory may use: num_classes, steps_per_epoch, extractor;
# others are ignored.
EVALUATORS: dict[str, Callable[..., Evaluator]] = {
    "val": _make_val,
    "knn": _make_knn,
    "retrieval": _make_retrieval,
}


def register(name: str, factory: Callable[..., Evaluator]) -> None:
  """Adds an evaluator `config.evaluators` can name."""
  EVALUATORS[name] = factory


def validate_knn(config: ml_collections.ConfigDict) -> None:
  kc = knn_config(config)
  require(int(kc.k) >= 1, "eval.knn.k", "must be at least 1 (20 is the usual choice).")
  require(float(kc.temperature) >= 0, "eval.knn.temperature",
          "must be >= 0 (0 = majority vote).")
  require(int(kc.num_clips) >= 1, "eval.knn.num_clips", "needs at least one clip per video.")
  require(int(kc.every_steps) >= 1, "eval.knn.every_steps", "must be positive.")
  require(int(kc.max_videos) >= 0, "eval.knn.max_videos", "must be >= 0 (0 = every video).")
  require(int(kc.batch_size) >= 0, "eval.knn.batch_size", "must be >= 0 (0 = eval.batch_size).")
  require(kc.feature_layer in features.FEATURE_LAYERS, "eval.knn.feature_layer",
          f"use one of {features.FEATURE_LAYERS}.")
  require(bool(kc.data_name or config.data.name), "eval.knn.data_name",
          "set a labelled prepared dataset, e.g. ucf101/split1.")
  require(bool(kc.data_dir or config.data.data_dir), "eval.knn.data_dir",
          "set the directory of prepared datasets (or data.data_dir).")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks `config.evaluators` and the settings of the evaluators it lists (no data read)."""
  names = tuple(config.get("evaluators", ()))
  for name in names:
    require(name in EVALUATORS, "evaluators",
            f"{name!r} is not an evaluator; choose from {sorted(EVALUATORS)}.")
  if "knn" in names:
    validate_knn(config)
  if "retrieval" in names or "feature_layer" in config.get("eval", {}):
    layer = config.eval.get("feature_layer", "pool")
    require(layer in features.FEATURE_LAYERS, "eval.feature_layer",
            f"use one of {features.FEATURE_LAYERS}.")
    if "model" in config and "clip" in config:
      c = config.clip
      require(models.feature_dim(config.model.name, config.model.width, layer=layer,
                                 clip_len=c.clip_len, crop_size=c.crop_size) > 0,
              "eval.feature_layer",
              f"{layer!r} has no features for {c.clip_len}x{c.crop_size}x{c.crop_size} clips "
              "(conv5 is too small to max-pool by 2); use 'pool' or larger clips.")


def build_evaluators(config: ml_collections.ConfigDict, *,
                     names: tuple[str, ...] | None = None, **context: Any) -> list[Evaluator]:
  """The evaluators `names` (default `config.evaluators`) lists, built once.

  `context` goes to every factory (`num_classes`, `steps_per_epoch`, `extractor`); a dataset
  without labels or a bad setting fails here, before training starts.
  """
  names = tuple(config.get("evaluators", ()) if names is None else names)
  unknown = [n for n in names if n not in EVALUATORS]
  if unknown:
    raise ConfigError(f"--config.evaluators: {unknown} not evaluators; choose from "
                      f"{sorted(EVALUATORS)}.")
  validate(config)
  return [EVALUATORS[name](config, **context) for name in names]
