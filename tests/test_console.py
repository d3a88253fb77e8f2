"""What a run prints: one line per log interval, no escape codes when output is not a terminal,
a progress bar only on one, no TFDS chatter while preparing, and one line per checkpoint load
(the per-layer list behind --verbose)."""

import io
import logging
import os
import subprocess
import sys

import numpy as np

from auxskd_jax import pretrained
from auxskd_jax.train.logging import MetricLogger

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.width=8", "--config.clip.clip_len=8", "--config.clip.crop_size=16",
        "--config.train.batch_size=4", "--config.train.log_every=1",
        "--config.train.num_steps=2", "--config.train.init_from="]


def _vspp(workdir, data, *extra):
  data_dir, name = data
  out = subprocess.run(
      [sys.executable, "main.py", "--config=vspp_r21d_k100", f"--workdir={workdir}",
       f"--config.data.data_dir={data_dir}", f"--config.data.name={name}", *TINY, *extra],
      cwd=_ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout + out.stderr


def test_run_output_is_plain_lines_and_one_load_line(tmp_path, tiny_prepared):
  first = _vspp(tmp_path / "a", tiny_prepared)
  assert "\x1b" not in first and "\r" not in first  # not a terminal: no bar, no escapes
  steps = [line for line in first.splitlines() if "step 1/2" in line or "step 2/2" in line]
  assert len(steps) == 2, first[-3000:]
  assert "- clips/s" in steps[0] and "ETA -" in steps[0]  # nothing timed at step 1 yet
  assert "- clips/s" not in steps[1]
  second = _vspp(tmp_path / "b", tiny_prepared, f"--config.train.init_from={tmp_path / 'a'}")
  loads = [line for line in second.splitlines() if "init_from" in line and "loaded" in line]
  assert len(loads) == 1 and "skipped" in loads[0] and str(tmp_path / "a") in loads[0]
  assert "loaded layers" not in second
  verbose = _vspp(tmp_path / "c", tiny_prepared, f"--config.train.init_from={tmp_path / 'a'}",
                  "--verbose")
  assert "loaded layers: " in verbose and "conv1/spatial_conv" in verbose


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch):
  plain = io.StringIO()
  monkeypatch.setattr(sys, "stderr", plain)
  MetricLogger(str(tmp_path / "a"), total_steps=4, clips_per_step=2).close()
  assert plain.getvalue() == ""
  terminal = _Terminal()
  monkeypatch.setattr(sys, "stderr", terminal)
  logger = MetricLogger(str(tmp_path / "b"), total_steps=4, clips_per_step=2)
  logger.write(2, {"loss": 1.0})
  logger.close()
  assert "2/4" in terminal.getvalue() and "\r" in terminal.getvalue()


def test_load_report_is_one_line_unless_verbose():
  target = {"params": {"conv1": {"kernel": np.zeros((3, 3))}, "linear": {"kernel": np.zeros(2)}},
}
  source = {"params": {"conv1": {"kernel": np.ones((3, 3))}, "extra": {"w": np.ones(1)}}}
  _, report = pretrained.merge(source, target, heads=())
  line = report.summary()
  assert line.count("\n") == 0 and "loaded 1 arrays, skipped 1" in line
  assert "1 unused" in line and "--verbose" in line
  detailed = report.summary(verbose=True)
  assert "loaded layers: conv1" in detailed and "unused from checkpoint: params/extra/w" in detailed


def test_prepare_has_no_tfds_chatter(tmp_path, capfd, caplog):
  from auxskd_jax.data import prepare
  from auxskd_jax.testing import synthetic

  sys.path.insert(0, _ROOT)
  from configs import prepare as prepare_config

  videos, lists = synthetic.make_ucf101_tree(str(tmp_path / "src"), groups=1,
                                             clips_per_group=1, num_frames=(8, 10))
  config = prepare_config.get_config()
  config.update(dict(builder="ucf101", source_dir=videos, splits_dir=lists, workers=1,
                     data_dir=str(tmp_path / "data"), split=1, resize=(16, 20)))
  caplog.set_level(logging.INFO)
  prepare.run(config, str(tmp_path / "work"))
  out, err = capfd.readouterr()
  for chatter in ("Downloading and preparing", "downloaded and prepared", "Generating splits",
                  "Shuffling", "\x1b", "\r"):
    assert chatter not in out + err, (chatter, out + err)
  assert "videos found" in err and "written" in err
  assert not [r for r in caplog.records
              if f"{os.sep}tensorflow_datasets{os.sep}" in (r.pathname or "")]
