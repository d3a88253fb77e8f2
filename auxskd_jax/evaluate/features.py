"""Per-clip encoder features (and head logits) for every video of a split, under pmap.

Each video gives E clips (default `config.clip.eval_clips` = 10) from uniformly spaced windows
(the loader's `start_mode='uniform'`), centre-cropped by `ops.make_clips('eval', ...)`. The
host batch is padded to a multiple of the local devices and padding rows (the loader's
`mask=False` rows of the final partial batch and our own) are dropped before anything is
returned, so every video is counted exactly once.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from auxskd_jax import data, ops
# Feature layers an encoder returns with `features_only=True, feature_layer=...`:
# 'pool': the last stage globally average-pooled (512-d at width 64; SPEC section 8);
# 'conv5_maxpool': the last stage max-pooled with kernel and stride (1, 2, 2) and flattened,
# the features of the VCOP retrieval protocol (9216-d for R(2+1)D at 16x112x112).
from auxskd_jax.models import FEATURE_LAYERS
from auxskd_jax.train import devices


def _forward(model: nn.Module, config: ml_collections.ConfigDict, *, with_logits: bool,
             feature_layer: str, clip_mean: bool
             ) -> Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]:
  """The per-device function: a batch of videos -> features `[b, E, D]` (+ logits `[b, E, C]`).

  Logits are the `linear` head applied to the same pooled features (one encoder pass), which
  is what the model's own head computes. `clip_mean` averages the E clips on the device and
  returns `[b, 1, D]` (wide layers such as conv5_maxpool would otherwise fill host memory).
  """
  # The keyword is passed only for another layer than the model's default, so encoders (and
  # test stand-ins) that do not know it still serve 'pool'.
  layer_kwargs = {} if feature_layer == "pool" else {"feature_layer": feature_layer}

  def forward(variables: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    clips, _ = ops.make_clips("eval", jax.random.PRNGKey(0), batch, config, train=False)
    b, e = clips.shape[:2]
    flat = clips.reshape((b * e,) + clips.shape[2:])
    feats = model.apply(variables, flat, train=False, features_only=True, **layer_kwargs)
    feats = feats.reshape(b, e, -1).astype(jnp.float32)
    out = {"features": feats.mean(axis=1, keepdims=True) if clip_mean else feats}
    if with_logits:
      head = variables["params"]["linear"]
      out["logits"] = feats @ head["kernel"] + head["bias"]
    return out

  return forward


def _pad_rows(batch: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
  """Pads every array's first axis to a multiple of `multiple`; padding rows get mask False."""
  b = len(batch["label"])
  if "mask" not in batch:
    batch = dict(batch, mask=np.ones((b,), bool))
  pad = (-b) % multiple
  if not pad:
    return batch
  return {k: np.concatenate([np.asarray(v), np.zeros((pad,) + np.shape(v)[1:], np.asarray(v).dtype)])
          for k, v in batch.items()}


