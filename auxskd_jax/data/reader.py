"""Random access to a prepared dataset without TensorFlow.

Reads the TFDS `array_record` shards directly, parses the `tf.train.Example` records with
`example_proto`, and takes split lengths and class names from TFDS's `dataset_info.json`,
`features.json` and label file. Per-video metadata (frame counts, labels, ids) comes from the
index `prepare` writes beside the shards, so the sampler never reads frames to plan a window.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Sequence

import numpy as np

from auxskd_jax.data import example_proto, jpeg

INDEX_FILE = "auxskd_index.{split}.json"


def _version_key(v: str) -> tuple[int, ...]:
  return tuple(int(x) for x in v.split("."))


def resolve_dataset_dir(data_dir: str, name: str) -> str:
  """`<data_dir>/<name>[/<version>]` -> the directory holding `dataset_info.json`.

  `name` is `builder/config` (e.g. `ucf101/split1`), optionally `builder/config:1.0.0`; a bare
  `builder` works when it has a single config.
  """
  if not data_dir or not os.path.isdir(data_dir):
    raise FileNotFoundError(
        f"data_dir {data_dir!r} does not exist; set --config.data.data_dir to where `prepare` "
        "wrote the datasets.")
  version = None
  if ":" in name:
    name, version = name.split(":", 1)
  path = os.path.join(data_dir, name)
  if not os.path.isdir(path):
    found = sorted(os.path.relpath(os.path.dirname(os.path.dirname(p)), data_dir)
                   for p in _find_infos(data_dir))
    raise FileNotFoundError(
        f"no prepared dataset {name!r} under {data_dir}; available: "
        f"{(found[:10] + ['...'] if len(found) > 10 else found) or 'none'}. "
        "Run `python main.py --config=configs/prepare.py ...` first.")
  if os.path.isfile(os.path.join(path, "dataset_info.json")):
    return path
  versions = [v for v in os.listdir(path) if re.fullmatch(r"\d+\.\d+\.\d+", v)
              and os.path.isfile(os.path.join(path, v, "dataset_info.json"))]
  if versions:
    if version is not None:
      if version not in versions:
        raise FileNotFoundError(f"{name}: no version {version}; have {sorted(versions)}")
      return os.path.join(path, version)
    return os.path.join(path, max(versions, key=_version_key))
  configs = [c for c in os.listdir(path) if _find_infos(os.path.join(path, c))]
  if len(configs) == 1:
    return resolve_dataset_dir(data_dir, f"{name}/{configs[0]}" + (f":{version}" if version else ""))
  raise FileNotFoundError(
      f"{path} holds no complete prepared dataset (no dataset_info.json)"
      + (f"; name one of its configs: {sorted(f'{name}/{c}' for c in configs)}" if configs
         else "; was `prepare` interrupted? Re-run it."))


def _find_infos(root: str, max_depth: int = 3) -> list[str]:
  """`dataset_info.json` files at most `max_depth` folders below `root` (a prepared dataset is
  `builder/config/version/`), so pointing data_dir at a big tree stays quick."""
  out = []
  base = root.rstrip(os.sep).count(os.sep)
  for dirpath, dirnames, files in os.walk(root):
    if dirpath.count(os.sep) - base >= max_depth:
      dirnames[:] = []
    if "dataset_info.json" in files:
      out.append(dirpath + "/dataset_info.json")
  return out


def shard_paths(dataset_dir: str, split: str) -> tuple[list[str], list[int]]:
  """The split's array_record shard files in order, and their lengths, from dataset_info.json."""
  with open(os.path.join(dataset_dir, "dataset_info.json")) as f:
    info = json.load(f)
  if info.get("fileFormat", "tfrecord") != "array_record":
    raise ValueError(f"{dataset_dir} is in {info.get('fileFormat', 'tfrecord')} format; "
                     "re-run prepare (it writes array_record, which allows random access).")
  splits = {s["name"]: s for s in info.get("splits", [])}
  if split not in splits:
    raise KeyError(f"{dataset_dir} has no split {split!r}; it has {sorted(splits)}")
  s = splits[split]
  lengths = [int(x) for x in s.get("shardLengths", [])]
  template = s.get("filepathTemplate", "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}")
  paths = []
  for i in range(len(lengths)):
    fname = (template.replace("{DATASET}", info["name"]).replace("{SPLIT}", split)
             .replace("{FILEFORMAT}", "array_record")
             .replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{len(lengths):05d}")
             .replace("{SHARD_INDEX}", f"{i:05d}").replace("{NUM_SHARDS}", f"{len(lengths):05d}"))
    paths.append(os.path.join(dataset_dir, fname))
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(f"{dataset_dir}: shard files missing: {missing[:3]}; re-run prepare.")
  return paths, lengths


def class_names(dataset_dir: str) -> list[str] | None:
  """Class names from TFDS's label file, or None for an unlabelled dataset."""
  with open(os.path.join(dataset_dir, "features.json")) as f:
    features = json.load(f)
  label = features.get("featuresDict", {}).get("features", {}).get("label")
  if label is None:
    return None
  path = os.path.join(dataset_dir, "label.labels.txt")
  if os.path.isfile(path):
    with open(path) as f:
      return [line.rstrip("\n") for line in f if line.strip()]
  n = int(label.get("classLabel", {}).get("numClasses", 0))
  return [str(i) for i in range(n)]


