"""What a builder's scan returns, and helpers shared by the scans (no TF)."""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable

# The TFDS version directory prepared datasets are written to (`<data_dir>/<builder>/<config>/`).
DATASET_VERSION = "1.0.0"

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")


@dataclasses.dataclass(frozen=True)
class VideoItem:
  """One video to prepare: a file (`kind='video'`) or a frame folder (`kind='frames'`)."""
  split: str
  video_id: str
  path: str
  label: int = -1
  kind: str = "video"
  expected_frames: int | None = None


@dataclasses.dataclass
class Scan:
  """A scanned source: class names (None when unlabelled), videos, and what was skipped why."""
  class_names: list[str] | None
  items: list[VideoItem]
  problems: list[dict[str, str]] = dataclasses.field(default_factory=list)
  description: str = ""

  def skip(self, path: str, reason: str) -> None:
    self.problems.append({"path": path, "reason": reason})


def require_dir(path: str, key: str) -> str:
  """`path` if it is a readable directory, else a clear error naming the config key."""
  if not path:
    raise FileNotFoundError(f"--config.{key} is empty; set it to the source folder.")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"--config.{key}={path!r} does not exist or is not a directory.")
  if not os.access(path, os.R_OK | os.X_OK):
    raise PermissionError(f"--config.{key}={path!r} is not readable.")
  return path


def list_dirs(path: str, scan: Scan) -> list[str]:
  """Sorted sub-directory names of `path`; an unreadable one is reported, not fatal."""
  try:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
  except OSError as e:
    scan.skip(path, f"unreadable directory: {e}")
    return []


def list_videos(path: str, scan: Scan, extensions: Iterable[str] = VIDEO_EXTENSIONS,
                recursive: bool = False) -> list[str]:
  """Sorted video files in `path` (relative paths); unreadable directories are reported."""
  extensions = tuple(e.lower() for e in extensions)
  out = []
  try:
    entries = sorted(os.scandir(path), key=lambda e: e.name)
  except OSError as e:
    scan.skip(path, f"unreadable directory: {e}")
    return out
  for e in entries:
    if e.name.startswith("."):
      continue
    if e.is_dir() and recursive:
      out += [os.path.join(e.name, p) for p in list_videos(e.path, scan, extensions, True)]
    elif e.is_file() and e.name.lower().endswith(extensions):
      out.append(e.name)
  return out


def video_id(relpath: str) -> str:
  """A stable id from a path relative to the source root (`Class/v_x.avi` -> `Class/v_x`)."""
  return os.path.splitext(relpath.replace(os.sep, "/"))[0]


def split_subdirs(root: str, scan: Scan) -> dict[str, str]:
  """`{split: dir}` when `root` holds train/val/test sub-folders, else `{'train': root}`."""
  names = {"train": "train", "val": "validation", "valid": "validation",
           "validation": "validation", "test": "test"}
  found = {names[d]: os.path.join(root, d) for d in list_dirs(root, scan) if d in names}
  return found or {"train": root}
