"""A small Python API: an encoder from any checkpoint we read, video features, k-NN and retrieval.

    import auxskd_jax as ax

    encoder = ax.load_encoder("runs/auxskd_r21d_k100")   # a workdir, or the authors' .pth
    train = ax.embed(encoder, train_paths)                # [N, 512] per-video features
    test = ax.embed(encoder, test_paths)
    ax.retrieval(test, test_labels, train, train_labels)   # {1: top-1, 5: top-5, ...}
    ax.knn(test, test_labels, train, train_labels, k=20)   # k-NN top-1 accuracy

Everything here is the machinery the tasks use, behind a few calls: `weights.load_encoder`
(every format `--config.eval.init_from` takes), `evaluate.features.Extractor` (the retrieval
protocol's uniformly spaced, centre-cropped clips) and `evaluate.topk`. No TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator, Sequence, Union

import flax.linen as nn
import ml_collections
import numpy as np
import optax

from auxskd_jax import config as config_lib
from auxskd_jax import models, weights
from auxskd_jax.data import decode
from auxskd_jax.data.loader import window_starts
from auxskd_jax.errors import ConfigError
from auxskd_jax.evaluate import features as features_lib
from auxskd_jax.evaluate import topk
from auxskd_jax.train import encoder as encoder_lib

# What `embed` takes: a video file, one video's frames `[T, H, W, 3]`, a batch of them
# `[B, T, H, W, 3]`, or a list mixing files and frame arrays.
Videos = Union[str, os.PathLike, np.ndarray, Sequence[Union[str, os.PathLike, np.ndarray]]]

LAYERS = models.FEATURE_LAYERS  # ('pool', 'conv5_maxpool')
_LAYER_ALIASES = {"pooled": "pool"}
# Stored frames are 128 x 171 for 112-pixel crops (the prepared datasets' size); other crop
# sizes scale it.
_FRAME_PER_CROP = (128 / 112, 171 / 112)


@dataclasses.dataclass
class Encoder:
  """An encoder ready to embed clips: its module, variables, and the config whose `model`,
  `clip` and `augment.input_convention` say which clips it takes (a run's own, from its
  config.json, when loaded from one of our workdirs)."""
  model: nn.Module
  variables: dict[str, Any]
  config: ml_collections.ConfigDict
  source: str = ""  # the checkpoint it came from; '' for a random initialisation
  report: weights.LoadReport | None = None
  _extractors: dict[str, features_lib.Extractor] = dataclasses.field(
      default_factory=dict, repr=False)

  @property
  def name(self) -> str:
    return str(self.config.model.name)

  @property
  def width(self) -> int:
    return int(self.config.model.width)

  @property
  def frame_size(self) -> tuple[int, int]:
    """(H, W) frames are resized to before the centre crop: 128 x 171 for 112-pixel crops."""
    crop = int(self.config.clip.crop_size)
    return (round(crop * _FRAME_PER_CROP[0]), round(crop * _FRAME_PER_CROP[1]))

  def feature_dim(self, layer: str = "pool") -> int:
    """Size of `embed(..., layer=layer)`'s features."""
    c = self.config
    return models.feature_dim(self.name, self.width, _layer(layer), int(c.clip.clip_len),
                              int(c.clip.crop_size))

  def extractor(self, layer: str) -> features_lib.Extractor:
    """The feature extractor of `layer`, built once per encoder (one compilation per shape)."""
    layer = _layer(layer)
    if self.feature_dim(layer) == 0:
      raise ValueError(f"layer {layer!r} is empty for {self.config.clip.clip_len}-frame "
                       f"{self.config.clip.crop_size}-pixel clips of {self.name}; use larger "
                       "clips (crop_size / clip_len) or layer='pool'.")
    if layer not in self._extractors:
      self._extractors[layer] = features_lib.Extractor(self.model, self.config,
                                                       feature_layer=layer)
    return self._extractors[layer]


def _layer(layer: str) -> str:
  layer = _LAYER_ALIASES.get(layer, layer)
  if layer not in LAYERS:
    raise ValueError(f"layer {layer!r}: use one of {list(LAYERS)} ('pooled' = 'pool').")
  return layer


def _config(model_name: str, width: int, clip_len: int, crop_size: int,
            input_convention: str = "reference") -> ml_collections.ConfigDict:
  c = config_lib.base_config()
  c.model.name, c.model.width = str(model_name), int(width)
  c.clip.clip_len, c.clip.crop_size = int(clip_len), int(crop_size)
  c.augment.input_convention = str(input_convention)
  models.validate(c)
  return c


def init_encoder(model_name: str = "r21d_10", *, width: int = 64, clip_len: int = 16,
                 crop_size: int = 112, seed: int = 0) -> Encoder:
  """A randomly initialised encoder (the random-init baseline; `--config.eval.init_from=''`)."""
  config = _config(model_name, width, clip_len, crop_size)
  model, variables = encoder_lib.build_and_init(config, seed=seed)
  return Encoder(model, variables, config)


