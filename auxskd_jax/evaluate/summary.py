"""The results of a chain of runs (the demo, a pipeline): one row per initialisation and
downstream dataset, as results.json, results.md and results.png.

A row merges the records of one initialisation's downstream evaluations on one dataset
(fine-tune, retrieval, linear probe; each the `metrics` of the task's results.json, averaged
over the official splits that were run) with the end metrics of the pretext training that made
the initialisation.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Mapping

from auxskd_jax.evaluate import report

# Downstream task -> the row part its metrics go to.
PARTS = {"finetune": "finetune", "retrieval": "retrieval", "linear_probe": "probe"}


def _pct(value: float | None) -> str:
  return "-" if value is None else f"{100.0 * value:.1f}"


def last_train_metrics(workdir: str) -> dict[str, float]:
  """A pretext run's last logged training metrics (its loss and accuracies), from the loop's
  metrics.jsonl; {} if there is none."""
  path = os.path.join(workdir, "metrics.jsonl")
  rows = [r for r in report.read_metrics(path) if r.get("split", "train") == "train"] \
      if os.path.exists(path) else []
  if not rows:
    return {}
  return {k: float(v) for k, v in rows[-1].items()
          if (k == "loss" or k.startswith("accuracy")) and isinstance(v, (int, float))}


def rows(finetune: Mapping[str, Mapping[str, Any]], retrieval: Mapping[str, Mapping[str, Any]],
         probe: Mapping[str, Mapping[str, Any]], pretrain: Mapping[str, Mapping[str, float]]
         ) -> list[dict[str, Any]]:
  """Merges each init's fine-tune, retrieval and linear-probe records (and its pretext-task
  end metrics), for one downstream dataset."""
  out = []
  for init in finetune:
    out.append({"init": init, "finetune": dict(finetune[init]["metrics"]),
                "retrieval": dict(retrieval[init]["metrics"]),
                "probe": dict(probe[init]["metrics"]),
                "pretrain": dict(pretrain.get(init, {}))})
  return out


def dataset_of(name: str) -> tuple[str, str]:
  """('ucf101', 'split1') of a data.name 'ucf101/split1'; (name, '') without an official
  split."""
  match = re.match(r"^(.*)/(split\d+)$", name)
  return (match.group(1), match.group(2)) if match else (name, "")


def _mean(dicts: list[Mapping[str, float]]) -> dict[str, float]:
  keys = sorted(set().union(*dicts)) if dicts else []
  return {k: sum(d[k] for d in dicts if k in d) / sum(1 for d in dicts if k in d) for k in keys}


def collect(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Rows from downstream records (each a task's results record, with `pretrain`: the end
  metrics of the pretext run it started from), in the order inits and datasets first appear;
  a metric run on several splits is their mean (`splits` lists them)."""
  groups: dict[tuple[str, str], dict[str, Any]] = {}
  for r in records:
    dataset, split = dataset_of(str(r.get("downstream", "")))
    row = groups.setdefault((r["method_chain"], dataset), {
        "init": r["method_chain"], "dataset": dataset, "splits": [],
        "_parts": {p: [] for p in PARTS.values()}, "pretrain": {}})
    row["_parts"][PARTS[r["task"]]].append(dict(r["metrics"]))
    if split and split not in row["splits"]:
      row["splits"].append(split)
    row["pretrain"] = row["pretrain"] or dict(r.get("pretrain", {}))
  out = []
  for row in groups.values():
    parts = row.pop("_parts")
    row.update({p: _mean(v) for p, v in parts.items()})
    row["splits"] = sorted(row["splits"])
    out.append(row)
  return out


def _pretext(p: Mapping[str, float]) -> str:
  accs = sorted(k for k in p if k.startswith("accuracy"))
  return " / ".join(_pct(p[k]) for k in accs) if accs else "-"


def _label(row: Mapping[str, Any], several: bool) -> str:
  return f"{row['init']} ({row['dataset']})" if several else row["init"]


