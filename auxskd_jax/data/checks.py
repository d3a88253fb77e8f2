"""Checks that a run's prepared dataset is there and readable, before any work starts."""

from __future__ import annotations

import os
from typing import Any, Iterable

import ml_collections
import numpy as np

from auxskd_jax.data import reader
from auxskd_jax.errors import ConfigError, require


def require_dataset(config: ml_collections.ConfigDict, splits: Iterable[str]) -> None:
  """`config.data` names a prepared dataset whose `splits` open, every shard readable."""
  d = config.data
  require(bool(d.data_dir), "data.data_dir",
          "set it to the directory where the `prepare` task wrote the datasets "
          "(python main.py --config=configs/prepare.py ...).")
  require(os.path.isdir(d.data_dir), "data.data_dir",
          f"{d.data_dir!r} is not a directory; give the directory where the `prepare` task "
          "wrote the datasets.")
  require(bool(d.name), "data.name", "set the prepared dataset, e.g. ucf101/split1.")
  where = f"--config.data.name={d.name!r} in --config.data.data_dir={d.data_dir!r}"
  for split in splits:
    try:
      source = reader.open_split(d.data_dir, d.name, split)
    except (OSError, KeyError, ValueError) as e:
      if isinstance(e, ConfigError):
        raise
      message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
      raise ConfigError(f"{where}, split {split!r}: {message}") from None
    try:
      len(source.records)  # opens every shard and reads its footer: finds truncated shards
    except (OSError, RuntimeError, ValueError):
      bad = _unreadable_shard(source.dataset_dir, split)
      raise ConfigError(
          f"{where}, split {split!r}: the shard {bad} is unreadable (truncated or corrupt?); "
          "prepare the dataset again.") from None
    if "clip" in config:
      require_clips_fit(config, source, f"{where}, split {split!r}")


def require_clips_fit(config: ml_collections.ConfigDict, source: reader.VideoSource,
                      where: str) -> None:
  """`--config.clip.crop_size` fits the prepared frames and `--config.clip.clip_len` is not
  longer than every video, from the index `prepare` writes beside the shards (no frame is
  read). A dataset without that index (prepared elsewhere) is not checked here: building it
  is a pass over every record, which the loader makes anyway."""
  index = os.path.join(source.dataset_dir, reader.INDEX_FILE.format(split=source.split))
  if not os.path.isfile(index) or len(source) == 0:
    return
  try:
    meta = source.metadata
  except (OSError, ValueError, KeyError) as e:
    raise ConfigError(f"{where}: its index {index} is unreadable ({e}); prepare the dataset "
                      "again.") from None
  crop = int(config.clip.crop_size)
  heights, widths = meta["height"], meta["width"]
  if len(heights) and heights.min() > 0 and widths.min() > 0:
    h, w = int(heights.min()), int(widths.min())
    require(crop <= min(h, w), "clip.crop_size",
            f"{crop} is larger than the prepared frames of {where} ({h}x{w}); use a crop of at "
            f"most {min(h, w)}, or prepare the dataset again with a larger --config.resize.")
  clip_len = int(config.clip.clip_len)
  longest = int(np.max(meta["num_frames"]))
  require(clip_len <= longest, "clip.clip_len",
          f"{clip_len} frames, but the longest video of {where} has {longest}: every clip would "
          f"loop its video. Use a clip_len of at most {longest}, or prepare longer videos.")


def _unreadable_shard(dataset_dir: str, split: str) -> str:
  """The first shard file of `split` that array_record cannot open (for the error message)."""
  from array_record.python.array_record_data_source import ArrayRecordDataSource

  for path in reader.shard_paths(dataset_dir, split)[0]:
    try:
      len(ArrayRecordDataSource([path]))
    except (OSError, RuntimeError, ValueError):
      return path
  return f"of {dataset_dir}"


def require_labels(source: Any, where: str) -> int:
  """Number of classes of a labelled split; a clear error for an unlabelled one."""
  num_classes = int(getattr(source, "num_classes", 0) or 0)
  labels = np.array([source.label(i) for i in range(len(source))], np.int64)
  if num_classes <= 0 or (labels < 0).any():
    raise ConfigError(
        f"{where} has no class labels (an unlabelled pretraining set?); this evaluation needs a "
        "labelled dataset such as ucf101/split1 or hmdb51/split1 (--config.data.name).")
  if len(labels) == 0:
    raise ConfigError(f"{where} is empty; check --config.data.name and the split names.")
  return num_classes
