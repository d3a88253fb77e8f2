"""auxskd-jax command line: `auxskd --config=configs/X.py --workdir=DIR --config.k=v` (or
`python main.py ...`).

With no flags it runs the embedded demo (configs/demo.py) end to end on a CPU.

Order of work, so that every expected mistake fails in a second, with one line that names the
flag or file, and before anything is written: parse the flags (an unknown key or bad value),
pick the task, apply the runtime settings, join a multi-process job, validate the config once
(the task's checks: values, paths, devices, the checkpoint to start from), check the resume
rule against the workdir's config.json; only then config.json is written and the task runs.
Expected errors (ConfigError, UserError) print their message alone and exit with status 2;
anything else keeps its traceback.
"""

from __future__ import annotations

import os
import re
import sys
from typing import NoReturn

from absl import app, flags, logging
from ml_collections import config_flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_CONFIG = os.path.join(_ROOT, "configs", "demo.py")
USER_ERROR_EXIT = 2

# No default here: a default config is parsed (with the --config.* overrides) while this module
# is imported, where a bad override could only crash. `_parse_flags` adds --config=demo instead.
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (a configs/*.py with get_config()); default: "
    "configs/demo.py, the embedded demo.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, logs and reports go; a run restarted with the same "
    "workdir resumes (with the same config, see --config.resume_overrides). "
    "Default: runs/<config file name>.")


def _fail(message: str, prefix: str = "Config error") -> NoReturn:
  sys.stderr.write(f"{prefix}: {message}\n")
  sys.stderr.flush()
  sys.exit(USER_ERROR_EXIT)


def _unknown_key(argv: list[str], error: Exception) -> str:
  """One line for an override of a key the config does not have (ml_collections raises an
  AttributeError/KeyError whose text is the key, maybe with a suggestion)."""
  while error.args and isinstance(error.args[0], BaseException):  # AttributeError(KeyError(..))
    error = error.args[0]
  text = str(error.args[0]) if error.args else str(error)
  key = text.split("\n")[0].strip("\"'")
  hint = re.search(r'Did you mean "([^"]+)"', text)
  flag = next((a.split("=", 1)[0] for a in argv
               if a.lstrip("-").startswith("config.") and
               key in a.split("=", 1)[0].split(".")[1:]), f"--config...{key}")
  suggestion = f' (did you mean "{hint.group(1)}"?)' if hint else ""
  return (f"{flag}: the config has no key {key!r}{suggestion}; overrides must name keys of "
          "the config file (see its get_config()).")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors instead of tracebacks and usage dumps."""
  expanded = flags.FLAGS.read_flags_from_files(argv, force_gnu=False)
  if not any(re.match(r"^--?config(=|$)", a) for a in expanded):
    argv = [argv[0], f"--config={_DEFAULT_CONFIG}"] + list(argv[1:])
    sys.argv[:] = argv  # the config flag reads its overrides from sys.argv
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:  # an unknown --flag, a value of the wrong type, flags out of order
    lines = str(e).strip().splitlines()
    _fail(" ".join(lines[0].split()) + (" ..." if len(lines) > 1 else "")
          + " (python main.py --helpshort lists the flags).")
  except (AttributeError, KeyError) as e:  # --config.<key that does not exist>
    _fail(_unknown_key(argv, e))
  try:
    _CONFIG.value.get("task")
  except OSError:  # ml_collections defers "cannot load the config file" to the first access
    path = flags.FLAGS["config"].config_filename
    _fail(f"--config={path}: cannot load this config file (does it exist?); use one of "
          "configs/*.py.")
  return rest


def _default_workdir() -> str:
  config_path = config_flags.get_config_filename(flags.FLAGS["config"])
  name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  return os.path.join("runs", name)


def _run(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; flags look like --config.train.num_steps=100.",
          prefix="Usage error")
  from auxskd_jax import config as config_lib
  from auxskd_jax import distributed, runtime, tasks
  from auxskd_jax.train import preemption
  from auxskd_jax.train.logging import quiet_libraries

  quiet_libraries()
  config = _CONFIG.value
  workdir = _WORKDIR.value or _default_workdir()
  try:
    task = tasks.of(config)
    runtime.apply(config)
    if "distributed" in config:  # configs without the section (prepare) run single-process
      distributed.initialize(config)
      distributed.setup_logging()
      distributed.check_same_config(config, {"workdir": os.path.abspath(workdir)})
    task.validate(config)
    if task.uses_workdir:
      # Every process reads the workdir (a shared filesystem, as checkpoints need), so every
      # process fails alike.
      config_lib.check_resume(config, workdir)
  except config_lib.UserError as e:
    _fail(str(e))
  import jax

  if task.uses_workdir and jax.process_index() == 0:
    config_lib.save_config(config, workdir)
  logging.info("task=%s workdir=%s", config.task, workdir)
  try:
    task.run(config, workdir)
  except config_lib.UserError as e:  # found only once the run read its data
    _fail(" ".join(str(e).split()), prefix="Error")
  except preemption.Preempted as e:  # SIGTERM / Ctrl-C: a checkpoint was saved at e.step
    logging.warning("%s", e)
    sys.exit(e.exit_code)


def main() -> None:
  """The console entry point (`auxskd`, `python main.py`)."""
  app.run(_run, flags_parser=_parse_flags)
