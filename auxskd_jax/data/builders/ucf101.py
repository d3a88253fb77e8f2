"""UCF101 from the extracted official videos and `ucfTrainTestlist` (splits 1-3)."""

from __future__ import annotations

import os

import ml_collections

from auxskd_jax.data.builders.common import Scan, VideoItem, list_dirs, list_videos, require_dir
from auxskd_jax.data.builders.common import video_id as make_id


OPTIONS = ("splits_dir", "split")  # config keys that shape the scan (see builders/__init__.py)


def config_name(config: ml_collections.ConfigDict) -> str:
  return f"split{int(config.split)}"


def _lists_dir(config: ml_collections.ConfigDict, videos_dir: str) -> str:
  if config.splits_dir:
    return require_dir(config.splits_dir, "splits_dir")
  for cand in (os.path.join(videos_dir, "ucfTrainTestlist"),
               os.path.join(os.path.dirname(videos_dir.rstrip("/")), "ucfTrainTestlist")):
    if os.path.isdir(cand):
      return cand
  raise FileNotFoundError(
      "UCF101 needs the official split lists: set --config.splits_dir to the extracted "
      "ucfTrainTestlist folder (classInd.txt, trainlist0N.txt, testlist0N.txt).")


def scan(config: ml_collections.ConfigDict) -> Scan:
  """Videos of split `config.split` (1-3): 'train' and 'test', labels from classInd.txt."""
  videos_dir = require_dir(config.source_dir, "source_dir")
  if os.path.isdir(os.path.join(videos_dir, "UCF-101")):
    videos_dir = os.path.join(videos_dir, "UCF-101")
  lists = _lists_dir(config, videos_dir)
  s = int(config.split)
  result = Scan(class_names=[], items=[],
                description=f"UCF101 split {s} (13,320 videos of 101 actions), JPEG frames.")
  class_file = os.path.join(lists, "classInd.txt")
  if not os.path.isfile(class_file):
    raise FileNotFoundError(f"{class_file} is missing; --config.splits_dir must be ucfTrainTestlist.")
  with open(class_file) as f:
    for n, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      if len(parts) != 2 or not parts[0].isdigit():
        result.skip(f"{class_file}:{n}", f"malformed line {line.strip()!r} (want '<id> <Class>')")
        continue
      result.class_names.append(parts[1])
  lower_classes = {c.lower(): i for i, c in enumerate(result.class_names)}
  # The official lists and folders disagree in case (HandStandPushups); match case-insensitively.
  files = {}
  for d in list_dirs(videos_dir, result):
    for v in list_videos(os.path.join(videos_dir, d), result):
      files[f"{d}/{v}".lower()] = f"{d}/{v}"
  for split, fname in (("train", f"trainlist0{s}.txt"), ("test", f"testlist0{s}.txt")):
    path = os.path.join(lists, fname)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path} is missing; --config.split must be 1, 2 or 3.")
    with open(path) as f:
      for n, line in enumerate(f, 1):
        parts = line.split()
        if not parts:
          continue
        where = f"{path}:{n}"
        if len(parts) > 2 or "/" not in parts[0] or (len(parts) == 2 and not parts[1].isdigit()):
          result.skip(where, f"malformed line {line.strip()!r} (want 'Class/video.avi [label]')")
          continue
        cls = parts[0].split("/")[0].lower()
        if cls not in lower_classes:
          result.skip(where, f"class {cls!r} is not in classInd.txt")
          continue
        rel = files.get(parts[0].lower())
        if rel is None:
          result.skip(os.path.join(videos_dir, parts[0]), f"listed in {fname} but not found")
          continue
        result.items.append(VideoItem(split, make_id(rel), os.path.join(videos_dir, rel),
                                      lower_classes[cls]))
  return result
