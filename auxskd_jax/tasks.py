"""The registry of what `main.py` can run: `config.task` -> `module:function`.

Imports are lazy so that a task's dependencies (TensorFlow for `prepare`, torch for
conversions) are only loaded when that task runs.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Callable

import ml_collections

# Each runner is `run(config, workdir) -> dict` and may define `validate(config)` beside it.
TASKS: dict[str, str] = {
    "prepare": "auxskd_jax.data.prepare",
    "auxskd": "auxskd_jax.methods.auxskd",
    "vspp": "auxskd_jax.methods.vspp",
    "pace": "auxskd_jax.methods.pace",
    "vcop": "auxskd_jax.methods.vcop",
    "rspnet": "auxskd_jax.methods.rspnet",
    "finetune": "auxskd_jax.evaluate.finetune",
    "retrieval": "auxskd_jax.evaluate.retrieval",
    "linear_probe": "auxskd_jax.evaluate.linear_probe",
    "demo": "auxskd_jax.demo.run",
}


def module_name(task: str) -> str | None:
  """The module of `task`: the registry's, else a method file `auxskd_jax/methods/<task>.py`
  (so a new pretext method is a task as soon as its file exists); None if neither."""
  if task in TASKS:
    return TASKS[task]
  if task.isidentifier() and importlib.util.find_spec(f"auxskd_jax.methods.{task}") is not None:
    return f"auxskd_jax.methods.{task}"
  return None


def known(task: str) -> bool:
  """Whether `task` names a runnable task (a method file must define `run`)."""
  name = module_name(task)
  return name is not None and (task in TASKS or hasattr(importlib.import_module(name), "run"))


def get_task_module(task: str) -> Any:
  """Imports the module that implements `task` (it has `run` and maybe `validate`)."""
  name = module_name(task)
  if name is None:
    raise ValueError(
        f"--config.task={task!r} is not a known task; choose one of {sorted(TASKS)}.")
  module = importlib.import_module(name)
  if not hasattr(module, "run"):
    raise ValueError(f"--config.task={task!r}: {name} has no `run` (a method file ends with "
                     "`run, validate = base.task(MyMethod)`).")
  return module


def get_runner(task: str) -> Callable[[ml_collections.ConfigDict, str], dict]:
  return get_task_module(task).run
