"""The host input pipeline: batches of frame windows from a `VideoSource`, with grain.

The only host-side randomness is where windows start; it is a function of (seed, epoch, video
index), so resuming, sharding over hosts and any number of workers give the same data. A batch
plan (which videos go into batch k of this shard) is pure arithmetic on k, which makes the
dataset random-access and grain's iterator state an exact resume point.

Global order: the stream is epoch 0's order, then epoch 1's, ... (each a permutation of the
videos from `seed` and the epoch when shuffling), cut into global batches of
`batch_size * shard_count` positions; process `shard_index` of `shard_count` takes the
`shard_index`-th block of `batch_size` positions of every global batch. Its local devices split
that block in order, so global device d always sees the same examples whatever the number of
processes (a 2 x 2 run sees what a 1 x 4 run sees).
"""

from __future__ import annotations

import functools
import math
import sys

import grain
import numpy as np

from auxskd_jax.data import jpeg
from auxskd_jax.data.reader import VideoSource

START_MODES = ("random", "uniform", "center", "zero")
_INFINITE = sys.maxsize // 4


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
  if not shuffle:
    return np.arange(n, dtype=np.int64)
  return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


class _BatchPlans(grain.MapDataset):
  """Batch k of this shard -> int64 [B, 2] rows (video index or -1 for padding, epoch)."""

  def __init__(self, n: int, *, batch_size: int, seed: int, shuffle: bool,
               num_epochs: int | None, drop_remainder: bool, shard_index: int, shard_count: int):
    super().__init__()
    self._n, self._b, self._seed, self._shuffle = n, batch_size, seed, shuffle
    self._shard, self._count = shard_index, shard_count
    total = n * num_epochs if num_epochs is not None else None
    self._total = total
    if total is None:
      self._len = _INFINITE
    else:
      # Every shard yields the same number of batches (hosts must stay in step).
      self._len = num_batches(n, batch_size=batch_size, num_epochs=num_epochs,
                              drop_remainder=drop_remainder, shard_count=shard_count)

  def __len__(self) -> int:
    return self._len

  def __str__(self) -> str:
    return f"_BatchPlans(n={self._n}, batch={self._b}, shard={self._shard}/{self._count})"

  def __getitem__(self, k):
    if isinstance(k, slice):
      return self.slice(k)
    if not 0 <= k < self._len:
      raise IndexError(k)
    plan = np.full((self._b, 2), -1, np.int64)
    for j in range(self._b):
      pos = (k * self._count + self._shard) * self._b + j
      if self._total is not None and pos >= self._total:
        continue
      epoch, within = divmod(pos, self._n)
      plan[j] = (_epoch_order(self._n, self._seed, epoch, self._shuffle)[within], epoch)
    return plan


