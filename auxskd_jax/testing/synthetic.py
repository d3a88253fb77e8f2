"""Deterministic real video files for tests, benchmarks and the demo.

Frames carry their own index as a grid of big black/white blocks, which survives lossy codecs
and resizing, so a test can check that a loader returned exactly the frames it claims.
Source trees mimic the official UCF101 / HMDB51 / Kinetics layouts and split lists.
"""

from __future__ import annotations

import os
import signal
from typing import Sequence

import av
import numpy as np

# The real reader, bound at import: `read_video_or_die` replaces `decode.read_video` in tests.
from auxskd_jax.data.decode import read_video as _read_video

_ROWS, _COLS = 3, 4  # 12 bits: frame indices up to 4095
_MAX_INDEX = 2 ** (_ROWS * _COLS) - 1
_DARK, _LIGHT = 30, 225


def _block_edges(n: int, parts: int) -> np.ndarray:
  return np.linspace(0, n, parts + 1).round().astype(int)


def index_frame(index: int, height: int, width: int, tint: int = 0) -> np.ndarray:
  """One uint8 [H, W, 3] frame whose blocks spell `index` in binary (row-major, MSB first).

  `tint` shifts the block levels a little (per video) so different videos differ in pixels
  without weakening the code.
  """
  if not 0 <= index <= _MAX_INDEX:
    raise ValueError(f"index {index} does not fit in {_ROWS * _COLS} bits")
  ys, xs = _block_edges(height, _ROWS), _block_edges(width, _COLS)
  frame = np.empty((height, width, 3), np.uint8)
  bits = [(index >> (_ROWS * _COLS - 1 - k)) & 1 for k in range(_ROWS * _COLS)]
  for r in range(_ROWS):
    for c in range(_COLS):
      level = (_LIGHT if bits[r * _COLS + c] else _DARK) + (tint % 20) - 10
      frame[ys[r]:ys[r + 1], xs[c]:xs[c + 1]] = level
  return frame


def index_frames(n: int, height: int, width: int, tint: int = 0) -> np.ndarray:
  """Frames 0..n-1 as uint8 [n, H, W, 3], each encoding its own index."""
  return np.stack([index_frame(i, height, width, tint) for i in range(n)])


def decode_index(frame: np.ndarray) -> int:
  """Reads back the index from a (possibly compressed, resized or cropped-free) frame."""
  frame = np.asarray(frame)
  h, w = frame.shape[:2]
  ys, xs = _block_edges(h, _ROWS), _block_edges(w, _COLS)
  gray = frame.astype(np.float32).mean(axis=-1) if frame.ndim == 3 else frame.astype(np.float32)
  value = 0
  for r in range(_ROWS):
    for c in range(_COLS):
      y0, y1, x0, x1 = ys[r], ys[r + 1], xs[c], xs[c + 1]
      dy, dx = (y1 - y0) // 4, (x1 - x0) // 4  # the block's centre half, away from edges
      block = gray[y0 + dy:y1 - dy, x0 + dx:x1 - dx]
      value = (value << 1) | int(block.mean() > (_DARK + _LIGHT) / 2)
  return value


def _default_codec(path: str) -> str:
  ext = os.path.splitext(path)[1].lower()
  return "mpeg4" if ext == ".avi" else "libx264"


