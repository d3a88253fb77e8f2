"""Prepare a dataset: `python main.py --config=configs/prepare.py --config.builder=ucf101
--config.source_dir=/data/UCF-101 --config.splits_dir=/data/ucfTrainTestlist
--config.data_dir=/data/tfds`.

Builders: ucf101, hmdb51 (split 1-3 + official lists), kinetics (subset k100 or all),
video_folder (labelled from class folders, or unlabelled), frame_list (the reference's JPEG
frame folders + list files). The last line printed is the path of prepare_report.json.
docs/DATA.md explains what is kept, skipped and reported, and when a dataset is rebuilt.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "prepare"
  c.seed = 0
  c.builder = ""  # ucf101 | hmdb51 | kinetics | video_folder | frame_list
  c.source_dir = ""  # the extracted videos (or frame folders for frame_list)
  c.data_dir = ""  # prepared datasets go to <data_dir>/<builder>/<config>/<version>/
  c.splits_dir = ""  # ucf101: ucfTrainTestlist; hmdb51: testTrainMulti_7030_splits
  c.split = 1  # ucf101 / hmdb51 official split
  c.subset = "k100"  # kinetics: "k100" (SPEC section 7) or "all"
  c.labelled = True  # video_folder: labels from class folder names
  c.list_files = ""  # frame_list: path, or train=path,test=path
  c.class_names_file = ""  # frame_list: optional class names, one a line
  c.config_name = ""  # overrides the dataset config name (default: split1, k100, labelled, ...)
  c.resize = (128, 171)  # (height, width) of stored frames; () keeps the source size
  c.jpeg_quality = 90
  c.workers = 0  # decoding processes; 0 = every core
  # A video that decodes fewer than this fraction of the frames its container declares
  # (truncated, damaged) is skipped; one at or above it is kept with the frames that decoded.
  # Both are listed in prepare_report.json ("short"). 0 keeps all, 1 skips any shortfall.
  c.min_frame_fraction = 0.9
  # An existing dataset prepared with other options (resize, jpeg_quality, builder options,
  # source, ...) is refused; True deletes and rebuilds it.
  c.overwrite = False
  c.cache_dir = ""  # per-video decode cache; default <data_dir>/_prepare_cache/<builder>/<config>
  return c
