"""What `main.py` can run: `config.task` -> a `Task` (validate, then run).

The tasks are the only layer that reads a whole experiment config: each task's `validate` is
put together from the checks of the components it uses (models, ops, data, weights, train,
evaluate), and `run` does the work. Besides the modules below, every pretext method file
`auxskd_jax/methods/<name>.py` is a task `<name>` (`tasks.pretrain`), so a new method is one
file plus its config.

Task modules are imported lazily so that a task's dependencies (TensorFlow for `prepare`) load
only when that task runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from typing import Any, Callable, Iterable

import ml_collections

from auxskd_jax import config as config_lib
from auxskd_jax.errors import ConfigError, require

# Task name -> module defining `TASK`. A module that is absent (not written yet) is no task.
MODULES: dict[str, str] = {
    "prepare": "auxskd_jax.tasks.prepare",
    "finetune": "auxskd_jax.tasks.finetune",
    "retrieval": "auxskd_jax.tasks.retrieval",
    "linear_probe": "auxskd_jax.tasks.linear_probe",
    "demo": "auxskd_jax.tasks.demo",
    "demo_data": "auxskd_jax.tasks.demo_data",
    "pipeline": "auxskd_jax.tasks.pipeline",
}


@dataclasses.dataclass(frozen=True)
class Task:
  """A runnable task: `validate(config)` raises ConfigError before any work (main.py calls it
  once, after joining a multi-process job); `run(config, workdir)` does the work and returns
  a summary. `uses_workdir=False`: the task writes elsewhere (prepare writes to data_dir), so
  main.py neither checks nor writes the workdir's config.json. `check_resume(config, workdir,
  allow)`: the task's own resume rule (the pipeline's checks each stage's sub-workdir); None =
  `config.check_resume`. `runtime_config(config)`: the config whose process-wide settings
  (`runtime.apply`: PRNG, XLA codegen, compilation cache) the run uses, when the task derives
  them (the demo's quick mode); None = `config`."""
  name: str
  validate: Callable[[ml_collections.ConfigDict], None]
  run: Callable[[ml_collections.ConfigDict, str], dict[str, Any]]
  uses_workdir: bool = True
  check_resume: Callable[..., None] | None = None
  runtime_config: Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict] | None = None


def check_workdir(task: Task, config: ml_collections.ConfigDict, workdir: str, *,
                  allow: Iterable[str] | None = None, prefix: str = "") -> None:
  """The resume rule for running `task` with `config` in `workdir` (reads only): ConfigError
  if the workdir holds a run with another config, except the keys in `allow` (default:
  --config.resume_overrides). `prefix` names the config's place in the message (a stage's
  "stages.<name>.")."""
  if not task.uses_workdir:
    return
  if task.check_resume is not None:
    task.check_resume(config, workdir, allow)
  else:
    config_lib.check_resume(config, workdir, allow, prefix=prefix)


def claim_workdir(task: Task, config: ml_collections.ConfigDict, workdir: str) -> None:
  """After `check_workdir`: records the config the run uses as `<workdir>/config.json`
  (process 0 only; every process reads the workdir on a shared filesystem)."""
  import jax

  if task.uses_workdir and jax.process_index() == 0:
    config_lib.save_config(config, workdir)


def _module_exists(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except ModuleNotFoundError:
    return False


def _method_task(name: str) -> Task | None:
  """The pretraining task of the method file `auxskd_jax/methods/<name>.py`, if it has one."""
  if not name.isidentifier() or not _module_exists(f"auxskd_jax.methods.{name}"):
    return None
  from auxskd_jax.tasks import pretrain

  return pretrain.task_for(name)


def names() -> list[str]:
  """Every task name: the registry's modules that exist and the method files'."""
  import pkgutil

  import auxskd_jax.methods

  found = {n for n, m in MODULES.items() if _module_exists(m)}
  for info in pkgutil.iter_modules(auxskd_jax.methods.__path__):
    if info.name not in found and _method_task(info.name) is not None:
      found.add(info.name)
  return sorted(found)


def known(name: str) -> bool:
  """Whether `name` names a runnable task."""
  if name in MODULES:
    return _module_exists(MODULES[name])
  return _method_task(name) is not None


def get(name: str) -> Task:
  """The task `name`; ConfigError (naming --config.task) if there is none."""
  if name in MODULES and _module_exists(MODULES[name]):
    return importlib.import_module(MODULES[name]).TASK
  task = _method_task(name) if name not in MODULES else None
  if task is None:
    raise ConfigError(f"--config.task: {name!r} is not a known task; choose one of "
                      f"{names()}.")
  return task


def of(config: ml_collections.ConfigDict) -> Task:
  """The task `config.task` names."""
  require("task" in config, "task", "every config needs a task.")
  return get(config.task)
