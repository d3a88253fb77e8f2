"""Throughput after a timer reset, which series training_curves.png shows, and plot titles that
agree with results.md."""

import json
import time

import matplotlib

matplotlib.use("Agg")

from auxskd_jax.evaluate import report
from auxskd_jax.train.logging import MetricLogger


def _rows(path):
  return [json.loads(line) for line in open(path)]


def test_no_throughput_at_the_reset_step_then_the_measured_one(tmp_path):
  logger = MetricLogger(str(tmp_path), total_steps=20, clips_per_step=4, progress=False)
  time.sleep(0.05)
  logger.reset_timer(1)  # after the first (compiling) step
  logger.write(1, {"loss": 1.0})  # log_every = 1: nothing timed yet
  start = time.time()
  time.sleep(0.2)
  logger.write(5, {"loss": 0.9})  # 4 steps of 4 clips in ~0.2 s
  elapsed = time.time() - start
  logger.write(5, {"top1": 0.5}, prefix="knn")
  logger.reset_timer(5)
  time.sleep(0.1)
  logger.write(7, {"loss": 0.8})
  logger.close()
  first, second, knn, third = _rows(tmp_path / "metrics.jsonl")
  assert "clips_per_sec" not in first and first["loss"] == 1.0
  assert 16 / (elapsed + 0.05) < second["clips_per_sec"] <= 16 / 0.2 + 1e-6
  assert "clips_per_sec" not in knn
  assert 8 / 0.5 < third["clips_per_sec"] <= 8 / 0.1 + 1e-6


def test_training_curves_show_metrics_not_bookkeeping(tmp_path):
  rows = [{"step": 10, "split": "train", "loss": 2.0, "epoch": 0.5, "state_finite": 1.0,
           "learning_rate": 0.1, "clips_per_sec": 30.0, "steps_per_sec": 1.0},
          {"step": 20, "split": "train", "loss": 1.5, "epoch": 1.0, "state_finite": 1.0,
           "learning_rate": 0.1, "clips_per_sec": 31.0, "steps_per_sec": 1.0},
          {"step": 20, "split": "knn", "top1": 0.3},
          {"step": 20, "split": "val", "clip_top1": 0.4, "loss": 1.9}]
  series = report.training_series(rows)
  assert report.curve_keys(series) == ["loss", "learning_rate", "knn/top1", "val/clip_top1",
                                       "val/loss", "clips_per_sec"]
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert report.plot_training_curves(str(path), str(tmp_path / "c.png"))


def test_titles_fit_and_name_the_split_as_results_md(tmp_path, monkeypatch):
  titles = []
  from matplotlib.axes import Axes

  original = Axes.set_title
  monkeypatch.setattr(Axes, "set_title",
                      lambda self, label, *a, **k: titles.append(label) or original(
                          self, label, *a, **k))
  long = "Retrieval on kinetics/k100_with_a_long_name, split train -> test (conv5_maxpool)"
  path = report.plot_topk(str(tmp_path / "t.png"), {"auxSKD": {1: 0.2, 5: 0.4}}, title=long)
  assert open(path, "rb").read(4) == b"\x89PNG"
  assert all(len(line) <= 48 for line in titles[-1].splitlines())
  assert " ".join(titles[-1].split()) == long
  from auxskd_jax.evaluate import summary

  table = [{"init": "random", "finetune": {"video_top1": 0.5}, "probe": {"video_top1": 0.4},
            "retrieval": {"top1": 0.3, "top5": 0.6}, "pretrain": {}}]
  summary.plot(str(tmp_path / "d.png"), table, "x " * 80)
  assert "Retrieval (train -> test)" in titles
