"""Preparing a dataset (the `prepare` task): source videos -> TFDS `array_record` dataset of JPEG frames.

Three resumable stages: scan the source (builder), decode every video in worker processes into
a per-video cache (`<data_dir>/_prepare_cache/...`, skipped when already there), then write the
TFDS dataset from the cache and a per-split metadata index. Every skipped input is listed with
its reason in `prepare_report.json`, whose path is the last line printed; so is every video
that decoded fewer frames than its container declares (kept or skipped by
`min_frame_fraction`). The options that shape the data are stored with the dataset, and a
re-run with other options refuses to reuse it (or rebuilds it with `overwrite=True`).
docs/DATA.md describes these policies.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import multiprocessing
import os
import pickle
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator

import ml_collections

from auxskd_jax.errors import ConfigError, require
from auxskd_jax.data import builders, decode, reader
from auxskd_jax.data.builders.common import DATASET_VERSION, Scan, VideoItem

REPORT_FILE = "prepare_report.json"
# Bumped when the decoded data changes for the same options (invalidates caches and datasets).
FORMAT = 2
# How many short / skipped videos the console summary names (the report lists all).
_SHOWN = 5
# Defaults of keys newer than some hand-built configs (the demo's); configs/prepare.py has them.
_DEFAULTS = {"min_frame_fraction": 0.9, "overwrite": False}


def _option(config: ml_collections.ConfigDict, key: str) -> Any:
  return config.get(key, _DEFAULTS[key])

# (item, cache file or None, reason, meta or None); meta: height, width, fps, num_frames,
# declared_frames, error (see decode.DecodedVideo).
Result = tuple[VideoItem, "str | None", str, "dict[str, Any] | None"]
Job = tuple[VideoItem, str, Any, int, Callable[..., decode.DecodedVideo]]


def validate(config: ml_collections.ConfigDict) -> None:
  require(config.builder in builders.BUILDERS, "builder",
          f"{config.builder!r} is not a builder; choose one of {list(builders.BUILDERS)}.")
  require(bool(config.source_dir), "source_dir", "set it to the folder with the source videos.")
  require(bool(config.data_dir), "data_dir", "set it to where prepared datasets go.")
  require(not config.resize or (len(config.resize) == 2 and all(int(x) > 0 for x in config.resize)),
          "resize", "use (height, width), e.g. (128, 171), or () to keep the source size.")
  require(1 <= int(config.jpeg_quality) <= 100, "jpeg_quality", "must be in 1..100.")
  require(int(config.workers) >= 0, "workers", "0 uses every core; else a positive count.")
  require(0.0 <= float(_option(config, "min_frame_fraction")) <= 1.0, "min_frame_fraction",
          "is a fraction in [0, 1] (0 keeps every partly decodable video, 1 none).")
  if config.builder in ("ucf101", "hmdb51"):
    require(int(config.split) in (1, 2, 3), "split", "UCF101/HMDB51 have official splits 1, 2, 3.")
  if config.builder == "kinetics":
    from auxskd_jax.data.builders import kinetics

    require(config.subset in kinetics.SUBSETS, "subset", f"use one of {list(kinetics.SUBSETS)}.")
  if config.builder == "frame_list":
    require(bool(config.list_files), "list_files", "set it to path or train=path,test=path.")


# ------------------------------------------------------------------ options that shape the data


def _abs(path: str) -> str:
  return os.path.abspath(path) if path else ""


def data_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The options that decide what a prepared dataset holds (stored with it, compared on re-run).

  Where it is written (`data_dir`), how (`workers`, `cache_dir`) and `overwrite` are not here.
  """
  builder = builders.get(config.builder)
  options: dict[str, Any] = {
      "format": FORMAT, "builder": config.builder, "source_dir": _abs(config.source_dir),
      "resize": [int(x) for x in config.resize] if config.resize else None,
      "jpeg_quality": int(config.jpeg_quality),
      "min_frame_fraction": float(_option(config, "min_frame_fraction")),
  }
  for key in builder.OPTIONS:
    value = config[key]
    if key in ("splits_dir", "class_names_file"):
      value = _abs(value)
    elif key == "list_files":
      value = ",".join(f"{s}={_abs(p)}" if s else _abs(p)
                       for s, _, p in (part.rpartition("=") for part in value.split(",")))
    options[key] = value
  return options


def _videos_fingerprint(scan: Scan) -> dict[str, Any]:
  """How many videos the scan found and a digest of (split, id, label): a changed source shows."""
  rows = sorted((i.split, i.video_id, i.label) for i in scan.items)
  return {"count": len(rows), "sha1": hashlib.sha1(json.dumps(rows).encode()).hexdigest()}