def _run(step: Callable, variables: Any,
         batches: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Runs the pmapped `step` over host batches; the unpadded outputs plus label/index/starts."""
  n_dev = jax.local_device_count()
  replicated = devices.replicate(variables)
  outputs: dict[str, list[np.ndarray]] = {}
  for batch in batches:
    batch = _pad_rows(dict(batch), n_dev)
    keep = np.asarray(batch["mask"], bool)
    arrays = {k: v for k, v in batch.items() if np.asarray(v).dtype.kind in "biuf"}
    out = step(replicated, devices.shard_batch(arrays))
    out = {k: np.asarray(jax.device_get(v)).reshape((-1,) + v.shape[2:]) for k, v in out.items()}
    out.update(label=batch["label"], index=batch["index"], starts=batch["starts"])
    for k, v in out.items():
      outputs.setdefault(k, []).append(np.asarray(v)[keep])
  if not outputs:
    raise ValueError("feature extraction got no batches: is the split empty?")
  return {k: np.concatenate(v) for k, v in outputs.items()}


def _gather_processes(result: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """With several hosts each holds its shard of videos: gather all, in split order.

  Shards may differ in length by one video; each is padded to the longest with index -1 rows,
  which are dropped after the gather. Every process returns the whole split.
  """
  if jax.process_count() > 1:
    n = len(result["index"])
    most = int(np.max(multihost_utils.process_allgather(np.array([n]))))
    padded = {k: np.concatenate([v, np.full((most - n,) + v.shape[1:], -1, v.dtype)])
              for k, v in result.items()}
    gathered = multihost_utils.process_allgather(padded)  # each [processes, most, ...]
    result = {k: np.asarray(v).reshape((-1,) + v.shape[2:]) for k, v in gathered.items()}
    valid = result["index"] >= 0
    result = {k: v[valid] for k, v in result.items()}
  order = np.argsort(result["index"], kind="stable")
  return {k: v[order] for k, v in result.items()}


class Extractor:
  """Feature extraction with one pmapped forward, built once and reused for every split and
  every call (jax compiles it once per batch shape: clip count and batch size)."""

  def __init__(self, model: nn.Module, config: ml_collections.ConfigDict, *,
               with_logits: bool = False, feature_layer: str = "pool", clip_mean: bool = False):
    """`model`: a `models.build` encoder (of its heads only `linear` is used, `with_logits`);
    `feature_layer`: one of FEATURE_LAYERS; `clip_mean`: return each video's mean clip feature
    as `features [N, 1, D]` (averaged on the device)."""
    if feature_layer not in FEATURE_LAYERS:
      raise ValueError(f"feature_layer {feature_layer!r}: use one of {FEATURE_LAYERS} "
                       "(--config.eval.feature_layer).")
    if with_logits and feature_layer != "pool":
      raise ValueError("logits come from the pooled features: with_logits needs "
                       f"feature_layer='pool', not {feature_layer!r}.")
    self.model, self.config, self.with_logits = model, config, with_logits
    self.feature_layer, self.clip_mean = feature_layer, clip_mean
    self._step = jax.pmap(_forward(model, config, with_logits=with_logits,
                                   feature_layer=feature_layer, clip_mean=clip_mean),
                          axis_name=devices.AXIS)

  def __call__(self, variables: Any, source: Any, *, num_clips: int | None = None,
               batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Features of every video of `source` from `num_clips` uniformly spaced centre-cropped clips.

    Args:
      variables: the model's `{'params', 'batch_stats'}` (unreplicated).
      source: a `data.open_split(...)` VideoSource (or a `subset` of one).
      num_clips: clips per video (default `config.clip.eval_clips`).
      batch_size: videos per host batch (default `config.eval.batch_size`).

    Returns:
      numpy arrays in split order: `features [N, E, D]` (`[N, 1, D]` with `clip_mean`),
      `labels [N]`, `index [N]`, `starts [N, E]` (first frame of each clip's window), and
      `logits [N, E, C]` if the extractor was made `with_logits` (the `linear` head's per-clip
      logits).
    """
    config = self.config
    e = int(num_clips or config.clip.eval_clips)
    if self.with_logits and "linear" not in variables["params"]:
      raise ValueError("feature extraction with logits needs a model with a `linear` head; this "
                       f"one has {sorted(variables['params'])}.")
    loader = data.make_loader(
        source, batch_size=int(batch_size or config.eval.batch_size), views=e,
        window_len=ops.window_len("eval", config.clip), start_mode="uniform",
        seed=int(config.seed), shuffle=False, num_epochs=1, drop_remainder=False,
        shard_index=jax.process_index(), shard_count=jax.process_count(),
        workers=int(config.data.get("workers", 0)))
    result = _run(self._step, variables, loader)
    result["labels"] = result.pop("label")
    return _gather_processes(result)

  def run_batches(self, variables: Any,
                  batches: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Features of ready-made host batches in this process alone (videos decoded in memory,
    `auxskd_jax.api.embed`): each batch holds `windows` uint8 `[b, E, W, H, W_px, 3]`,
    `label`, `index` and `starts` (and optionally `mask`), as the loader's do. Returns what
    `__call__` returns, in batch order, without gathering other processes' videos."""
    result = _run(self._step, variables, batches)
    result["labels"] = result.pop("label")
    return result


class Subset:
  """Videos `indices` of a VideoSource as a source of their own (the loader reads `len`,
  `record` and `frame_shape`; evaluations read `label` and `num_classes`)."""

  def __init__(self, source: Any, indices: Sequence[int]):
    self.source = source
    self.indices = np.asarray(indices, np.int64)
    self.num_classes = source.num_classes
    self.class_names = source.class_names

  def __len__(self) -> int:
    return len(self.indices)

  def __repr__(self) -> str:
    return f"Subset({self.source!r}, {len(self)} videos)"

  @property
  def frame_shape(self) -> tuple[int, int]:
    return self.source.frame_shape

  def record(self, i: int) -> dict[str, Any]:
    return self.source.record(int(self.indices[i]))

  def num_frames(self, i: int) -> int:
    return self.source.num_frames(int(self.indices[i]))

  def label(self, i: int) -> int:
    return self.source.label(int(self.indices[i]))

  def video_id(self, i: int) -> str:
    return self.source.video_id(int(self.indices[i]))

  def read_frames(self, i: int, indices: Sequence[int]) -> np.ndarray:
    return self.source.read_frames(int(self.indices[i]), indices)


def subset(source: Any, max_videos: int) -> Any:
  """At most `max_videos` videos of `source`, evenly spaced over the split (UCF101 and HMDB51
  lists are grouped by class, so every class keeps its share); `source` itself when it is no
  larger or `max_videos <= 0`."""
  n = len(source)
  if max_videos <= 0 or n <= max_videos:
    return source
  return Subset(source, np.round(np.linspace(0, n - 1, int(max_videos))).astype(np.int64))


def video_features(result: dict[str, np.ndarray]) -> np.ndarray:
  """Per-video features: the mean over its clips, `[N, D]`."""
  return result["features"].mean(axis=1)
