"""The demo's results: one row per initialisation, as results.json, results.md and a PNG."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from auxskd_jax.evaluate import report


def _pct(value: float | None) -> str:
  return "-" if value is None else f"{100.0 * value:.1f}"


def rows(finetune: Mapping[str, Mapping[str, Any]], retrieval: Mapping[str, Mapping[str, Any]],
         probe: Mapping[str, Mapping[str, Any]], pretrain: Mapping[str, Mapping[str, float]]
         ) -> list[dict[str, Any]]:
  """Merges each init's fine-tune, retrieval and linear-probe records (and its pretext-task
  end metrics)."""
  out = []
  for init in finetune:
    out.append({"init": init, "finetune": dict(finetune[init]["metrics"]),
                "retrieval": dict(retrieval[init]["metrics"]),
                "probe": dict(probe[init]["metrics"]),
                "pretrain": dict(pretrain.get(init, {}))})
  return out


def markdown(table: list[dict[str, Any]], header: str) -> str:
  ks = sorted({int(k[3:]) for r in table for k in r["retrieval"] if k.startswith("top")})
  cols = ["Initialisation", "Fine-tune video top-1 (%)", "Fine-tune clip top-1 (%)",
          "Linear probe top-1 (%)"] + [f"Retrieval top-{k} (%)" for k in ks] + [
              "Pretext accuracy at end (speed / segment, %)"]
  lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in table:
    p = r["pretrain"]
    pretext = (f"{_pct(p.get('accuracy_speed'))} / {_pct(p.get('accuracy_segment'))}"
               if p else "-")
    cells = [r["init"], _pct(r["finetune"].get("video_top1")),
             _pct(r["finetune"].get("clip_top1")), _pct(r["probe"].get("video_top1"))]
    cells += [_pct(r["retrieval"].get(f"top{k}")) for k in ks] + [pretext]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(path: str, table: list[dict[str, Any]], title: str) -> str:
  """Left: fine-tune and linear-probe video top-1 per init; right: retrieval top-k curves."""
  plt = report._pyplot()  # the shared Agg set-up
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
  names = [r["init"] for r in table]
  width = 0.38
  for j, (label, part, colour) in enumerate((("fine-tune", "finetune", "#4c72b0"),
                                             ("linear probe", "probe", "#dd8452"))):
    values = [100.0 * r.get(part, {}).get("video_top1", 0.0) for r in table]
    bars = ax1.bar([i + (j - 0.5) * width for i in range(len(names))], values, width,
                   color=colour, label=label)
    ax1.bar_label(bars, fmt="%.1f", fontsize=7)
  ax1.set_xticks(range(len(names)), names, fontsize=8)
  ax1.set_ylabel("video top-1 (%)")
  ax1.set_title("Classification (test)")
  ax1.set_ylim(0, 100)
  ax1.legend(fontsize=8)
  for r in table:
    ks = sorted(int(k[3:]) for k in r["retrieval"] if k.startswith("top"))
    ax2.plot(ks, [100.0 * r["retrieval"][f"top{k}"] for k in ks], marker="o", label=r["init"])
  ax2.set_xscale("log")
  ax2.set_xlabel("k")
  ax2.set_ylabel("top-k accuracy (%)")
  ax2.set_title("Retrieval (train -> test)")
  ax2.set_ylim(0, 100)
  ax2.grid(True, alpha=0.3)
  ax2.legend(fontsize=8)
  fig.suptitle(report.fit_title(title, 100), fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def write(workdir: str, table: list[dict[str, Any]], info: Mapping[str, Any]) -> dict[str, str]:
  """Writes results.json, results.md and results.png into `workdir`; returns their paths."""
  header = (f"Demo: {info['classes']} motion classes, {info['train_videos']} train / "
            f"{info['test_videos']} test videos, pretraining pool {info['pool_videos']} "
            f"videos; {info['backbone']}; chance = {100.0 / info['classes']:.1f}%.")
  paths = {"json": os.path.join(workdir, "results.json"),
           "md": os.path.join(workdir, "results.md"),
           "png": os.path.join(workdir, "results.png")}
  with open(paths["json"], "w") as f:
    json.dump({"info": dict(info), "rows": table}, f, indent=2, sort_keys=True)
  with open(paths["md"], "w") as f:
    f.write(markdown(table, header))
  plot(paths["png"], table, header)
  return paths