def recorded_options(dataset_dir: str) -> dict[str, Any] | None:
  """The options a complete dataset was prepared with; None when there is no complete dataset,
  {} when it records none (prepared before options were recorded)."""
  if not os.path.isfile(os.path.join(dataset_dir, "dataset_info.json")):
    return None
  path = os.path.join(dataset_dir, "metadata.json")
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f).get("prepare_options", {})


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  if not old:
    return ["it records no prepare options (prepared by an older version)"]
  out = []
  for key in sorted(set(old) | set(new)):
    if old.get(key) != new.get(key):
      if key == "videos":
        out.append(f"videos: the source now lists {new[key]['count']} videos (different from "
                   f"the {old.get(key, {}).get('count', '?')} prepared)")
      else:
        out.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
  return out


# ------------------------------------------------------------------ decoding


def _cache_key(item: VideoItem, resize: tuple[int, ...] | None, quality: int) -> str:
  try:
    st = os.stat(item.path)
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
  except OSError:
    stamp = "missing"
  raw = json.dumps([FORMAT, item.path, item.kind, item.expected_frames, stamp, resize, quality])
  return hashlib.sha1(raw.encode()).hexdigest()


def _write_atomic(path: str, data: bytes) -> None:
  tmp = path + f".tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def _decode_item(job: Job) -> Result:
  """Worker: decodes one video into the cache.

  The video reader travels with the job (rather than being looked up here) so a test can swap
  `decode.read_video` for one that kills its worker process (tests/test_data_faults.py);
  production runs always pass `decode.read_video`.
  """
  item, cache_dir, resize, quality, read_video = job
  key = _cache_key(item, resize, quality)
  good, bad = os.path.join(cache_dir, key + ".pkl"), os.path.join(cache_dir, key + ".err")
  meta_file = os.path.join(cache_dir, key + ".json")
  if os.path.isfile(meta_file) and os.path.isfile(good):
    with open(meta_file) as f:
      return item, good, "cached", json.load(f)
  if os.path.isfile(bad):
    with open(bad) as f:
      return item, None, f.read(), None
  try:
    if item.kind == "frames":
      video = decode.read_frame_folder(item.path, resize, item.expected_frames)
    else:
      video = read_video(item.path, resize)
  except decode.DecodeError as e:
    _write_atomic(bad, str(e).encode())
    return item, None, str(e), None
  except Exception as e:  # any other failure of one file must not stop the whole run
    return item, None, f"{type(e).__name__}: {e}", None
  frames = video.frames
  meta = {"height": int(frames.shape[1]), "width": int(frames.shape[2]), "fps": float(video.fps),
          "num_frames": video.num_frames, "declared_frames": int(video.declared_frames),
          "error": video.error}
  record = {"video_id": item.video_id, "label": item.label, "fps": meta["fps"],
            "height": meta["height"], "width": meta["width"],
            "frames": [decode.encode_jpeg(f, quality) for f in frames]}
  _write_atomic(good, pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))
  _write_atomic(meta_file, json.dumps(meta).encode())  # last: marks the cache entry complete
  return item, good, "decoded", meta


def _lost(job: Job, error: BaseException) -> Result:
  return job[0], None, ("the decode worker died while decoding this video (a crash in FFmpeg, "
                        f"or killed, e.g. out of memory): {error}"), None


def _pool_pass(queue: collections.deque, workers: int, in_flight: int,
               ctx) -> Iterator[tuple[Job, Result | None, BaseException | None]]:
  """Runs jobs from `queue` until it is empty or a worker dies.

  Yields (job, result, None) per finished job and, after a worker died (BrokenProcessPool),
  (job, None, error) for every job that was in flight then: one of them killed it.
  At most `in_flight` jobs are submitted at a time, so only those are suspects.
  """
  pool = ProcessPoolExecutor(workers, mp_context=ctx)
  running: dict[Any, Job] = {}
  try:
    while queue or running:
      while queue and len(running) < in_flight:
        job = queue.popleft()
        running[pool.submit(_decode_item, job)] = job
      done, _ = wait(running, return_when=FIRST_COMPLETED)
      broken = None
      for future in done:
        job = running.pop(future)
        try:
          result = future.result()
        except BrokenProcessPool as e:
          broken = e
          yield job, None, e
          continue
        yield job, result, None
      if broken is not None:
        for job in list(running.values()):
          yield job, None, broken
        running.clear()
        return
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def _decode_all(jobs: list[Job], workers: int) -> Iterator[Result]:
  """Yields one result per job, in completion order.

  A worker that dies hard (an FFmpeg segfault) breaks the pool: the jobs in flight then are
  re-run one at a time in a one-worker pool, so the video that kills it again is named and
  recorded as skipped; the rest continue in a fresh pool.
  """
  if workers <= 1:
    for job in jobs:
      yield _decode_item(job)
    return
  ctx = multiprocessing.get_context("spawn")
  todo = collections.deque(jobs)
  while todo:
    suspects: collections.deque = collections.deque()
    with contextlib.closing(_pool_pass(todo, workers, 2 * workers, ctx)) as results:
      for job, result, _ in results:
        if result is None:
          suspects.append(job)
        else:
          yield result
    while suspects:
      with contextlib.closing(_pool_pass(suspects, 1, 1, ctx)) as results:
        for job, result, error in results:
          yield result if result is not None else _lost(job, error)


