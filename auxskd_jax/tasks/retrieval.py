"""Nearest-neighbour video retrieval (task `retrieval`): test videos query the train videos.

SPEC section 8 and the protocol of VCOP's retrieval tables (which auxSKD's compares with): 10
uniformly spaced clips per video, per-clip features of `eval.feature_layer` averaged per video
('conv5_maxpool': conv5 max-pooled with kernel and stride (1, 2, 2) and flattened, 9216-d for
R(2+1)D at 16x112x112, the protocol's; 'pool': the 512-d pooled features), train videos as the
gallery, test videos as queries, cosine similarity, a hit when any of the top k shares the
query's class, k = 1, 5, 10, 20, 50. results.json records the layer and its dimension. The
encoder comes from `--config.eval.init_from` (any of our checkpoints or a reference `.pth`);
empty means a randomly initialised encoder (the random-init baseline). The computation is
`evaluators.Retrieval`'s, which can also run inside a training loop.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
from absl import logging

from auxskd_jax.errors import require
from auxskd_jax.evaluate import evaluators, report
from auxskd_jax.evaluate.topk import DEFAULT_KS
from auxskd_jax.tasks import Task, common


def _topk_checks(config: ml_collections.ConfigDict) -> None:
  ks = tuple(config.eval.get("topk", DEFAULT_KS))
  require(len(ks) > 0 and all(int(k) >= 1 for k in ks), "eval.topk",
          f"needs positive k values, e.g. {DEFAULT_KS}; got {ks}.")


def validate(config: ml_collections.ConfigDict) -> None:
  """The frozen-feature checks (tasks.common) and the k values."""
  common.validate_feature_task(config, _topk_checks)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Extracts video features of both splits, scores retrieval, writes results and a plot."""
  chief, path, model, variables = common.start_feature_task(config, workdir)
  retrieval = evaluators.retrieval_from_config(config, model)
  acc = retrieval.scores(variables)
  metrics = {f"top{k}": v for k, v in acc.items()}
  record = report.make_record(
      config, task="retrieval", metrics=metrics, checkpoint=path,
      extra={"num_queries": retrieval.num_queries, "num_gallery": retrieval.num_gallery,
             "clips_per_video": int(config.clip.eval_clips),
             "feature_layer": retrieval.feature_layer, "feature_dim": retrieval.feature_dim})
  if chief:
    report.write_results(workdir, record)
    report.plot_topk(os.path.join(workdir, "retrieval_topk.png"),
                     {record["method_chain"]: acc},
                     title=f"Retrieval on {config.data.name}, split {record['split']} "
                           f"({retrieval.feature_layer} features)")
  logging.info("retrieval (%s, %d-d): %s", retrieval.feature_layer, retrieval.feature_dim,
               " ".join(f"top{k}={100 * v:.2f}%" for k, v in acc.items()))
  return record


TASK = Task("retrieval", validate, run)
