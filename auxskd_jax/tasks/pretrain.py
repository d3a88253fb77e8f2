"""The pretraining task of any method: `config.task = '<name>'` trains the `Method` subclass
defined in `auxskd_jax/methods/<name>.py` (auxskd, vspp, pace, vcop, rspnet, or a new file)."""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

import ml_collections

from auxskd_jax.evaluate import evaluators
from auxskd_jax.methods import base
from auxskd_jax.tasks import Task, common
from auxskd_jax.train import loop


def method_class(name: str) -> type[base.Method] | None:
  """The one concrete `Method` subclass `auxskd_jax/methods/<name>.py` defines, if any."""
  module = importlib.import_module(f"auxskd_jax.methods.{name}")
  found = [c for c in vars(module).values()
           if inspect.isclass(c) and issubclass(c, base.Method) and c.__module__ == module.__name__
           and not inspect.isabstract(c)]
  return found[0] if len(found) == 1 else None


def validate(cls: type[base.Method], config: ml_collections.ConfigDict) -> None:
  """The components' checks (values, files, the dataset), the method's and its recipe's, the
  loop's (device count), the evaluators', then that `train.init_from` fits the encoder."""
  common.check_experiment(config, splits=(config.data.train_split,))
  cls.validate(config)
  evaluators.validate(config)
  common.check_init_fits(config, "train.init_from", strict=False)


def run(cls: type[base.Method], config: ml_collections.ConfigDict,
        workdir: str) -> dict[str, Any]:
  """Pretrains, checkpointing to `workdir` (resumes from its checkpoints)."""
  state = loop.fit(cls(config), config, workdir,
                   evaluators=evaluators.build_evaluators(config))
  return {"workdir": workdir, "step": int(state.step)}


def task_for(name: str) -> Task | None:
  """The pretraining task of method file `name`; None if it defines no method."""
  cls = method_class(name)
  if cls is None:
    return None
  return Task(name=name, validate=functools.partial(validate, cls),
              run=functools.partial(run, cls))
