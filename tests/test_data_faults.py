"""Prepare under faults: damaged videos, mixed sizes, changed options, a dying decode worker.

Each test is one failure a user hit (issue 14, items 8-11); docs/DATA.md states the policies.
"""

import json
import os
import threading

import pytest

from auxskd_jax.config import ConfigError
from auxskd_jax.data import decode, prepare, reader
from auxskd_jax.testing import synthetic
from conftest import _prepare_config


def _folder(tmp_path, videos):
  """A labelled video_folder source: {relative path: (frames, height, width)}."""
  root = tmp_path / "src"
  for tint, (rel, (n, h, w)) in enumerate(sorted(videos.items())):
    synthetic.write_index_video(str(root / rel), n, h, w, tint=tint)
  return root


def test_truncated_and_corrupted_videos_are_reported(tmp_path, capsys):
  root = _folder(tmp_path, {"a/good.avi": (60, 32, 40), "a/cut.avi": (60, 32, 40),
                            "b/damaged.avi": (60, 32, 40)})
  synthetic.truncate_file(str(root / "a/cut.avi"), 0.7)
  synthetic.corrupt_middle(str(root / "b/damaged.avi"), 2000)
  config = _prepare_config(builder="video_folder", source_dir=str(root),
                           data_dir=str(tmp_path / "data"), min_frame_fraction=0.7)
  report = prepare.run(config, "")
  short = {os.path.basename(s["path"]): s for s in report["short"]}
  assert set(short) == {"cut.avi", "damaged.avi"} and report["short_count"] == 2
  cut, damaged = short["cut.avi"], short["damaged.avi"]
  # Cut to 70%: ~37 of 60 frames, under the 0.7 threshold -> skipped, and said why.
  assert cut["declared_frames"] == 60 and cut["decoded_frames"] < 42 and not cut["kept"]
  assert "min_frame_fraction" in cut["reason"]
  assert any(s["path"].endswith("cut.avi") for s in report["skipped"])
  # 2000 random bytes mid-file: FFmpeg raises nothing and ~50 of 60 decode -> kept, reported.
  assert damaged["declared_frames"] == 60 and 42 <= damaged["decoded_frames"] < 60
  assert damaged["kept"] and report["short_kept"] == 1
  assert report["written"] == {"train": 2}
  src = reader.open_split(config.data_dir, "video_folder/labelled", "train")
  counts = {src.video_id(i): src.num_frames(i) for i in range(len(src))}
  assert counts == {"a/good": 60, "b/damaged": damaged["decoded_frames"]}
  err = capsys.readouterr().err
  assert "kept" in err and "damaged.avi" in err and "cut.avi" in err
  with open(os.path.join(report["dataset_dir"], prepare.REPORT_FILE)) as f:
    assert json.load(f)["short_count"] == 2


def test_judge_partly_decodable():
  meta = {"num_frames": 50, "declared_frames": 60, "error": ""}
  assert prepare.judge(meta, 0.8) == (True, "decoded 50 of 60 declared frames (83%)")
  assert not prepare.judge(meta, 0.9)[0]
  # A decoder error mid-way keeps the frames before it under the same rule.
  keep, note = prepare.judge(dict(meta, error="InvalidDataError: x"), 0.8)
  assert keep and "decoder error" in note
  assert not prepare.judge({"num_frames": 5, "declared_frames": 0, "error": "boom"}, 0.9)[0]
  assert prepare.judge({"num_frames": 60, "declared_frames": 60, "error": ""}, 1.0) == (True, "")


def test_mixed_sizes_without_resize_fail_at_prepare(tmp_path):
  root = _folder(tmp_path, {"a/small.mp4": (6, 32, 40), "b/big.mp4": (6, 48, 64)})
  config = _prepare_config(builder="video_folder", source_dir=str(root), resize=(),
                           data_dir=str(tmp_path / "data"))
  with pytest.raises(ConfigError, match=r"--config.resize") as e:
    prepare.run(config, "")
  assert "32x40" in str(e.value) and "48x64" in str(e.value)
  assert not os.path.isdir(tmp_path / "data" / "video_folder" / "labelled")
  config.resize = (24, 30)
  report = prepare.run(config, "")
  assert report["written"] == {"train": 2}


def test_changed_options_refuse_then_rebuild(tmp_path, capsys):
  root = _folder(tmp_path, {"a/x.mp4": (6, 32, 40), "b/y.mp4": (6, 32, 40)})
  config = _prepare_config(builder="video_folder", source_dir=str(root),
                           data_dir=str(tmp_path / "data"))
  first = prepare.run(config, "")
  assert prepare.run(config, "") == first  # same options: reused as is
  assert "reusing it" in capsys.readouterr().err
  config.resize = (16, 20)
  with pytest.raises(ConfigError, match=r"overwrite=True") as e:
    prepare.run(config, "")
  assert "resize: [32, 40] -> [16, 20]" in str(e.value)
  src = reader.open_split(config.data_dir, "video_folder/labelled", "train")
  assert src.frame_shape == (32, 40)  # the old dataset is untouched
  config.overwrite = True
  report = prepare.run(config, "")
  assert report["options"]["resize"] == [16, 20]
  src = reader.open_split(config.data_dir, "video_folder/labelled", "train")
  assert src.frame_shape == (16, 20) and src.read_frames(0, [0]).shape == (1, 16, 20, 3)
  synthetic.write_index_video(str(root / "b" / "z.mp4"), 6, 32, 40)  # the source changed
  config.overwrite = False
  with pytest.raises(ConfigError, match="the source now lists 3 videos"):
    prepare.run(config, "")


def test_killed_decode_worker_is_skipped_not_hung(tmp_path, monkeypatch):
  name = synthetic.CRASH_MARKER
  root = _folder(tmp_path, {"a/x.mp4": (5, 32, 40), f"a/{name}.mp4": (5, 32, 40),
                            "b/y.mp4": (5, 32, 40), "b/z.mp4": (5, 32, 40)})
  monkeypatch.setattr(decode, "read_video", synthetic.read_video_or_die)
  config = _prepare_config(builder="video_folder", source_dir=str(root), workers=2,
                           data_dir=str(tmp_path / "data"))
  out = {}
  thread = threading.Thread(target=lambda: out.update(report=prepare.run(config, "")),
                            daemon=True)
  thread.start()
  thread.join(240)
  assert not thread.is_alive(), "prepare hung after a decode worker died"
  report = out["report"]
  assert report["written"] == {"train": 3}
  [lost] = report["skipped"]
  assert lost["path"].endswith(f"{name}.mp4") and "decode worker died" in lost["reason"]
