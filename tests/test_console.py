"""What a run prints: a progress bar only on a terminal, and one line per checkpoint load (the
per-layer list behind --verbose)."""

import io
import sys

import numpy as np

from auxskd_jax import weights as pretrained
from auxskd_jax.train.logging import MetricLogger



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


