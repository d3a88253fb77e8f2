"""results.json / results.md / PNG plots and the comparison table."""

import json
import os

import ml_collections

from auxskd_jax import config as config_lib
from auxskd_jax.evaluate import report


def _config(chain):
  c = config_lib.base_config()
  c.method_chain = chain
  c.model.width = 8
  c.data.name = "ucf101/split1"
  c.eval.pretrain_data = "K100"
  return c


def test_results_written_and_table_appended(tmp_path):
  wd = str(tmp_path)
  r1 = report.make_record(_config("auxSKD -> VSPP"), task="retrieval",
                          metrics={"top1": 0.25, "top5": 0.5}, checkpoint="/ck/a")
  json_path, md_path = report.write_results(wd, r1)
  assert json.load(open(json_path))["metrics"] == {"top1": 0.25, "top5": 0.5}
  r2 = report.make_record(_config(""), task="retrieval", metrics={"top1": 0.125, "top5": 0.5},
                          checkpoint="")
  report.write_results(wd, r2)
  lines = open(md_path).read().splitlines()
  assert lines[0].startswith("| Method | Encoder |") and "top1 (%)" in lines[0]
  assert len(lines) == 4  # header, rule, two rows (same columns: one table)
  assert "| auxSKD -> VSPP | r21d_10 (width 8) | K100 | retrieval | ucf101/split1 |" in lines[2]
  assert "25.00" in lines[2] and "12.50" in lines[3] and "random init" in lines[3]
  assert json.load(open(json_path))["method_chain"] == "random init"  # last one wins
  # Different metric columns start a new table rather than misaligning rows.
  r3 = report.make_record(_config("VSPP"), task="finetune", metrics={"video_top1": 0.9},
                          checkpoint="/ck/b")
  report.write_results(wd, r3)
  text = open(md_path).read()
  assert text.count("| Method |") == 2 and "90.00" in text


def test_comparison_table_union_of_metrics(tmp_path):
  a = report.make_record(_config("VSPP"), task="finetune", metrics={"video_top1": 0.5},
                         checkpoint="x")
  b = report.make_record(_config("auxSKD -> VSPP"), task="finetune",
                         metrics={"video_top1": 0.75, "clip_top1": 0.6}, checkpoint="y")
  report.write_results(str(tmp_path / "a"), a)
  report.write_results(str(tmp_path / "b"), b)
  table = report.comparison_table(report.load_results([str(tmp_path / "a"), str(tmp_path / "b")]))
  rows = table.splitlines()
  assert "video_top1 (%)" in rows[0] and "clip_top1 (%)" in rows[0]
  assert "| 50.00 | - |" in rows[2] and "| 75.00 | 60.00 |" in rows[3]


def test_load_results_missing_file_is_clear(tmp_path):
  try:
    report.load_results([str(tmp_path)])
  except FileNotFoundError as e:
    assert "results.json" in str(e)
  else:
    raise AssertionError("expected FileNotFoundError")


def test_plots(tmp_path):
  png = report.plot_topk(str(tmp_path / "topk.png"),
                         {"random": {1: 0.1, 5: 0.3, 10: 0.4}, "VSPP": {"1": 0.2, "5": 0.5, "10": 0.6}})
  assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  metrics = tmp_path / "metrics.jsonl"
  with open(metrics, "w") as f:
    for s in range(5):
      f.write(json.dumps({"step": s, "loss": 1.0 / (s + 1), "accuracy": 0.1 * s, "note": "x"}) + "\n")
    f.write('{"step": 5, "loss"')  # a torn last line from a killed run
  curves = report.plot_training_curves(str(metrics), str(tmp_path / "curves.png"))
  assert curves and os.path.getsize(curves) > 1000
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  assert report.plot_training_curves(str(empty), str(tmp_path / "none.png")) is None
  assert not os.path.exists(tmp_path / "none.png")


def test_training_series_keeps_evaluator_rows_apart(tmp_path):
  rows = [{"step": 10, "split": "train", "loss": 2.0, "epoch": 0.5},
          {"step": 20, "split": "train", "loss": 1.5, "epoch": 1.0},
          {"step": 20, "split": "val", "clip_top1": 0.4, "loss": 1.9},
          {"step": 20, "split": "knn", "top1": 0.3},
          {"step": 30, "loss": 1.2}]  # no split: training
  series = report.training_series(rows)
  assert series["loss"] == [(10, 2.0), (20, 1.5), (30, 1.2)]
  assert series["val/loss"] == [(20, 1.9)] and series["val/clip_top1"] == [(20, 0.4)]
  assert series["knn/top1"] == [(20, 0.3)]
  metrics = tmp_path / "metrics.jsonl"
  metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert report.plot_training_curves(str(metrics), str(tmp_path / "c.png"),
                                     keys=["val/clip_top1", "absent"])
