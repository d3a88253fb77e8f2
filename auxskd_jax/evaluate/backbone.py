"""The backbone an evaluation starts from: built from the config, then loaded from a checkpoint.

Any of our checkpoints (a workdir or its `checkpoints/` directory: auxSKD student, VSPP, a
fine-tuned model, ...) or a PyTorch `.pth` in the authors' formats can provide the backbone,
through the one loading path `auxskd_jax.pretrained.load_backbone`. For evaluation a partial
load is an error, not a warning (`strict=True`): every backbone layer (everything except the
heads) must come from the checkpoint, otherwise the numbers would describe a half-random
network. The message names the layers that did not load.
"""

from __future__ import annotations

from typing import Any, Iterable

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from auxskd_jax import models, pretrained
from auxskd_jax.config import ConfigError, require

# Top-level module names of the usual heads (SPEC section 2); any top-level linear layer of a
# model's variables (`models.head_names`) counts as a head.
HEAD_NAMES = ("linear", "linear_segment")


def build_and_init(config: ml_collections.ConfigDict, *, num_classes: int | None = None,
                   bn_axis_name: str | None = None, seed: int | None = None,
                   random: bool = True) -> tuple[Any, dict]:
  """The configured backbone (with a `linear` head of `num_classes` if given) and its variables.

  `random=False` gives zeros of the right shapes from `jax.eval_shape`, without compiling the
  initialiser: enough when every layer is about to be loaded from a checkpoint.
  """
  from auxskd_jax.train import encoder as encoder_lib

  model = encoder_lib.build_encoder(config, num_classes=num_classes, bn_axis_name=bn_axis_name)
  x = encoder_lib.dummy_clip(config, batch=1)
  if not random:
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    return model, {"params": zeros["params"], "batch_stats": zeros.get("batch_stats", {})}
  rng = jax.random.PRNGKey(int(config.seed if seed is None else seed))
  return model, encoder_lib.init_variables(model, rng, x)


def frozen_backbone(config: ml_collections.ConfigDict, path: str, key: str) -> tuple[Any, dict]:
  """The headless backbone for feature evaluations, from `path` ('' = random init, warned)."""
  if not path:
    logging.warning("--config.%s is empty: evaluating a RANDOMLY initialised backbone.", key)
    return build_and_init(config)
  model, variables = build_and_init(config, random=False)
  variables, _ = load_backbone(path, variables, key=key, model_name=config.model.name,
                               trust_pickle=pretrained.trust_pickle(config, key))
  return model, variables


def backbone_layers(variables: dict[str, Any]) -> list[str]:
  """'/'-joined names of every backbone parameter and statistic (heads excluded)."""
  heads = set(models.head_names(variables)) | set(HEAD_NAMES)
  names = []
  for collection in ("params", "batch_stats"):
    flat = traverse_util.flatten_dict(variables.get(collection, {}), sep="/")
    names += [f"{collection}/{k}" for k in flat if k.split("/")[0] not in heads]
  return sorted(names)


def load_backbone(path: str, variables: dict[str, Any], *, key: str, model_name: str,
                  heads: Iterable[str] = (), trust_pickle: bool = False
                  ) -> tuple[dict[str, Any], Any]:
  """Loads `path`'s backbone into `variables`; every backbone layer must load.

  `heads` lists head names to take from the checkpoint too (when shapes match); other heads
  keep their fresh initialisation (fine-tuning's new linear head). `key` is the config key
  the path came from, for error messages; `model_name` (a `models.build` name) tells the
  converter how to read a PyTorch `.pth`. A wrapper over `pretrained.load_backbone(strict=True)`.
  """
  loaded, report = pretrained.load_backbone(path, variables, model_name=model_name, strict=True,
                                            heads=tuple(heads), flag=key,
                                            trust_pickle=trust_pickle)
  logging.info("%s", report.summary())
  return loaded, report


def variables_name(variables: dict[str, Any]) -> str:
  n = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(variables.get("params", {})))
  return f"the configured model ({n} parameters)"


def require_labels(source: Any, where: str) -> int:
  """Number of classes of a labelled split; a clear error for an unlabelled one."""
  num_classes = int(getattr(source, "num_classes", 0) or 0)
  labels = np.array([source.label(i) for i in range(len(source))], np.int64)
  if num_classes <= 0 or (labels < 0).any():
    raise ConfigError(
        f"{where} has no class labels (an unlabelled pretraining set?); this evaluation needs a "
        "labelled dataset such as ucf101/split1 or hmdb51/split1 (--config.data.name).")
  if len(labels) == 0:
    raise ConfigError(f"{where} is empty; check --config.data.name and the split names.")
  return num_classes


def validate_data(config: ml_collections.ConfigDict) -> None:
  """Checks shared by the evaluation tasks, before any work."""
  require(bool(config.data.data_dir), "data.data_dir",
          "set it to the directory of prepared datasets (see the `prepare` task).")
  require(bool(config.data.name), "data.name", "set the prepared dataset, e.g. ucf101/split1.")
  require(config.eval.batch_size > 0, "eval.batch_size", "must be positive.")
  require(config.clip.eval_clips >= 1, "clip.eval_clips", "needs at least one clip per video.")