def _run_config(path: str) -> dict[str, Any] | None:
  """The config.json of the run whose workdir, checkpoints/ folder or step folder is `path`."""
  here = os.path.abspath(path)
  for _ in range(3):
    candidate = os.path.join(here, "config.json")
    if os.path.isfile(candidate):
      with open(candidate) as f:
        return json.load(f)
    here = os.path.dirname(here)
  return None


def load_encoder(path: str | os.PathLike, *, model_name: str | None = None,
                 width: int | None = None, clip_len: int | None = None,
                 crop_size: int | None = None, trust_pickle: bool = False) -> Encoder:
  """The encoder of any checkpoint `--config.eval.init_from` reads.

  `path`: one of our runs (its workdir, `checkpoints/` folder or one step folder; an auxSKD
  run gives its student), the authors' auxSKD `pckpt_epoch_N.pth` (the student `encoder_q`),
  their VSPP `.pth.tar`, or any plain or DataParallel PyTorch state dict of our encoders.
  The encoder's name, width and clip size come from the run's config.json, or for a PyTorch
  file from its keys (112-pixel crops of 16 frames, the authors'); arguments override them.
  Every encoder layer must load (ConfigError otherwise); heads are left out.
  `trust_pickle` allows pickled objects other than argparse options in a `.pth`.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise ConfigError(f"load_encoder: {path!r} does not exist; give one of our workdirs / "
                      "checkpoint directories or a PyTorch .pth file.")
  found: dict[str, Any] = {"model": {}, "clip": {}, "augment": {}}
  if os.path.isfile(path):
    checkpoint = weights.read_torch(path, flag="eval.init_from", trust_pickle=trust_pickle)
    name, guessed_width = weights.convert.guess_encoder(checkpoint)
    found["model"] = {"name": name, "width": guessed_width}
  else:
    found.update(_run_config(path) or {})
  model_name = model_name or found["model"].get("name")
  if not model_name:
    why = "its keys match no encoder" if os.path.isfile(path) else "no config.json beside it"
    raise ConfigError(f"load_encoder: cannot tell which encoder {path!r} holds ({why}); "
                      f"pass model_name=, one of {list(models.NAMES)}.")
  config = _config(model_name, width or found["model"].get("width") or 64,
                   clip_len or found["clip"].get("clip_len") or 16,
                   crop_size or found["clip"].get("crop_size") or 112,
                   found["augment"].get("input_convention", "reference"))
  model, target = encoder_lib.build_and_init(config, random=False)
  variables, report = weights.load_encoder(path, target, model_name=config.model.name,
                                           strict=True, flag="eval.init_from",
                                           trust_pickle=trust_pickle)
  return Encoder(model, variables, config, source=path, report=report)


def save_encoder(encoder: Encoder, workdir: str | os.PathLike) -> str:
  """Writes `encoder` as a run's checkpoint (step 0) and config.json in `workdir`, which
  `load_encoder` and `--config.train.init_from` / `--config.eval.init_from` read."""
  from auxskd_jax.train import checkpoint as ckpt_lib  # local: orbax's writer
  from auxskd_jax.train.state import TrainState

  workdir = os.fspath(workdir)
  config_lib.save_config(encoder.config, workdir)
  state = TrainState.create(params={"encoder": encoder.variables["params"]},
                            batch_stats={"encoder": encoder.variables["batch_stats"]},
                            tx=optax.identity())
  manager = ckpt_lib.make_manager(workdir, keep=1, async_save=False)
  try:
    ckpt_lib.save(manager, 0, state, None, wait=True)
  finally:
    manager.close()
  return workdir


def read_video(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
  """All frames of a video file (PyAV) as uint8 `[T, H, W, 3]` RGB, resized to `size` (H, W;
  None keeps the file's size). Raises `data.decode.DecodeError` saying why it cannot."""
  return decode.decode_video(os.fspath(path), size)[0]


def _as_videos(videos: Videos) -> list[str | np.ndarray]:
  if isinstance(videos, (str, os.PathLike)):
    return [os.fspath(videos)]
  if isinstance(videos, np.ndarray):
    if videos.ndim == 4:
      return [videos]
    if videos.ndim == 5:
      return list(videos)
    raise ValueError(f"embed: frames must be [T, H, W, 3] or [B, T, H, W, 3]; got "
                     f"{videos.shape}.")
  return [os.fspath(v) if isinstance(v, (str, os.PathLike)) else np.asarray(v) for v in videos]


def _frames(video: str | np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
  if isinstance(video, str):
    return read_video(video, size)
  frames = np.asarray(video)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
    raise ValueError(f"embed: a video's frames must be uint8 [T, H, W, 3] RGB with T >= 1; got "
                     f"{frames.dtype} {frames.shape}.")
  if size is not None and tuple(frames.shape[1:3]) != tuple(size):
    frames = decode.resize_frames(frames, size)
  return frames


def _batches(videos: list[str | np.ndarray], *, num_clips: int, clip_len: int,
             batch_size: int, size: tuple[int, int] | None) -> Iterator[dict[str, np.ndarray]]:
  """Host batches of windows like the eval loader's: `num_clips` uniformly spaced windows of
  `clip_len` frames per video (a short video loops); a batch holds videos of one frame size."""
  rows: list[tuple[int, np.ndarray, np.ndarray]] = []

  def flush() -> dict[str, np.ndarray]:
    batch = {"windows": np.stack([w for _, w, _ in rows]),
             "index": np.array([i for i, _, _ in rows], np.int32),
             "starts": np.stack([s for _, _, s in rows]),
             "label": np.full(len(rows), -1, np.int32)}
    rows.clear()
    return batch

  for i, video in enumerate(videos):
    frames = _frames(video, size)
    n = len(frames)
    starts = window_starts(n, num_clips, clip_len, "uniform", None)
    windows = frames[(starts[:, None] + np.arange(clip_len)[None]) % n]  # [E, L, H, W, 3]
    if rows and (len(rows) == batch_size or rows[0][1].shape != windows.shape):
      yield flush()
    rows.append((i, windows, starts))
  if rows:
    yield flush()


def embed(encoder: Encoder, videos: Videos, *, layer: str = "pool",
          num_clips: int | None = None, batch_size: int = 8, resize: bool = True,
          per_clip: bool = False) -> np.ndarray:
  """Features of videos: one row per video, the mean over `num_clips` clips (`[N, D]`), or
  every clip's (`per_clip`: `[N, E, D]`). A single video (one path or `[T, H, W, 3]`) gives
  `[D]` (`[E, D]`).

  `videos`: video files (decoded with PyAV), decoded uint8 RGB frames `[T, H, W, 3]`, a batch
  `[B, T, H, W, 3]`, or a list of files and frame arrays. The clips are the retrieval
  protocol's: `num_clips` (default `clip.eval_clips`, 10) windows of `clip.clip_len` frames
  spread uniformly over the video, frames resized to `encoder.frame_size` (files by PyAV as
  they are decoded, as `prepare` stores datasets; arrays bilinearly; `resize=False` keeps
  their size, at least `clip.crop_size`) and centre-cropped to `clip.crop_size`.
  `layer`: 'pool' ('pooled'; 512-d at width 64) or 'conv5_maxpool' (VCOP's retrieval
  features, 9216-d for R(2+1)D at 16 x 112 x 112).
  """
  single = isinstance(videos, (str, os.PathLike)) or (isinstance(videos, np.ndarray)
                                                        and videos.ndim == 4)
  items = _as_videos(videos)
  if not items:
    raise ValueError("embed: no videos given.")
  if batch_size < 1:
    raise ValueError(f"embed: batch_size must be positive, got {batch_size}.")
  config = encoder.config
  e = int(num_clips or config.clip.eval_clips)
  if e < 1:
    raise ValueError(f"embed: num_clips must be positive, got {num_clips}.")
  batches = _batches(items, num_clips=e, clip_len=int(config.clip.clip_len),
                     batch_size=int(batch_size), size=encoder.frame_size if resize else None)
  out = encoder.extractor(layer).run_batches(encoder.variables, batches)
  feats = out["features"][np.argsort(out["index"], kind="stable")]
  feats = feats if per_clip else feats.mean(axis=1)
  return feats[0] if single else feats


def knn(query_features: np.ndarray, query_labels: np.ndarray, gallery_features: np.ndarray,
        gallery_labels: np.ndarray, *, k: int = 20, temperature: float = 0.07) -> float:
  """Top-1 accuracy of a cosine k-NN classifier: each query takes the vote of its `k` most
  similar gallery items weighted by `exp(cos / temperature)` (0: a majority vote)."""
  return topk.knn_accuracy(query_features, query_labels, gallery_features, gallery_labels,
                           k=k, temperature=temperature)


def retrieval(query_features: np.ndarray, query_labels: np.ndarray,
              gallery_features: np.ndarray, gallery_labels: np.ndarray, *,
              ks: Sequence[int] = topk.DEFAULT_KS) -> dict[int, float]:
  """`{k: top-k retrieval accuracy}`: the fraction of queries with an item of their class
  among their k most similar (cosine) gallery items (the `retrieval` task's numbers)."""
  return topk.topk_accuracy(query_features, query_labels, gallery_features, gallery_labels,
                            ks=ks)


def nearest(query_features: np.ndarray, gallery_features: np.ndarray,
            k: int = 5) -> tuple[np.ndarray, np.ndarray]:
  """The `k` most similar gallery items of each query (cosine): (indices `[Q, k]` int,
  similarities `[Q, k]` float), most similar first; ties go to the lower gallery index."""
  return topk.nearest(query_features, gallery_features, k)


__all__ = ["Encoder", "LAYERS", "embed", "init_encoder", "knn", "load_encoder", "nearest",
           "read_video", "retrieval", "save_encoder"]