def write_video(path: str, frames: np.ndarray, fps: int = 25, codec: str | None = None) -> str:
  """Encodes uint8 [T, H, W, 3] RGB frames to `path` (.mp4/.mkv: H.264, .avi: MPEG-4 part 2)."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
  codec = codec or _default_codec(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with av.open(path, mode="w") as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p"
    if codec in ("libx264", "h264"):
      stream.options = {"crf": "12", "preset": "ultrafast"}
    else:
      stream.bit_rate = 4_000_000
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return path


def write_index_video(path: str, num_frames: int, height: int, width: int, fps: int = 25,
                      tint: int = 0) -> str:
  """A video whose frame i shows index i."""
  return write_video(path, index_frames(num_frames, height, width, tint), fps=fps)


def _num_frames_for(rng: np.random.Generator, num_frames: int | tuple[int, int]) -> int:
  if isinstance(num_frames, int):
    return num_frames
  lo, hi = num_frames
  return int(rng.integers(lo, hi + 1))


def make_video_folder(root: str, classes: Sequence[str], videos_per_class: int,
                      num_frames: int | tuple[int, int] = 24, size: tuple[int, int] = (32, 40),
                      seed: int = 0, ext: str = ".mp4") -> list[str]:
  """Writes `<root>/<class>/<class>_<k>.mp4` index videos; returns the paths written.

  `num_frames` is a count or an inclusive (min, max) range drawn per video from `seed`.
  """
  rng = np.random.default_rng(seed)
  paths = []
  for ci, name in enumerate(classes):
    for k in range(videos_per_class):
      path = os.path.join(root, name, f"{name}_{k:03d}{ext}")
      write_index_video(path, _num_frames_for(rng, num_frames), *size, tint=ci * 7 + k)
      paths.append(path)
  return paths


def write_broken_videos(directory: str, ext: str = ".mp4") -> dict[str, str]:
  """Bad inputs a preparer must skip and report: kind -> path.

  kinds: `truncated` (a real video cut to a third), `random_bytes`, `empty_file`,
  `zero_frames` (a valid mp4 container holding no video frames).
  """
  os.makedirs(directory, exist_ok=True)
  out = {}
  good = write_index_video(os.path.join(directory, f"truncated{ext}"), 30, 32, 40)
  with open(good, "rb") as f:
    data = f.read()
  with open(good, "wb") as f:
    f.write(data[: len(data) // 3])
  out["truncated"] = good
  out["random_bytes"] = os.path.join(directory, f"random_bytes{ext}")
  with open(out["random_bytes"], "wb") as f:
    f.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  out["empty_file"] = os.path.join(directory, f"empty_file{ext}")
  open(out["empty_file"], "wb").close()
  out["zero_frames"] = os.path.join(directory, f"zero_frames{ext}")
  with av.open(out["zero_frames"], mode="w") as container:
    stream = container.add_stream(_default_codec(out["zero_frames"]), rate=25)
    stream.width, stream.height, stream.pix_fmt = 40, 32, "yuv420p"
    container.start_encoding()  # writes the header; no frame is ever muxed
  return out


def make_ucf101_tree(root: str, classes: Sequence[str] = ("ApplyEyeMakeup", "Archery", "Biking"),
                     groups: int = 3, clips_per_group: int = 1,
                     num_frames: int | tuple[int, int] = (20, 40),
                     size: tuple[int, int] = (32, 40), seed: int = 0) -> tuple[str, str]:
  """An UCF101-style tree: `<root>/UCF-101/<Class>/v_<Class>_gGG_cCC.avi` and
  `<root>/ucfTrainTestlist/{classInd,trainlist0S,testlist0S}.txt` for splits 1-3.

  Split s tests on the groups g with (g - 1) % 3 == s - 1 (UCF101 holds out 7 of 25 groups).
  Returns (videos_dir, lists_dir).
  """
  rng = np.random.default_rng(seed)
  videos_dir = os.path.join(root, "UCF-101")
  lists_dir = os.path.join(root, "ucfTrainTestlist")
  os.makedirs(lists_dir, exist_ok=True)
  with open(os.path.join(lists_dir, "classInd.txt"), "w") as f:
    f.writelines(f"{i + 1} {name}\n" for i, name in enumerate(classes))
  entries = []  # (relative path, class number, group)
  for ci, name in enumerate(classes):
    for g in range(1, groups + 1):
      for c in range(1, clips_per_group + 1):
        rel = f"{name}/v_{name}_g{g:02d}_c{c:02d}.avi"
        write_index_video(os.path.join(videos_dir, rel), _num_frames_for(rng, num_frames), *size,
                          tint=ci * 5 + g + c)
        entries.append((rel, ci + 1, g))
  for s in (1, 2, 3):
    with open(os.path.join(lists_dir, f"trainlist0{s}.txt"), "w") as ftr, \
        open(os.path.join(lists_dir, f"testlist0{s}.txt"), "w") as fte:
      for rel, label, g in entries:
        if (g - 1) % 3 == s - 1:
          fte.write(f"{rel}\n")
        else:
          ftr.write(f"{rel} {label}\n")
  return videos_dir, lists_dir


def make_hmdb51_tree(root: str, classes: Sequence[str] = ("brush_hair", "cartwheel", "chew"),
                     videos_per_class: int = 3, num_frames: int | tuple[int, int] = (20, 40),
                     size: tuple[int, int] = (32, 40), seed: int = 0) -> tuple[str, str]:
  """An HMDB51-style tree: `<root>/hmdb51/<class>/<name>.avi` and
  `<root>/testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt` lines `<name>.avi <id>`
  (1 train, 2 test, 0 unused). Returns (videos_dir, lists_dir).
  """
  rng = np.random.default_rng(seed)
  videos_dir = os.path.join(root, "hmdb51")
  lists_dir = os.path.join(root, "testTrainMulti_7030_splits")
  os.makedirs(lists_dir, exist_ok=True)
  for ci, name in enumerate(classes):
    names = [f"{name}_video{k}_f_cm_np1_fr_med_{k}.avi" for k in range(videos_per_class)]
    for k, vname in enumerate(names):
      write_index_video(os.path.join(videos_dir, name, vname), _num_frames_for(rng, num_frames),
                        *size, tint=ci * 5 + k)
    for s in (1, 2, 3):
      with open(os.path.join(lists_dir, f"{name}_test_split{s}.txt"), "w") as f:
        for k, vname in enumerate(names):
          usage = 0 if k == 3 else (2 if k % 3 == s - 1 else 1)
          f.write(f"{vname} {usage} \n")
  return videos_dir, lists_dir


def make_frame_list_tree(root: str, num_videos: int = 4, num_classes: int = 2,
                         num_frames: int | tuple[int, int] = (20, 30),
                         size: tuple[int, int] = (32, 40), labelled: bool = True,
                         seed: int = 0) -> tuple[str, str]:
  """The reference's input form: `<root>/frames/<video>/frame000001.jpg ...` and a list file
  with lines `<video> <label> <num_frames>` (or `<video> <num_frames>` unlabelled).
  Returns (frames_dir, list_file).
  """
  from PIL import Image

  rng = np.random.default_rng(seed)
  frames_dir = os.path.join(root, "frames")
  list_file = os.path.join(root, "list.txt")
  lines = []
  for v in range(num_videos):
    video = f"video_{v:03d}"
    n = _num_frames_for(rng, num_frames)
    os.makedirs(os.path.join(frames_dir, video), exist_ok=True)
    for i, frame in enumerate(index_frames(n, *size, tint=v)):
      Image.fromarray(frame).save(os.path.join(frames_dir, video, f"frame{i + 1:06d}.jpg"),
                                  quality=95)
    label = v % num_classes
    lines.append(f"{video} {label} {n}" if labelled else f"{video} {n}")
  with open(list_file, "w") as f:
    f.write("\n".join(lines) + "\n")
  return frames_dir, list_file


def truncate_file(path: str, fraction: float) -> str:
  """Cuts `path` to `fraction` of its bytes in place (an interrupted download or copy)."""
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: int(len(data) * fraction)])
  return path


def corrupt_middle(path: str, num_bytes: int = 2000, seed: int = 0) -> str:
  """Overwrites `num_bytes` in the middle of `path` with random bytes (a damaged disk or
  transfer). FFmpeg decodes such a file to the end without an error but loses frames."""
  with open(path, "rb") as f:
    data = bytearray(f.read())
  mid = max(len(data) // 2 - num_bytes // 2, 0)
  noise = np.random.default_rng(seed).integers(0, 256, num_bytes, dtype=np.uint8).tobytes()
  data[mid:mid + num_bytes] = noise[: len(data) - mid]
  with open(path, "wb") as f:
    f.write(bytes(data))
  return path


CRASH_MARKER = "crash_worker"


def read_video_or_die(path: str, size: Sequence[int] | None = (128, 171)):
  """Test hook: `decode.read_video`, except that it kills its own process (SIGKILL, as an
  FFmpeg segfault ends a worker) for a file whose name contains `CRASH_MARKER`.

  A test monkeypatches `decode.read_video` with this; `prepare` hands the reader to its
  worker processes with each job, so the workers run it too.
  """
  if CRASH_MARKER in os.path.basename(path):
    os.kill(os.getpid(), signal.SIGKILL)
  return _read_video(path, size)