def window_starts(num_frames: int, views: int, window_len: int, start_mode: str,
                  rng: np.random.Generator | None) -> np.ndarray:
  """int32 [views] first frames. 'random': independent, uniform in [0, max(n - W, 0)] (a short
  video starts anywhere and loops); 'uniform': evenly spaced over the video (eval);
  'center': the middle window; 'zero': frame 0.
  """
  last = max(num_frames - window_len, 0)
  if start_mode == "random":
    high = last + 1 if num_frames >= window_len else num_frames
    return rng.integers(0, high, size=views).astype(np.int32)
  if start_mode == "uniform":
    return np.round(np.linspace(0, last, views)).astype(np.int32)
  if start_mode == "center":
    return np.full(views, last // 2, np.int32)
  if start_mode == "zero":
    return np.zeros(views, np.int32)
  raise ValueError(f"start_mode {start_mode!r}: use one of {START_MODES}")


class _LoadBatch:
  """Plan -> batch dict (DESIGN.md "Data"), decoding each needed JPEG once into the batch."""

  def __init__(self, source: VideoSource, views: int, window_len: int, start_mode: str,
               seed: int):
    self.source, self.views, self.window_len = source, views, window_len
    self.start_mode, self.seed = start_mode, seed
    self.height, self.width = source.frame_shape

  def __call__(self, plan: np.ndarray) -> dict[str, np.ndarray]:
    b, v, w = len(plan), self.views, self.window_len
    windows = np.empty((b, v, w, self.height, self.width, 3), np.uint8)
    out = {"windows": windows, "num_frames": np.zeros(b, np.int32),
           "label": np.full(b, -1, np.int32), "index": np.full(b, -1, np.int32),
           "starts": np.zeros((b, v), np.int32), "mask": plan[:, 0] >= 0}
    for row, (video, epoch) in enumerate(plan):
      if video < 0:
        windows[row] = 0
        continue
      record = self.source.record(int(video))
      frames = record["frames"]
      n = len(frames)
      if n == 0:
        raise ValueError(f"{self.source!r}: video {video} has no frames; re-run prepare.")
      rng = np.random.default_rng([self.seed, int(epoch), int(video)])
      starts = window_starts(n, v, w, self.start_mode, rng)
      label = record.get("label")
      out["num_frames"][row] = n
      out["label"][row] = int(label[0]) if label is not None and len(label) else -1
      out["index"][row] = video
      out["starts"][row] = starts
      done: dict[int, tuple[int, int]] = {}
      for vi, start in enumerate(starts):
        for j in range(w):
          f = (int(start) + j) % n
          if f in done:
            windows[row, vi, j] = windows[row][done[f]]
          else:
            jpeg.decode_into(frames[f], windows[row, vi, j])
            done[f] = (vi, j)
    return out


def make_loader(source: VideoSource, *, batch_size: int, views: int = 1, window_len: int = 16,
                start_mode: str = "random", seed: int = 0, shuffle: bool = True,
                num_epochs: int | None = None, drop_remainder: bool = True,
                shard_index: int = 0, shard_count: int = 1, workers: int = 0,
                threads: int = 1) -> grain.DatasetIterator:
  """An iterator of numpy batch dicts (`windows, num_frames, label, index, starts, mask`).

  `num_epochs=None` repeats forever. `drop_remainder=False` pads the last batch with
  `mask=False` rows (every shard yields the same number of batches). `workers` > 0 decodes in
  that many processes; `threads` reads batches concurrently in each. The iterator's
  `get_state()` / `set_state()` resume exactly.
  """
  if start_mode not in START_MODES:
    raise ValueError(f"start_mode {start_mode!r}: use one of {START_MODES}")
  if batch_size <= 0 or views <= 0 or window_len <= 0:
    raise ValueError(f"batch_size, views and window_len must be positive, got "
                     f"{batch_size}, {views}, {window_len}")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} must be in [0, shard_count={shard_count})")
  if len(source) == 0:
    raise ValueError(f"{source!r} is empty")
  if num_epochs is None and not drop_remainder:
    raise ValueError("drop_remainder=False (padded eval batches) needs a finite num_epochs")
  plans = _BatchPlans(len(source), batch_size=batch_size, seed=seed, shuffle=shuffle,
                      num_epochs=num_epochs, drop_remainder=drop_remainder,
                      shard_index=shard_index, shard_count=shard_count)
  ds = plans.map(_LoadBatch(source, views, window_len, start_mode, seed))
  threads = max(1, int(threads))
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                               prefetch_buffer_size=2 * threads))
  if workers > 0:
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain's worker code reads its absl flags' defaults
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(it_ds)


def num_batches(num_videos: int, *, batch_size: int, num_epochs: int = 1,
                drop_remainder: bool = True, shard_count: int = 1) -> int:
  """How many batches each shard's loader yields for a finite `num_epochs`."""
  total = num_videos * num_epochs
  if drop_remainder:
    return total // (batch_size * shard_count)
  return math.ceil(total / (batch_size * shard_count))