# ------------------------------------------------------------------ the task


def judge(meta: dict[str, Any], min_fraction: float) -> tuple[bool, str]:
  """(keep, note) for a decoded video: its shortfall against the declared frames, if any.

  `note` is '' for a complete video. A video that decoded fewer than `min_fraction` of its
  declared frames is dropped; one that stopped with a decoder error but has no declared length
  to judge the loss by is dropped too.
  """
  n, declared, error = meta["num_frames"], meta["declared_frames"], meta["error"]
  tail = f"; decoder error: {error}" if error else ""
  if declared and n < declared:
    note = f"decoded {n} of {declared} declared frames ({n / declared:.0%}){tail}"
    if n < min_fraction * declared:
      return False, f"{note}; under --config.min_frame_fraction={min_fraction:g}"
    return True, note
  if error:
    if not declared:
      return False, (f"decoder error after {n} frames and the container declares no length to "
                     f"judge the loss by: {error}")
    return True, f"decoder error after all {n} declared frames: {error}"
  return True, ""


def _check_size(sizes: dict[tuple[int, int], str], meta: dict[str, Any], path: str) -> None:
  """With resize=(), every kept video must share one frame size (the loader batches them)."""
  sizes.setdefault((meta["height"], meta["width"]), path)
  if len(sizes) > 1:
    seen = "; ".join(f"{h}x{w} (e.g. {p})" for (h, w), p in sizes.items())
    raise ConfigError(
        f"--config.resize=() keeps each video's own frame size, but the videos differ: {seen}. "
        "Pass --config.resize=(H,W) to store every video at one size, e.g. "
        "--config.resize=(128,171).")


def _print_summary(report: dict[str, Any]) -> None:
  print(f"{report['name']}: written {report['written']}, skipped {report['skipped_count']}",
        file=sys.stderr)
  short = report["short"]
  if short:
    kept = sum(s["kept"] for s in short)
    print(f"{len(short)} video(s) decoded short of their declared frames or with a decoder error "
          f"({kept} kept, {len(short) - kept} skipped; --config.min_frame_fraction="
          f"{report['options']['min_frame_fraction']:g}):", file=sys.stderr)
    for s in short[:_SHOWN]:
      print(f"  {'kept' if s['kept'] else 'skipped'} {s['path']}: {s['reason']}", file=sys.stderr)
  others = [s for s in report["skipped"] if not s.get("short")]
  if others:
    print(f"{len(others)} input(s) skipped:", file=sys.stderr)
    for s in others[:_SHOWN]:
      print(f"  {s['path']}: {s['reason']}", file=sys.stderr)
  if len(short) > _SHOWN or len(others) > _SHOWN:
    print("  ... (all of them in the report)", file=sys.stderr)
  sys.stderr.flush()


def _reuse(dataset_dir: str, report_path: str) -> dict[str, Any]:
  with open(report_path) as f:
    report = json.load(f)
  for split in report.get("written", {}):
    if not os.path.isfile(os.path.join(dataset_dir, reader.INDEX_FILE.format(split=split))):
      reader.write_index(dataset_dir, split)
  print(f"{report['name']}: already prepared with these options in {dataset_dir}; reusing it",
        file=sys.stderr)
  sys.stderr.flush()
  print(report_path, flush=True)
  return report


