"""Writes decoded videos as a TFDS dataset in `array_record` format (this module imports TF).

All our builders share one TFDS builder class: what differs between UCF101, HMDB51, Kinetics,
folders and frame lists is only how the source is scanned (the builder modules), so the TFDS side
is a generic writer fed from the per-video decode cache.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from auxskd_jax.data.builders.common import DATASET_VERSION as VERSION


def _features(class_names: Sequence[str] | None) -> tfds.features.FeaturesDict:
  feats = {
      # JPEG bytes we encoded ourselves: a plain string sequence, so TFDS never re-encodes.
      "frames": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
      "num_frames": tfds.features.Scalar(dtype=np.int32),
      "height": tfds.features.Scalar(dtype=np.int32),
      "width": tfds.features.Scalar(dtype=np.int32),
      "video_id": tfds.features.Text(),
      "fps": tfds.features.Scalar(dtype=np.float32),
  }
  if class_names is not None:
    feats["label"] = tfds.features.ClassLabel(names=list(class_names))
  return tfds.features.FeaturesDict(feats)


def _examples(cache_files: Sequence[str], labelled: bool) -> Iterator[tuple[str, dict]]:
  for path in cache_files:
    with open(path, "rb") as f:
      video = pickle.load(f)
    example = {
        "frames": video["frames"],
        "num_frames": len(video["frames"]),
        "height": video["height"],
        "width": video["width"],
        "video_id": video["video_id"],
        "fps": video["fps"],
    }
    if labelled:
      example["label"] = video["label"]
    yield video["video_id"], example


def write_dataset(data_dir: str, name: str, config_name: str, description: str,
                  class_names: Sequence[str] | None,
                  splits: dict[str, Sequence[str]],
                  metadata: dict[str, Any] | None = None) -> str:
  """Builds `<data_dir>/<name>/<config_name>/<VERSION>/` from decode-cache files per split.

  `metadata` (JSON) is stored as the dataset's `metadata.json`, written with the rest of the
  dataset in one step (TFDS builds in a temporary folder and renames it). Returns the dataset
  directory. An existing complete dataset is left as it is (TFDS skips it): `prepare` checks
  its recorded options first and deletes it when it must be rebuilt.
  """

  class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(VERSION)
    # A generated class has no source file or checksums; this also avoids a TFDS code path
    # that needs the optional `importlib_resources` package.
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
      return self.dataset_info_from_configs(
          description=description, features=_features(class_names),
          metadata=tfds.core.MetadataDict(metadata or {}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: _examples(files, class_names is not None) for split, files in splits.items()}

    def _generate_examples(self, *args, **kwargs):
      raise RuntimeError("split generators yield examples directly")

  _Builder.name = name
  builder = _Builder(data_dir=data_dir, config=tfds.core.BuilderConfig(name=config_name),
                     file_format="array_record")
  with _quiet_tfds():
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=data_dir, verify_ssl=False,
            compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder.data_dir


class _DropTfdsRecords(logging.Filter):
  """Drops TFDS's log records below ERROR (absl records carry the caller's file)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or (
        f"{os.sep}tensorflow_datasets{os.sep}" not in (record.pathname or ""))


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
  """Writing without TFDS's chatter: its progress bars, its "Downloading and preparing dataset"
  lines (printed to stdout: nothing is downloaded here) and its INFO / WARNING logs; our own
  progress lines say what is written, and errors still show."""
  tfds.disable_progress_bar()
  quiet = _DropTfdsRecords()
  loggers = [logging.getLogger("absl"), logging.getLogger("tensorflow_datasets")]
  for logger in loggers:
    logger.addFilter(quiet)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    for logger in loggers:
      logger.removeFilter(quiet)
