"""The reference's pre-extracted frames: `<root>/<video>/frame000001.jpg ...` plus list files
with lines `<video> <num_frames>` (unlabelled) or `<video> <label> <num_frames>` (SPEC 7).

`--config.list_files` is `path` (split 'train') or `train=path,test=path`. Labels are taken
as given (0-based); `--config.class_names_file` (one name a line, or `<id> <name>`) names them.
"""

from __future__ import annotations

import os

import ml_collections

from auxskd_jax.data.builders.common import Scan, VideoItem, require_dir


OPTIONS = ("list_files", "class_names_file")  # config keys that shape the scan (see builders/__init__.py)


def config_name(config: ml_collections.ConfigDict) -> str:
  return "default"


def parse_list_files(spec: str) -> dict[str, str]:
  if not spec:
    raise FileNotFoundError("frame_list needs --config.list_files (path or train=path,test=path)")
  out = {}
  for part in spec.split(","):
    split, _, path = part.rpartition("=")
    out[split.strip() or "train"] = path.strip()
  for split, path in out.items():
    if not os.path.isfile(path):
      raise FileNotFoundError(f"--config.list_files: {split} list {path!r} does not exist.")
  return out


def scan(config: ml_collections.ConfigDict) -> Scan:
  root = require_dir(config.source_dir, "source_dir")
  result = Scan(class_names=None, items=[], description=f"Frame folders from {root}.")
  rows = []
  labelled = None
  for split, path in parse_list_files(config.list_files).items():
    with open(path) as f:
      for n, line in enumerate(f, 1):
        parts = line.split()
        if not parts:
          continue
        where = f"{path}:{n}"
        if len(parts) not in (2, 3) or not all(p.lstrip("-").isdigit() for p in parts[1:]):
          result.skip(where, f"malformed line {line.strip()!r} "
                             "(want '<video> <num_frames>' or '<video> <label> <num_frames>')")
          continue
        if labelled is None:
          labelled = len(parts) == 3
        if labelled != (len(parts) == 3):
          result.skip(where, "mixes labelled and unlabelled lines; use one form per dataset")
          continue
        label = int(parts[1]) if labelled else -1
        if labelled and label < 0:
          result.skip(where, f"negative label {label}")
          continue
        directory = os.path.join(root, parts[0])
        if not os.path.isdir(directory):
          result.skip(directory, f"listed in {os.path.basename(path)} but not found")
          continue
        rows.append(VideoItem(split, parts[0], directory, label, "frames", int(parts[-1])))
  result.items = rows
  if labelled:
    n = max((r.label for r in rows), default=-1) + 1
    names = [f"class_{k:03d}" for k in range(n)]
    if config.class_names_file:
      with open(config.class_names_file) as f:
        given = [line.split()[-1] for line in f if line.strip()]
      if len(given) < n:
        raise ValueError(f"--config.class_names_file has {len(given)} names but labels go up "
                         f"to {n - 1}.")
      names = given
    result.class_names = names
  return result