def run(config: ml_collections.ConfigDict, workdir: str = "") -> dict[str, Any]:
  """Prepares the dataset in config.data_dir (`workdir` is unused); returns the report (also
  written as prepare_report.json). Call `validate(config)` first."""
  del workdir
  start = time.time()
  builder = builders.get(config.builder)
  config_name = config.config_name or builder.config_name(config)
  name = f"{config.builder}/{config_name}"
  dataset_dir = os.path.join(config.data_dir, config.builder, config_name, DATASET_VERSION)
  options = data_options(config)
  scan = builder.scan(config)
  options["videos"] = _videos_fingerprint(scan)
  previous = recorded_options(dataset_dir)
  report_path = os.path.join(dataset_dir, REPORT_FILE)
  if previous is not None:
    changed = _differences(previous, options)
    if not changed and os.path.isfile(report_path):
      return _reuse(dataset_dir, report_path)
    if changed and not _option(config, "overwrite"):
      raise ConfigError(
          f"--config.overwrite: {name} in {dataset_dir} was prepared with other options ("
          + "; ".join(changed) + "). Pass --config.overwrite=True to rebuild it (the old one is "
          "deleted), delete that folder, or write this one elsewhere with --config.data_dir or "
          "--config.config_name.")
  resize = tuple(int(x) for x in config.resize) if config.resize else None
  cache_dir = config.cache_dir or os.path.join(config.data_dir, "_prepare_cache", config.builder,
                                               config_name)
  os.makedirs(cache_dir, exist_ok=True)
  workers = int(config.workers) or os.cpu_count() or 1
  print(f"{name}: {len(scan.items)} videos found, {len(scan.problems)} source problems; "
        f"decoding with {workers} worker(s)", file=sys.stderr)
  from tqdm import tqdm

  min_fraction = float(_option(config, "min_frame_fraction"))
  jobs = [(item, cache_dir, resize, int(config.jpeg_quality), decode.read_video)
          for item in scan.items]
  results = []
  sizes: dict[tuple[int, int], str] = {}
  with contextlib.closing(_decode_all(jobs, workers)) as decoded, \
      tqdm(total=len(jobs), desc="decoding videos", unit="video", file=sys.stderr,
           mininterval=1.0, disable=not sys.stderr.isatty()) as bar:  # no escape codes in logs
    for result in decoded:
      item, cache_file, _, meta = result
      bar.update()
      if cache_file is not None and resize is None and judge(meta, min_fraction)[0]:
        _check_size(sizes, meta, item.path)
      results.append(result)
  results.sort(key=lambda r: (r[0].split, r[0].video_id))
  skipped = list(scan.problems)
  short = []
  splits: dict[str, list[str]] = {}
  for item, cache_file, reason, meta in results:
    if cache_file is None:
      skipped.append({"path": item.path, "reason": reason})
      continue
    keep, note = judge(meta, min_fraction)
    if note:
      short.append({"path": item.path, "declared_frames": meta["declared_frames"],
                    "decoded_frames": meta["num_frames"], "kept": keep, "reason": note})
    if keep:
      splits.setdefault(item.split, []).append(cache_file)
    else:
      skipped.append({"path": item.path, "reason": note, "short": True})
  report: dict[str, Any] = {
      "builder": config.builder, "name": name, "source_dir": os.path.abspath(config.source_dir),
      "options": options,
      "videos_found": len(scan.items), "written": {s: len(f) for s, f in splits.items()},
      "skipped_count": len(skipped), "skipped": skipped,
      "short_count": len(short), "short_kept": sum(s["kept"] for s in short), "short": short,
      "num_classes": len(scan.class_names) if scan.class_names is not None else 0,
  }
  if not splits:
    path = os.path.join(cache_dir, REPORT_FILE)
    with open(path, "w") as f:
      json.dump(report, f, indent=2)
    raise RuntimeError(f"{config.builder}: no video could be prepared from {config.source_dir} "
                       f"({len(scan.items)} found, {len(skipped)} skipped); see {path}")
  from auxskd_jax.data.builders import tfds_writer  # TensorFlow only from here on

  if previous is not None:  # changed options with overwrite=True, or an unfinished report
    shutil.rmtree(dataset_dir)
  dataset_dir = tfds_writer.write_dataset(config.data_dir, config.builder, config_name,
                                          scan.description, scan.class_names, splits,
                                          metadata={"prepare_options": options})
  for split in splits:
    reader.write_index(dataset_dir, split)
  report["dataset_dir"] = dataset_dir
  report["seconds"] = round(time.time() - start, 1)
  path = os.path.join(dataset_dir, REPORT_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(report, f, indent=2)
  os.replace(path + ".tmp", path)
  _print_summary(report)
  print(path, flush=True)
  return report
