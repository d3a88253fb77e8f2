"""Results files every evaluation leaves in its workdir, plots, and comparison tables.

Each evaluation writes `results.json` (the whole record, overwritten) and appends one row to
`results.md` (a markdown table that grows over runs, so a workdir keeps its history). The
record's keys are fixed by `make_record` so tables from different tasks line up.
"""

from __future__ import annotations

import datetime
import json
import os
import textwrap
from typing import Any, Iterable, Mapping, Sequence

import ml_collections

# Table columns before the metrics, in order, with their record keys.
_COLUMNS = (("Method", "method_chain"), ("Encoder", "encoder"), ("Pretraining data",
            "pretrain_data"), ("Task", "task"), ("Downstream", "downstream"), ("Split", "split"))
_TRAILING = (("Checkpoint", "checkpoint"), ("Date", "date"))


def make_record(config: ml_collections.ConfigDict, *, task: str, metrics: Mapping[str, float],
                checkpoint: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The record of one evaluation: what was evaluated, on what, and the metrics."""
  eval_cfg = config.get("eval", ml_collections.ConfigDict())
  record = {
      "method_chain": config.get("method_chain", "") or "random init",
      "encoder": config.model.name + (f" (width {config.model.width})"
                                      if config.model.width != 64 else ""),
      "pretrain_data": eval_cfg.get("pretrain_data", "") or "-",
      "task": task,
      "downstream": config.data.name,
      "split": f"{config.data.train_split} -> {config.data.test_split}",
      "metrics": {k: float(v) for k, v in metrics.items()},
      "checkpoint": checkpoint or "(none: random init)",
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
  }
  if extra:
    record.update(extra)
  return record


def _is_accuracy(name: str) -> bool:
  return "acc" in name or "top" in name


def _fmt_metric(name: str, value: float) -> str:
  """Accuracies print as percentages, everything else as a plain number."""
  if _is_accuracy(name):
    return f"{100.0 * value:.2f}"
  return f"{value:.4g}"


def _cell(text: Any) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def comparison_table(records: Sequence[Mapping[str, Any]],
                     metric_names: Sequence[str] | None = None) -> str:
  """A markdown table with one row per record; metric columns are the union of all records'.

  Accuracies are shown in percent. A record lacking a metric shows "-". Use it to compare
  inits (random, VSPP, auxSKD -> VSPP) across several results.json files.
  """
  if metric_names is None:
    metric_names = []
    for r in records:
      for name in r.get("metrics", {}):
        if name not in metric_names:
          metric_names.append(name)
  header = [c for c, _ in _COLUMNS] + [_metric_title(m) for m in metric_names] + [
      c for c, _ in _TRAILING]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in records:
    metrics = r.get("metrics", {})
    cells = [_cell(r.get(key, "-")) for _, key in _COLUMNS]
    cells += [_fmt_metric(m, metrics[m]) if m in metrics else "-" for m in metric_names]
    cells += [_cell(r.get(key, "-")) for _, key in _TRAILING]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _metric_title(name: str) -> str:
  return f"{name} (%)" if _is_accuracy(name) else name


def write_results(workdir: str, record: Mapping[str, Any]) -> tuple[str, str]:
  """Writes `results.json` and appends the record's row to `results.md`; returns both paths.

  A new table (with header) starts whenever the metric columns differ from the last table's
  header in the file, so rows never land under the wrong columns.
  """
  os.makedirs(workdir, exist_ok=True)
  json_path = os.path.join(workdir, "results.json")
  with open(json_path, "w") as f:
    json.dump(record, f, indent=2, sort_keys=True)
  md_path = os.path.join(workdir, "results.md")
  table = comparison_table([record]).splitlines()
  header, rule, row = table[0], table[1], table[2]
  last_header = None
  if os.path.exists(md_path):
    with open(md_path) as f:
      for line in f:
        if line.startswith("| Method |"):
          last_header = line.rstrip("\n")
  with open(md_path, "a") as f:
    if last_header != header:
      if last_header is not None:
        f.write("\n")
      f.write(header + "\n" + rule + "\n")
    f.write(row + "\n")
  return json_path, md_path


def load_results(paths: Iterable[str]) -> list[dict[str, Any]]:
  """Reads results.json files (or workdirs holding one), with a clear error when one is missing."""
  records = []
  for path in paths:
    file = os.path.join(path, "results.json") if os.path.isdir(path) else path
    if not os.path.exists(file):
      raise FileNotFoundError(f"{file}: no results.json; run an evaluation task with this workdir "
                              "first.")
    with open(file) as f:
      records.append(json.load(f))
  return records


def _pyplot():
  import matplotlib  # local: matplotlib is slow to import and only plots need it

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def plot_topk(path: str, curves: Mapping[str, Mapping[int, float]],
              title: str = "Retrieval top-k accuracy") -> str:
  """PNG of accuracy against k, one line per named curve (e.g. one per init)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name, acc in curves.items():
    ks = sorted(int(k) for k in acc)
    ax.plot(ks, [100.0 * acc[k] if k in acc else 100.0 * acc[str(k)] for k in ks], marker="o",
            label=name)
  ax.set_xscale("log")
  ax.set_xlabel("k")
  ax.set_ylabel("top-k accuracy (%)")
  ax.set_title(fit_title(title, 48), fontsize=10)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def fit_title(title: str, width: int) -> str:
  """`title` wrapped onto lines of at most `width` characters, so it fits the figure."""
  return "\n".join(textwrap.wrap(title, width)) or title


def read_metrics(metrics_jsonl: str) -> list[dict[str, Any]]:
  """Rows of the loop's `metrics.jsonl`; torn last lines (a killed run) are skipped."""
  rows = []
  with open(metrics_jsonl) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows


def _series_name(split: str, key: str) -> str:
  """A metric's panel title: training metrics as logged, an evaluator's as `<split>/<key>`
  (so fine-tuning's `val/loss` and the training `loss` stay apart)."""
  if split == "train" or "/" in key:
    return key
  return f"{split}/{key}"


def training_series(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
  """`{name: [(step, value), ...]}` of every numeric metric in metrics.jsonl rows, in order.

  Rows are `{"step", "split", **metrics}` as `train.logging.MetricLogger` writes them: `split`
  is "train" or the evaluator's name (`val`, `knn`, ...); a row without one is training.
  """
  series: dict[str, list[tuple[int, float]]] = {}
  for r in rows:
    if "step" not in r:
      continue
    split = str(r.get("split", "train"))
    for k, v in r.items():
      if k in ("step", "split") or isinstance(v, bool) or not isinstance(v, (int, float)):
        continue
      series.setdefault(_series_name(split, k), []).append((r["step"], v))
  return series


# Series metrics.jsonl keeps that are not worth a panel: the step's epoch, the finiteness flag,
# and steps/s (clips/s is plotted).
BOOKKEEPING = ("epoch", "state_finite", "steps_per_sec")
_LABELS = {"loss": "loss", "learning_rate": "learning rate", "clips_per_sec": "clips/s"}


def _curve_order(key: str) -> tuple[int, str]:
  """Training loss first, then the learning rate, evaluations, throughput last."""
  if key == "loss":
    return 0, key
  if key == "learning_rate":
    return 2, key
  if key == "clips_per_sec":
    return 4, key
  return (3 if "/" in key else 1), key


def curve_keys(series: Mapping[str, Any]) -> list[str]:
  """The series `plot_training_curves` shows by default, in panel order."""
  return sorted((k for k in series if k.rsplit("/", 1)[-1] not in BOOKKEEPING),
                key=_curve_order)


def plot_training_curves(metrics_jsonl: str, path: str,
                         keys: Sequence[str] | None = None) -> str | None:
  """PNG of the metrics against step from the loop's metrics.jsonl, one panel each: by default
  the training losses, learning rate, evaluators' metrics (`val/...`, `knn/...`) and
  throughput, without `BOOKKEEPING` series (names as `training_series` gives them).

  Returns None (and writes nothing) when the file has no numeric metrics to plot.
  """
  series = training_series(read_metrics(metrics_jsonl))
  keys = [k for k in (curve_keys(series) if keys is None else keys) if series.get(k)]
  if not keys:
    return None
  plt = _pyplot()
  fig, axes = plt.subplots(len(keys), 1, figsize=(6, 1.9 * len(keys) + 0.4), squeeze=False,
                           sharex=True)
  for ax, key in zip(axes[:, 0], keys):
    points = series[key]
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else "")
    ax.set_title(_LABELS.get(key, key), fontsize=9, loc="left")
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
  axes[-1, 0].set_xlabel("step")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
