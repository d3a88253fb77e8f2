"""Checks and building blocks the tasks share: a task's `validate` is these plus its own."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax

import ml_collections
from absl import logging

from auxskd_jax import config as config_lib
from auxskd_jax import models, ops, weights
from auxskd_jax.data import checks as data_checks
from auxskd_jax.errors import ConfigError, require
from auxskd_jax.evaluate import evaluators
from auxskd_jax.train import encoder as encoder_lib
from auxskd_jax.train import logging as train_logging
from auxskd_jax.train import optim

INIT_KEYS = ("train.init_from", "eval.init_from")


def check_values(config: ml_collections.ConfigDict) -> None:
  """The checks of every section an experiment config has (values only, no file read)."""
  if "model" in config:
    models.validate(config)
  if "clip" in config and "augment" in config:
    ops.validate("clip", config)  # the clip and augment values every recipe needs
  if "optim" in config:
    optim.validate(config)
  train_logging.validate(config)  # logging.wandb needs wandb installed
  config_lib.resume_overrides(config)


def check_experiment(config: ml_collections.ConfigDict, *, splits: Iterable[str]) -> None:
  """`check_values`, then the files the run reads: the checkpoints to start from and the
  prepared dataset's `splits`."""
  check_values(config)
  for key in INIT_KEYS:
    weights.require_exists(config, key)
  data_checks.require_dataset(config, splits)


def check_evaluation(config: ml_collections.ConfigDict) -> None:
  """What the evaluations of a labelled test split need besides the dataset."""
  require(config.eval.batch_size > 0, "eval.batch_size", "must be positive.")
  require(config.clip.eval_clips >= 1, "clip.eval_clips", "needs at least one clip per video.")


def check_init_fits(config: ml_collections.ConfigDict, key: str, *, strict: bool) -> None:
  """The checkpoint at `--config.<key>` fits the configured encoder (another model, another
  width): checked before any work, naming the layers that do not fit. `strict`: every
  encoder layer must load (evaluations); otherwise enough of them (pretext methods).

  Loads the checkpoint once more than the run will; shapes come from `jax.eval_shape`, so no
  model is compiled.
  """
  section, name = key.split(".")
  path = config[section].get(name, "") if section in config else ""
  if not path:
    return
  _, variables = encoder_lib.build_and_init(config, random=False)
  try:
    weights.load_encoder(path, variables, model_name=config.model.name, strict=strict,
                         flag=key, trust_pickle=weights.trust_pickle(config, key))
  except (KeyError, ValueError, OSError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    prefix = f"--config.{key}="
    message = message if message.startswith(prefix) else f"{prefix}{path!r}: {message}"
    raise ConfigError(" ".join(message.split())) from None


def frozen_encoder(config: ml_collections.ConfigDict, key: str) -> tuple[Any, dict]:
  """The headless encoder for feature evaluations, from `--config.<key>` ('' = a random
  init, warned); every encoder layer must load."""
  section, name = key.split(".")
  path = config[section].get(name, "")
  if not path:
    logging.warning("--config.%s is empty: evaluating a RANDOMLY initialised encoder.", key)
    return encoder_lib.build_and_init(config)
  model, variables = encoder_lib.build_and_init(config, random=False)
  variables, _ = weights.load_encoder(path, variables, model_name=config.model.name,
                                      strict=True, flag=key,
                                      trust_pickle=weights.trust_pickle(config, key))
  return model, variables


def validate_feature_task(config: ml_collections.ConfigDict,
                          own_checks: Callable[[ml_collections.ConfigDict], None]) -> None:
  """What every frozen-feature task (retrieval, linear probe) checks: the components, both
  splits readable, `own_checks`, the feature layer (known, and not empty at this clip size);
  then every encoder layer of the checkpoint to evaluate fits."""
  check_experiment(config, splits=(config.data.train_split, config.data.test_split))
  check_evaluation(config)
  own_checks(config)
  evaluators.validate(config)
  for key in INIT_KEYS:
    check_init_fits(config, key, strict=True)


def start_feature_task(config: ml_collections.ConfigDict,
                       workdir: str) -> tuple[bool, str, Any, dict]:
  """(is process 0, eval.init_from, model, variables) of a frozen-feature task, with
  config.json written by process 0 (every process extracts its share; process 0 writes)."""
  chief = jax.process_index() == 0
  if chief:
    config_lib.save_config(config, workdir)
  model, variables = frozen_encoder(config, "eval.init_from")
  return chief, config.eval.get("init_from", ""), model, variables
