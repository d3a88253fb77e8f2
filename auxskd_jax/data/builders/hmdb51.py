"""HMDB51 from the extracted videos and `testTrainMulti_7030_splits` (splits 1-3)."""

from __future__ import annotations

import glob
import os
import re

import ml_collections

from auxskd_jax.data.builders.common import Scan, VideoItem, list_videos, require_dir
from auxskd_jax.data.builders.common import video_id as make_id


OPTIONS = ("splits_dir", "split")  # config keys that shape the scan (see builders/__init__.py)


def config_name(config: ml_collections.ConfigDict) -> str:
  return f"split{int(config.split)}"


def scan(config: ml_collections.ConfigDict) -> Scan:
  """Split `config.split`: list id 1 -> 'train', 2 -> 'test', 0 unused; classes sorted."""
  videos_dir = require_dir(config.source_dir, "source_dir")
  if os.path.isdir(os.path.join(videos_dir, "hmdb51")):
    videos_dir = os.path.join(videos_dir, "hmdb51")
  s = int(config.split)
  lists = config.splits_dir or os.path.join(os.path.dirname(videos_dir.rstrip("/")),
                                            "testTrainMulti_7030_splits")
  require_dir(lists, "splits_dir")
  split_files = sorted(glob.glob(os.path.join(lists, f"*_test_split{s}.txt")))
  if not split_files:
    raise FileNotFoundError(f"no *_test_split{s}.txt in {lists}; set --config.splits_dir to the "
                            "testTrainMulti_7030_splits folder (and --config.split to 1-3).")
  classes = [re.sub(rf"_test_split{s}\.txt$", "", os.path.basename(p)) for p in split_files]
  result = Scan(class_names=classes, items=[],
                description=f"HMDB51 split {s} (6,766 videos of 51 actions), JPEG frames.")
  for label, (cls, path) in enumerate(zip(classes, split_files)):
    present = set(list_videos(os.path.join(videos_dir, cls), result)) \
        if os.path.isdir(os.path.join(videos_dir, cls)) else set()
    with open(path) as f:
      for n, line in enumerate(f, 1):
        parts = line.split()
        if not parts:
          continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
          result.skip(f"{path}:{n}", f"malformed line {line.strip()!r} (want '<video.avi> 0|1|2')")
          continue
        if parts[1] == "0":
          continue
        if parts[0] not in present:
          result.skip(os.path.join(videos_dir, cls, parts[0]),
                      f"listed in {os.path.basename(path)} but not found")
          continue
        split = "train" if parts[1] == "1" else "test"
        result.items.append(VideoItem(split, make_id(f"{cls}/{parts[0]}"),
                                      os.path.join(videos_dir, cls, parts[0]), label))
  return result