class VideoSource:
  """One split of a prepared dataset: random access to videos and to single frames.

  Picklable (worker processes reopen the shards lazily).
  """

  def __init__(self, dataset_dir: str, split: str):
    self.dataset_dir = dataset_dir
    self.split = split
    self._paths, self._lengths = shard_paths(dataset_dir, split)
    self.class_names = class_names(dataset_dir)
    self.num_classes = len(self.class_names) if self.class_names is not None else 0
    self._records = None
    self._meta = None

  def __getstate__(self) -> dict[str, Any]:
    state = dict(self.__dict__)
    state["_records"] = None
    return state

  def __len__(self) -> int:
    return sum(self._lengths)

  def __repr__(self) -> str:
    return f"VideoSource({self.dataset_dir!r}, split={self.split!r}, videos={len(self)})"

  @property
  def records(self):
    if self._records is None:
      from array_record.python.array_record_data_source import ArrayRecordDataSource

      self._records = ArrayRecordDataSource(self._paths)
    return self._records

  def _check(self, i: int) -> int:
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f"video index {i} out of range for {self!r}")
    return i

  def record(self, i: int) -> dict[str, Any]:
    """The parsed example of video `i` (frames stay JPEG bytes)."""
    return example_proto.parse_example(self.records[self._check(i)])

  @property
  def metadata(self) -> dict[str, np.ndarray]:
    """`num_frames`, `label`, `height`, `width` arrays and `video_id` list for the split."""
    if self._meta is None:
      path = os.path.join(self.dataset_dir, INDEX_FILE.format(split=self.split))
      if os.path.isfile(path):
        with open(path) as f:
          raw = json.load(f)
      else:  # prepared elsewhere: one pass over the records
        raw = build_index(self)
      if len(raw["num_frames"]) != len(self):
        raise ValueError(f"{path} lists {len(raw['num_frames'])} videos but the split has "
                         f"{len(self)}; delete it and re-run prepare.")
      self._meta = {k: (np.asarray(v, np.int32) if k != "video_id" else list(v))
                    for k, v in raw.items()}
    return self._meta

  def num_frames(self, i: int) -> int:
    return int(self.metadata["num_frames"][self._check(i)])

  def label(self, i: int) -> int:
    return int(self.metadata["label"][self._check(i)])

  def video_id(self, i: int) -> str:
    return self.metadata["video_id"][self._check(i)]

  @property
  def frame_shape(self) -> tuple[int, int]:
    """(H, W) of the frames (prepare resizes every video to the same size)."""
    h, w = int(self.metadata["height"][0]), int(self.metadata["width"][0])
    if h <= 0 or w <= 0:  # no size fields (prepared elsewhere): look at the first frame
      h, w = jpeg.decode(self.record(0)["frames"][0]).shape[:2]
    return h, w

  def read_frames(self, i: int, indices: Sequence[int]) -> np.ndarray:
    """uint8 [len(indices), H, W, 3]: decodes only the requested frames (indices wrap)."""
    frames = self.record(i)["frames"]
    idx = np.asarray(indices, np.int64) % len(frames)
    first = jpeg.decode(frames[int(idx[0])]) if len(idx) else np.zeros((0, 0, 3), np.uint8)
    out = np.empty((len(idx),) + first.shape, np.uint8)
    for k, j in enumerate(idx):
      if k == 0:
        out[0] = first
      else:
        jpeg.decode_into(frames[int(j)], out[k])
    return out


def build_index(source: VideoSource) -> dict[str, list]:
  """Per-video metadata for the split, read from the records (no frame is decoded)."""
  out: dict[str, list] = {"num_frames": [], "label": [], "height": [], "width": [], "video_id": []}
  for i in range(len(source)):
    ex = source.record(i)
    out["num_frames"].append(int(ex["num_frames"][0]) if "num_frames" in ex
                             else len(ex["frames"]))
    out["label"].append(int(ex["label"][0]) if len(ex.get("label", [])) else -1)
    out["height"].append(int(ex["height"][0]) if "height" in ex else 0)
    out["width"].append(int(ex["width"][0]) if "width" in ex else 0)
    out["video_id"].append(ex["video_id"][0].decode() if ex.get("video_id") else str(i))
  return out


def write_index(dataset_dir: str, split: str) -> str:
  """Writes `auxskd_index.<split>.json` (prepare calls this after TFDS wrote the shards)."""
  source = VideoSource(dataset_dir, split)
  path = os.path.join(dataset_dir, INDEX_FILE.format(split=split))
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(build_index(source), f)
  os.replace(tmp, path)
  return path


def open_split(data_dir: str, name: str, split: str) -> VideoSource:
  """Opens split `split` of the prepared dataset `name` (e.g. `ucf101/split1`) in `data_dir`."""
  return VideoSource(resolve_dataset_dir(data_dir, name), split)
