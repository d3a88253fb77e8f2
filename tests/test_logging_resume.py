"""Resuming a run's logs: a half-written last line of metrics.jsonl (a kill, a full disk) is
dropped with a warning instead of crashing the resume, and TensorBoard is told to purge the
steps that will be redone."""

import glob
import json
import os
import struct

from tensorboardX.proto import event_pb2

from auxskd_jax.train.logging import MetricLogger


def _events(path):
  """Records of a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
  out = []
  with open(path, "rb") as f:
    while header := f.read(12):
      (length,) = struct.unpack("<Q", header[:8])
      event = event_pb2.Event()
      event.ParseFromString(f.read(length))
      f.read(4)
      out.append(event)
  return out


def test_resume_drops_broken_last_line_and_purges_tensorboard(tmp_path):
  workdir = str(tmp_path)
  logger = MetricLogger(workdir, total_steps=10, clips_per_step=4)
  for step in range(1, 7):
    logger.write(step, {"loss": 1.0 / step})
  logger.close()
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path, "a") as f:
    f.write('{"step": 7, "split": "train", "lo')  # killed mid-write

  resumed = MetricLogger(workdir, total_steps=10, clips_per_step=4, start_step=4)
  resumed.write(5, {"loss": 0.2})
  resumed.close()
  rows = [json.loads(line) for line in open(path)]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
  assert not os.path.exists(path + ".tmp")

  files = sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.*")),
                 key=os.path.getmtime)
  assert len(files) == 2
  starts = [e for e in _events(files[-1]) if e.HasField("session_log")]
  assert starts and starts[0].step == 5  # readers drop the old file's steps >= 5
  assert starts[0].session_log.status == event_pb2.SessionLog.START


def test_orbax_info_lines_are_hidden_warnings_kept():
  import logging

  from auxskd_jax.train import logging as train_logging

  train_logging.quiet_libraries()
  absl_logger = logging.getLogger("absl")

  def shown(path, level):
    record = logging.LogRecord("absl", level, path, 1, "message", None, None)
    return all(f.filter(record) for f in absl_logger.filters)

  orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "manager.py")
  assert not shown(orbax_file, logging.INFO)
  assert shown(orbax_file, logging.WARNING)
  assert shown(train_logging.__file__, logging.INFO)
  assert logging.getLogger("orbax").getEffectiveLevel() == logging.WARNING
