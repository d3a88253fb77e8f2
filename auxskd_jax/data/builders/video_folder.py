"""Any folder of videos: labels from `<root>/<class>/` folder names, or unlabelled.

A root holding `train/`, `val/` or `test/` folders gives one split each; otherwise `train`.
"""

from __future__ import annotations

import os

import ml_collections

from auxskd_jax.data.builders.common import (Scan, VideoItem, list_dirs, list_videos,
                                             require_dir, split_subdirs)
from auxskd_jax.data.builders.common import video_id as make_id


OPTIONS = ("labelled",)  # config keys that shape the scan (see builders/__init__.py)


def config_name(config: ml_collections.ConfigDict) -> str:
  return "labelled" if config.labelled else "unlabelled"


def scan(config: ml_collections.ConfigDict) -> Scan:
  root = require_dir(config.source_dir, "source_dir")
  result = Scan(class_names=None, items=[], description=f"Videos from {root}, JPEG frames.")
  splits = split_subdirs(root, result)
  if not config.labelled:
    for s, p in splits.items():
      for v in list_videos(p, result, recursive=True):
        result.items.append(VideoItem(s, make_id(v), os.path.join(p, v)))
    return result
  classes = sorted(set().union(*[set(list_dirs(p, result)) for p in splits.values()]))
  result.class_names = classes
  for s, p in splits.items():
    for label, c in enumerate(classes):
      if os.path.isdir(os.path.join(p, c)):
        for v in list_videos(os.path.join(p, c), result, recursive=True):
          result.items.append(VideoItem(s, make_id(f"{c}/{v}"), os.path.join(p, c, v), label))
    loose = list_videos(p, result)
    for v in loose:
      result.skip(os.path.join(p, v), "video outside any class folder (labelled=True)")
  return result
