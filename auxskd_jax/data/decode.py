"""Decoding source videos (PyAV) and frame folders into resized JPEG frames.

Used by `prepare` in worker processes; no TensorFlow here. Failures raise `DecodeError` with
a reason that ends up in `prepare_report.json`. `read_video` also says how many frames the
container declares, because FFmpeg decodes a truncated or damaged file without any error: only
the count shows what was lost (`prepare` decides to keep or skip it, see docs/DATA.md).
"""

from __future__ import annotations

import dataclasses
import glob
import io
import os
from typing import Sequence

import av
import numpy as np
from PIL import Image


class DecodeError(Exception):
  """A source video or frame folder that cannot give frames; the message says why."""


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
  """JPEG bytes of one uint8 [H, W, 3] RGB frame (we encode, so TFDS stores them as is)."""
  buf = io.BytesIO()
  Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def _resize(frame: np.ndarray, size: Sequence[int] | None) -> np.ndarray:
  if size is None or tuple(frame.shape[:2]) == tuple(size):
    return frame
  return np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.BILINEAR))


def resize_frames(frames: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """uint8 `[T, H, W, 3]` frames resized (bilinear) to `size` (H, W), as decoding resizes."""
  return np.stack([_resize(np.asarray(f), size) for f in frames])


@dataclasses.dataclass
class DecodedVideo:
  """What decoding one source video gave.

  `declared_frames` is the container's frame count (or duration x frame rate when it has
  none; 0 when it says neither). `error` is set when the decoder stopped early with an error
  after `len(frames)` frames; a file damaged mid-way usually decodes to the end without one
  and only shows as `len(frames) < declared_frames`.
  """
  frames: np.ndarray  # uint8 [T, H, W, 3]
  fps: float
  declared_frames: int = 0
  error: str = ""

  @property
  def num_frames(self) -> int:
    return int(self.frames.shape[0])


def declared_frames(container, stream) -> int:
  """Frames the container says the stream has: its frame count, else duration x rate, else 0."""
  if stream.frames and stream.frames > 0:
    return int(stream.frames)
  rate = stream.average_rate or stream.guessed_rate
  if not rate:
    return 0
  if stream.duration and stream.time_base:
    return int(round(float(stream.duration * stream.time_base * rate)))
  if container.duration:
    return int(round(container.duration / av.time_base * float(rate)))
  return 0


def read_video(path: str, size: Sequence[int] | None = (128, 171)) -> DecodedVideo:
  """All frames of `path` that decode, resized to `size` (H, W; None keeps the source size).

  Raises DecodeError when no frame decodes; an error after some frames is returned in
  `DecodedVideo.error` with the frames before it, so the caller can judge the loss.
  """
  if not os.path.isfile(path):
    raise DecodeError("file not found")
  if os.path.getsize(path) == 0:
    raise DecodeError("empty file (0 bytes)")
  frames, fps, declared, error = [], 0.0, 0, ""
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise DecodeError("no video stream (zero frames)")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      fps = float(stream.average_rate or stream.guessed_rate or 0.0)
      declared = declared_frames(container, stream)
      for frame in container.decode(stream):
        if size is None:
          frames.append(frame.to_ndarray(format="rgb24"))
        else:
          frames.append(frame.to_ndarray(format="rgb24", width=int(size[1]),
                                         height=int(size[0]), interpolation="BILINEAR"))
  except DecodeError:
    raise
  except (av.FFmpegError, ValueError, OSError, IndexError) as e:
    if not frames:
      raise DecodeError(f"undecodable: {type(e).__name__}: {e}") from e
    error = f"{type(e).__name__}: {e}"
  if not frames:
    raise DecodeError("zero frames decoded")
  return DecodedVideo(np.stack(frames), fps, declared, error)


def decode_video(path: str, size: Sequence[int] | None = (128, 171)) -> tuple[np.ndarray, float]:
  """All frames of `path` as uint8 [T, H, W, 3] RGB resized to `size` (H, W), and the fps.

  Strict: a decoder error after some frames raises DecodeError (`read_video` returns them).
  """
  video = read_video(path, size)
  if video.error:
    raise DecodeError(f"truncated or corrupt after {video.num_frames} frames: {video.error}")
  return video.frames, video.fps


def frame_files(directory: str) -> list[str]:
  """The JPEG frames of a reference-style frame folder, in frame order."""
  files = sorted(glob.glob(os.path.join(directory, "*.jpg")) +
                 glob.glob(os.path.join(directory, "*.jpeg")) +
                 glob.glob(os.path.join(directory, "*.png")))
  return files


def read_frame_folder(directory: str, size: Sequence[int] | None = (128, 171),
                      expected: int | None = None, fps: float = 25.0) -> DecodedVideo:
  """Frames of `<directory>/frame000001.jpg ...` resized to `size`, like `read_video`.

  `expected` (the list file's count) is the declared length: only the first `expected` files
  are read, and fewer files, or an unreadable frame (which ends the video there, as a decoder
  error does), show as a shortfall for the caller to judge.
  """
  if not os.path.isdir(directory):
    raise DecodeError("frame folder not found")
  files = frame_files(directory)
  if not files:
    raise DecodeError("frame folder holds no .jpg/.png frames")
  if expected:
    files = files[:expected]
  frames, error = [], ""
  for f in files:
    try:
      with Image.open(f) as im:
        frames.append(_resize(np.asarray(im.convert("RGB")), size))
    except OSError as e:
      error = f"unreadable frame {os.path.basename(f)}: {e}"
      break
  if not frames:
    raise DecodeError(error or "zero frames decoded")
  shapes = {fr.shape for fr in frames}
  if len(shapes) != 1:
    raise DecodeError(f"frames differ in size {sorted(shapes)}; pass --config.resize")
  return DecodedVideo(np.stack(frames), fps, int(expected or 0), error)


def decode_frame_folder(directory: str, size: Sequence[int] | None = (128, 171),
                        expected: int | None = None) -> np.ndarray:
  """Frames of a frame folder as uint8 [T, H, W, 3]; strict: any shortfall raises DecodeError."""
  video = read_frame_folder(directory, size, expected)
  if video.error:
    raise DecodeError(video.error)
  if expected is not None and video.num_frames < expected:
    raise DecodeError(f"list says {expected} frames but the folder holds {video.num_frames}")
  return video.frames
