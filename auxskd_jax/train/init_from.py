"""Initialising a pretext method's backbone from another run or a PyTorch `.pth` (lenient).

A thin wrapper over `auxskd_jax.pretrained.load_backbone(strict=False)`: every layer whose
name and shape match is copied, heads included (auxSKD's 128-d head does not fit VSPP's
speed/segment heads, so those keep their fresh values), and the report says what was loaded
and what was not, so a wrong checkpoint is caught at the start of a run.
"""

from __future__ import annotations

import os
from typing import Any

from auxskd_jax import pretrained
from auxskd_jax.pretrained import MIN_MATCHED_FRACTION, TORCH_SUFFIXES, LoadReport

__all__ = ["LoadReport", "MIN_MATCHED_FRACTION", "TORCH_SUFFIXES", "load_encoder",
           "merge_matching"]


def merge_matching(source: Any, target_variables: Any, name: str = "checkpoint"
                   ) -> tuple[dict[str, Any], LoadReport]:
  """Copies every `source` leaf whose path and shape match into `target_variables`."""
  return pretrained.merge(source, target_variables, heads=pretrained.ALL_HEADS, name=name)


def load_encoder(path: str, target_variables: Any, *, model_name: str | None = None,
                 trust_pickle: bool = False, flag: str = "train.init_from"
                 ) -> tuple[dict[str, Any], LoadReport]:
  """`target_variables` ({'params', 'batch_stats'} of a backbone) updated from `path`.

  `path`: one of our workdirs / checkpoint folders, or a PyTorch `.pth` in any of the
  authors' formats (then `model_name`, the backbone's `models.build` name, is needed for the
  key conversion). Raises ConfigError (a ValueError) naming the layers when too little of the
  model is found in the checkpoint.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"--config.{flag}={path!r} does not exist.")
  return pretrained.load_backbone(path, target_variables, model_name=model_name, strict=False,
                                  heads=pretrained.ALL_HEADS, flag=flag,
                                  trust_pickle=trust_pickle)