def markdown(table: list[dict[str, Any]], header: str) -> str:
  several = len({r.get("dataset", "") for r in table}) > 1
  ks = sorted({int(k[3:]) for r in table for k in r["retrieval"] if k.startswith("top")})
  names = sorted({k.removeprefix("accuracy").lstrip("_") or "accuracy" for r in table
                  for k in r["pretrain"] if k.startswith("accuracy")})
  cols = ["Initialisation"] + (["Dataset"] if several else []) + [
      "Fine-tune video top-1 (%)", "Fine-tune clip top-1 (%)", "Linear probe top-1 (%)"] + [
          f"Retrieval top-{k} (%)" for k in ks] + [
              f"Pretext accuracy at end ({' / '.join(names) or '-'}, %)"]
  lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in table:
    cells = [r["init"]] + ([r["dataset"]] if several else []) + [
        _pct(r["finetune"].get("video_top1")), _pct(r["finetune"].get("clip_top1")),
        _pct(r["probe"].get("video_top1"))]
    cells += [_pct(r["retrieval"].get(f"top{k}")) for k in ks] + [_pretext(r["pretrain"])]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(path: str, table: list[dict[str, Any]], title: str) -> str:
  """Left: fine-tune and linear-probe video top-1 per row; right: retrieval top-k curves."""
  plt = report._pyplot()  # the shared Agg set-up
  several = len({r.get("dataset", "") for r in table}) > 1
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9 + 1.2 * several * len(table) / 3, 3.6))
  names = [_label(r, several) for r in table]
  width = 0.38
  for j, (label, part, colour) in enumerate((("fine-tune", "finetune", "#4c72b0"),
                                             ("linear probe", "probe", "#dd8452"))):
    values = [100.0 * r.get(part, {}).get("video_top1", 0.0) for r in table]
    bars = ax1.bar([i + (j - 0.5) * width for i in range(len(names))], values, width,
                   color=colour, label=label)
    ax1.bar_label(bars, fmt="%.1f", fontsize=7)
  ax1.set_xticks(range(len(names)), names, fontsize=7 if several else 8,
                 rotation=30 if several else 0, ha="right" if several else "center")
  ax1.set_ylabel("video top-1 (%)")
  ax1.set_title("Classification (test)")
  ax1.set_ylim(0, 100)
  ax1.legend(fontsize=8)
  for r, name in zip(table, names):
    ks = sorted(int(k[3:]) for k in r["retrieval"] if k.startswith("top"))
    if ks:
      ax2.plot(ks, [100.0 * r["retrieval"][f"top{k}"] for k in ks], marker="o", label=name)
  ax2.set_xscale("log")
  ax2.set_xlabel("k")
  ax2.set_ylabel("top-k accuracy (%)")
  ax2.set_title("Retrieval (train -> test)")
  ax2.set_ylim(0, 100)
  ax2.grid(True, alpha=0.3)
  if any(r["retrieval"] for r in table):
    ax2.legend(fontsize=7 if several else 8)
  fig.suptitle(report.fit_title(title, 100), fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _same_as_written(paths: Mapping[str, str], table: list[dict[str, Any]], md: str) -> bool:
  """Whether the workdir's results already hold these rows and this table (header included),
  with their plot: a finished chain run again (every stage skipped) then keeps its plot, which
  took seconds to redraw (matplotlib's import and layout) and would come out the same."""
  try:
    with open(paths["json"]) as f:
      rows = json.load(f)["rows"]
    with open(paths["md"]) as f:
      same_md = f.read() == md
  except (OSError, ValueError, KeyError, TypeError):
    return False
  return same_md and os.path.isfile(paths["png"]) and \
      rows == json.loads(json.dumps(table, sort_keys=True))


def write(workdir: str, table: list[dict[str, Any]], header: str,
          info: Mapping[str, Any]) -> dict[str, str]:
  """Writes results.json, results.md and results.png into `workdir` (the plot only when the
  rows or header changed); returns their paths."""
  paths = {"json": os.path.join(workdir, "results.json"),
           "md": os.path.join(workdir, "results.md"),
           "png": os.path.join(workdir, "results.png")}
  md = markdown(table, header)
  keep_plot = _same_as_written(paths, table, md)
  with open(paths["json"], "w") as f:
    json.dump({"info": dict(info), "rows": table}, f, indent=2, sort_keys=True)
  with open(paths["md"], "w") as f:
    f.write(md)
  if not keep_plot:
    plot(paths["png"], table, header)
  return paths
